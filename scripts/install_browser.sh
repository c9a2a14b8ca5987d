#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver for the report test (tests/test_report.py), when missing.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
SUDO=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "error: installing chromium needs root or sudo" >&2; exit 1; }
  SUDO=(sudo)
fi
echo "installing Debian's chromium and chromium-driver (report test)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || {
  "${SUDO[@]}" apt-get update -q >/dev/null
  "${SUDO[@]}" apt-get install -y -q chromium chromium-driver >/dev/null
}
