"""Every shell command and Python snippet in the fenced blocks of README.md and docs/ either runs here,
as written, or is named below with the reason it cannot (a cloud bucket, Docker) and the test that
runs its equivalent. A new command in the docs fails the first test until it is placed.

The commands run in a view of the repository: every top-level entry linked, but runs/demo (and
runs/mine, the README's name) a copy of the shared run's pushed model, index and vectors, and the
README's placeholder inputs (logs/eval/day1.tsv, new_posts.jsonl.gz) made from the sample. Only the
ports change (8500/8501/8600/8601 to free ones; `make serve` takes GRPC_PORT= and the like), so a
server a developer left running does not answer for the docs.
"""
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import REPO, SAMPLE_DIR, free_port, holding_the_shared_run

DOCS = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]
PORTS = (8500, 8501, 8600, 8601)
MAKE_PORT_VARS = ("GRPC_PORT", "REST_PORT", "RECALL_PORT", "RECALL_REST_PORT")

# (pattern of the command, kind, reason): run (exit 0 and no traceback), serve (a server: it must come
# up and answer; model servers stay up for the rest of the page, others until the block ends), skip.
PLACES = [
    (r"^make demo\b", "skip", "the README's first command; checked on a fresh clone before each submission, and "
                              "its pipeline run is tests/conftest.py's run_local (run_pipeline.py local --sample)"),
    (r"^make test\b", "skip", ".ci/run runs it"),
    (r"^make continuous-demo\b", "skip", "tests/e2e/test_continuous.py runs spans through the pipeline as it does"),
    (r"^make movielens\b", "skip", "needs ../shared/data/ml-latest-small; bench/movielens_quality.py and "
                                   "tests/datagen/test_movielens.py use the same conversion"),
    (r"^\.venv/bin/python bench/", "skip", "tests/e2e/test_benches.py runs every bench at tiny sizes"),
    (r"^docker ", "skip", "no Docker daemon here"),
    (r"^\.venv/bin/python run_pipeline\.py kubeflow .*gs://", "skip",
     "needs a GCS bucket and a KFP endpoint; tests/e2e/test_kubeflow.py compiles, runs and submits on loopback"),
    (r"^\.venv/bin/python run_pipeline\.py local --train 'logs/", "skip",
     "a template for the user's own logs; the e2e tests run the same command on the sample"),
    (r"^--beam-args ", "skip", "a flag of run_pipeline.py local, not a command; tests/e2e/test_portable.py runs "
                               "the PortableRunner one"),
    (r"-m apache_beam\.runners\.(portability\.local_job_service_main|worker\.worker_pool_main)", "skip",
     "Beam's job service and worker pool: tests/e2e/test_portable.py starts both"),
    (r"^make serve\b|-m serving\.server ", "serve", ""),
    (r"^make recall-serve\b|-m retrieval\.service ", "serve", ""),
    (r"^\.venv/bin/python -m (retrieval\.recall|retrieval\.add_items|serving\.client) ", "run", ""),
    (r"^\.venv/bin/python -c ", "run", ""),
    (r"^curl ", "run", ""),
]


