"""Start-up seconds of the tools a user runs by hand, each a fresh process, as a user would start it:

  server       python -m serving.server ... until its REST port answers GET /v1/models/MODEL
  client       python -m serving.client user --log-line LINE (against that server), to its exit
  recall-grpc  python -m retrieval.recall --target (the user vector from that server), to its exit
  recall-local python -m retrieval.recall (the pushed model run in the process), to its exit
  bad-workdir  python run_pipeline.py local --sample --workdir /proc/dssm (an unwritable path), to its exit
  pipeline-1st python run_pipeline.py local --sample (a whole run), to its first stderr line
  server-1st   python -m serving.server, to its first stderr line

and the stderr lines each printed (TensorFlow's C++ log and third-party warnings count here).

    .venv/bin/python bench/cli_startup.py [--workdir runs/demo] [--rounds 3] [--checkout DIR ...]

Each --checkout (e.g. a git worktree of an earlier commit) runs the same commands from its own code,
alternating with this checkout round by round, so a loaded machine slows all alike. Needs a pushed
model and its index (make demo).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    # What a user's shell has: none of the quieting variables a test or the pipeline would set.
    return {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}


def _timed(cmd: list[str], cwd: str) -> tuple[float, int, int]:
    """(seconds to exit, exit code, stderr lines)."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    return time.perf_counter() - started, proc.returncode, len(proc.stderr.splitlines())


def _server_until_rest(checkout: str, workdir: str, model: str) -> tuple[float, int, subprocess.Popen, int]:
    """(seconds until REST answers, stderr lines so far, the process, its gRPC port)."""
    grpc_port, rest_port = _free_port(), _free_port()
    log_path = os.path.join(workdir, f"cli_startup_server_{os.getpid()}.log")
    log = open(log_path, "w")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "serving.server", "--port", str(grpc_port),
                             "--rest_api_port", str(rest_port), "--model_config_file",
                             os.path.join(os.path.abspath(workdir), "serving", "models.config")],
                            cwd=checkout, env=_env(), stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{rest_port}/v1/models/{model}"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server of {checkout} exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200 and b"AVAILABLE" in r.read():
                    break
        except OSError:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    log.close()
    with open(log_path) as f:
        lines = sum(1 for line in f if " INFO " not in line)  # the server's own INFO lines are not noise
    os.remove(log_path)
    return seconds, lines, proc, grpc_port


def _first_line(cmd: list[str], cwd: str) -> tuple[float, int, int]:
    """(seconds to the first stderr line, 0, 1): how long a user waits for a word; then it is stopped."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    line = proc.stderr.readline()
    seconds = time.perf_counter() - started
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if not line:
        raise RuntimeError(f"{' '.join(cmd)} printed nothing on stderr")
    return seconds, 0, 1


def one_round(checkout: str, workdir: str, model: str, log_line: str, eval_log: str) -> dict:
    workdir = os.path.abspath(workdir)
    out = {}
    seconds, noise, server, port = _server_until_rest(checkout, workdir, model)
    out["server"] = (seconds, 0, noise)
    try:
        target = f"127.0.0.1:{port}"
        out["client"] = _timed([sys.executable, "-m", "serving.client", "--target", target, "--model", model,
                                "user", "--log-line", log_line], checkout)
        out["recall-grpc"] = _timed([sys.executable, "-m", "retrieval.recall", "--workdir", workdir, "--target", target,
                                     "--model-name", model, "--log-file", eval_log, "--limit", "1", "--k", "10"],
                                    checkout)
    finally:
        server.terminate()
        server.wait(timeout=60)
    out["recall-local"] = _timed([sys.executable, "-m", "retrieval.recall", "--workdir", workdir, "--log-file",
                                  eval_log, "--limit", "1", "--k", "10"], checkout)
    out["bad-workdir"] = _timed([sys.executable, "run_pipeline.py", "local", "--sample", "--workdir", "/proc/dssm"],
                                checkout)
    with tempfile.TemporaryDirectory() as tmp:  # a whole run, stopped at its first line
        out["pipeline-1st"] = _first_line([sys.executable, "run_pipeline.py", "local", "--sample", "--workdir",
                                           os.path.join(tmp, "run")], checkout)
    out["server-1st"] = _first_line([sys.executable, "-m", "serving.server", "--port", "0", "--model_config_file",
                                     os.path.join(workdir, "serving", "models.config")], checkout)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=os.path.join(HERE, "runs", "demo"))
    p.add_argument("--model", default="dssm")
    p.add_argument("--eval-log", default=os.path.join(HERE, "data", "sample", "eval.tsv"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--checkout", action="append", default=[], help="another checkout to compare (repeatable)")
    args = p.parse_args(argv)
    with open(args.eval_log) as f:
        f.readline()
        log_line = f.readline().rstrip("\n")
    checkouts = [HERE, *(os.path.abspath(c) for c in args.checkout)]
    results: dict[str, list[dict]] = {c: [] for c in checkouts}
    for r in range(args.rounds):
        for checkout in checkouts:
            results[checkout].append(one_round(checkout, args.workdir, args.model, log_line, args.eval_log))
            print(f"round {r + 1} {checkout}: " + ", ".join(f"{k} {v[0]:.1f}s" for k, v in
                                                            results[checkout][-1].items()), flush=True)
    print(f"\nmedian seconds over {args.rounds} rounds (exit code; stderr lines), {os.cpu_count()} CPUs")
    for checkout, rounds in results.items():
        print(checkout)
        for tool in rounds[0]:
            seconds = statistics.median(x[tool][0] for x in rounds)
            print(f"  {tool:13s} {seconds:6.1f} s   (exit {rounds[-1][tool][1]}; {rounds[-1][tool][2]} stderr lines)")


if __name__ == "__main__":
    main()
