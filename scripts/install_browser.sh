#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the report test (tests/test_report.py), when missing and
# root (or passwordless sudo) can install them; otherwise that test skips with the reason.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
SUDO=()
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
    # Not an error: the one test that needs a browser skips and says why.
    echo "chromium not installed (Debian's package needs root or passwordless sudo):" \
         "tests/test_report.py's browser test will be skipped" >&2
    exit 0
  fi
  SUDO=(sudo -n)
fi
echo "installing Debian's chromium and chromium-driver (report test)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || {
  "${SUDO[@]}" apt-get update -q >/dev/null
  "${SUDO[@]}" apt-get install -y -q chromium chromium-driver >/dev/null
}