def _strip_comment(line: str) -> str:
    """The line without a trailing shell comment (a # outside quotes, after a space)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def documented_blocks():
    """[(page, block number, language, [commands] or the snippet)] of every fenced bash/python block."""
    out = []
    for page in DOCS:
        text = open(page).read()
        for n, m in enumerate(re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)):
            lang, body = m[1], m[2]
            if lang == "python":
                out.append((os.path.relpath(page, REPO), n, lang, body))
            elif lang == "bash":
                commands, pending = [], ""
                for line in body.splitlines():
                    line = _strip_comment(line)
                    if line.endswith("\\"):
                        pending += line[:-1].rstrip() + " "
                        continue
                    command = (pending + line.strip()).strip()
                    pending = ""
                    if command:
                        commands.append(command)
                out.append((os.path.relpath(page, REPO), n, lang, commands))
    return out


def place(command: str) -> tuple[str, str]:
    for pattern, kind, reason in PLACES:
        if re.search(pattern, command):
            return kind, reason
    return "unplaced", ""


def test_every_documented_command_is_run_or_named_with_a_reason():
    blocks = documented_blocks()
    commands = [(page, c) for page, _, lang, body in blocks if lang == "bash" for c in body]
    assert len(commands) > 30 and sum(1 for *_, lang, _ in blocks if lang == "python") >= 2
    unplaced = [(page, c) for page, c in commands if place(c)[0] == "unplaced"]
    assert not unplaced, f"commands the docs give that no test runs or names: {unplaced}"


# ---- running them ----

def _wait_for(url: str, proc, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {seconds:.0f} s")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def view(runs, tmp_path_factory):
    """(a folder that looks like the repository, with runs/demo a copy of the shared run, the ports)."""
    from pipeline.local_runner import write_serving_config

    workdir, _, _ = runs
    root = tmp_path_factory.mktemp("docs-view")
    for name in os.listdir(REPO):
        if name not in ("runs", ".git", ".pytest_cache"):
            os.symlink(os.path.join(REPO, name), root / name)
    demo = root / "runs" / "demo"
    demo.mkdir(parents=True)
    with holding_the_shared_run(tmp_path_factory):
        shutil.copy(os.path.join(workdir, "milvus.db"), demo / "milvus.db")
        shutil.copy(os.path.join(workdir, "run_summary.json"), demo / "run_summary.json")
        for folder in ("serving", "item_vectors"):
            shutil.copytree(os.path.join(workdir, folder), demo / folder, symlinks=False,
                            ignore=shutil.ignore_patterns("models.config"))
    write_serving_config(str(demo / "serving"), "dssm")  # paths of the copy, not of the shared run
    os.symlink("demo", root / "runs" / "mine")
    (root / "logs" / "eval").mkdir(parents=True)
    os.symlink(os.path.join(SAMPLE_DIR, "eval.tsv"), root / "logs" / "eval" / "day1.tsv")
    import gzip

    with gzip.open(root / "new_posts.jsonl.gz", "wt") as f:
        for n in range(3):
            f.write(json.dumps({"post_id": f"docs-new-{n}", "values": [0.01 * (n + 1)] * 32, "topic_id": "3"}) + "\n")
    yield root, dict(zip(PORTS, (free_port() for _ in PORTS), strict=True))


def _with_ports(command: str, ports: dict[int, int]) -> str:
    command = command.rstrip("& ")  # a server the docs start in the background: the test does that itself
    for old, new in ports.items():
        command = re.sub(rf"\b{old}\b", str(new), command)
    if command.startswith("make "):
        command += " " + " ".join(f"{var}={ports[p]}" for var, p in zip(MAKE_PORT_VARS, PORTS, strict=True))
    return command


def _start(command: str, root, log_path) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen(command, shell=True, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # make and its server: one process group to stop


def _stop(proc: subprocess.Popen) -> None:
    """Stops the shell, make and the server it started, and waits until every one of them is gone (the
    server frees its ports last: the next one must not find the old one answering)."""
    deadline = time.monotonic() + 30
    sig = signal.SIGTERM
    while True:
        proc.poll()  # reaps the shell: a zombie still counts as a member of the group
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        time.sleep(0.2)
        if time.monotonic() > deadline + 10:
            break  # only zombies left for init to reap: they hold no port
        if time.monotonic() > deadline:
            sig = signal.SIGKILL


def _serve(command: str, ports: dict[int, int], root, log_path, running: dict) -> None:
    """Starts a documented server and waits until it answers. A second server of the same kind is the
    docs' alternative ("... ; or:"): it replaces the first, as it would for a user."""
    kind = "model" if re.search(r"^make serve\b|-m serving\.server ", command) else "service"
    if running.get(kind) is not None:
        _stop(running.pop(kind))
    proc = _start(command, root, log_path)
    running[kind] = proc
    url = (f"http://127.0.0.1:{ports[8501]}/v1/models/dssm" if kind == "model"
           else f"http://127.0.0.1:{ports[8601]}/v1/status")
    try:
        _wait_for(url, proc)
    except AssertionError as e:
        raise AssertionError(f"{command}: {e}\n{open(log_path).read()[-3000:]}") from None


@pytest.mark.slow
def test_every_runnable_documented_command_and_snippet_runs_as_written(view, tmp_path):
    root, ports = view
    ran = []
    for page in dict.fromkeys(p for p, *_ in documented_blocks()):
        running: dict = {}  # the model server lives for the page; a recall service for its block
        try:
            for _, n, lang, body in (b for b in documented_blocks() if b[0] == page):
                if lang == "python":
                    proc = subprocess.run([os.path.join(REPO, ".venv", "bin", "python"), "-c", body], cwd=root,
                                          capture_output=True, text=True, timeout=300)
                    assert proc.returncode == 0, (page, n, proc.stderr[-3000:])
                    ran.append((page, "python snippet"))
                    continue
                try:
                    for command in body:
                        kind, _ = place(command)
                        if kind == "skip":
                            continue
                        shell = _with_ports(command, ports)
                        if kind == "serve":
                            _serve(shell, ports, root, tmp_path / f"server-{len(ran)}.log", running)
                        else:
                            proc = subprocess.run(shell, shell=True, cwd=root, capture_output=True, text=True,
                                                  timeout=300, executable="/bin/bash")
                            assert proc.returncode == 0 and "Traceback" not in proc.stderr, \
                                (page, command, proc.stdout[-2000:], proc.stderr[-3000:])
                            if command.startswith("curl "):  # curl exits 0 on a 4xx: the body must be an answer
                                answer = json.loads(proc.stdout)
                                assert "error" not in answer, (page, command, answer)
                        ran.append((page, command[:60]))
                finally:
                    if running.get("service") is not None:  # it holds the Lite file: stopped with its block
                        _stop(running.pop("service"))
        finally:
            for proc in running.values():
                _stop(proc)
    assert len(ran) >= 15, ran
