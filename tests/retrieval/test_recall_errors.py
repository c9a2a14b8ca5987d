"""Recall on a damaged, locked or missing index, a dangling alias, an empty filter list (issue
[server-trust] 12): one `error:` line within seconds and a non-zero exit, never results. The index is
a real Milvus Lite file; the damage is done to copies of it."""
import fcntl
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from retrieval.index import IndexConfig
from retrieval.milvus import Batch, MilvusIndex, connect, write_generation
from tests.conftest import REPO

DIM = 8


@pytest.fixture(scope="module")
def index_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("index")
    config = IndexConfig(uri=str(folder / "milvus.db"), alias="dssm_items", insert_batch=100, insert_threads=2)
    client = connect(config)
    ids = [f"p{i}" for i in range(300)]
    vectors = np.random.default_rng(12).normal(size=(300, DIM)).astype(np.float32)
    write_generation(config, [Batch(ids, {"topic_id": [str(i % 3) for i in range(300)]}, vectors)], "post_id",
                     ["topic_id"], DIM, client=client)
    client.close()
    return folder / "milvus.db"


def _recall(milvus: str, *extra) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "retrieval.recall", "--milvus", milvus, "--model", "/nonexistent/model",
                          "--features", '{"read_post_id": ["p1"]}', *extra], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return run, time.monotonic() - started


def _one_error_line(run) -> str:
    assert run.returncode != 0 and run.stdout == "", (run.returncode, run.stdout)
    lines = [x for x in run.stderr.splitlines() if x.strip()]
    assert len([x for x in lines if x.startswith("error:")]) == 1 and lines[-1].startswith("error:"), run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    return lines[-1]


def _copy(index_file, tmp_path, name="milvus.db"):
    target = tmp_path / name
    shutil.copy(index_file, target)
    return target


@pytest.mark.parametrize("damage,message", [
    ("corrupt", "is damaged"), ("truncated", ""), ("random", "not a Milvus Lite file"),
    ("directory", "is not a file"), ("missing", "does not exist"),
])
def test_a_damaged_or_missing_index_is_one_error_line_within_seconds(index_file, tmp_path, damage, message):
    path = _copy(index_file, tmp_path)
    data = path.read_bytes()
    if damage == "corrupt":  # the pages after the header page overwritten
        path.write_bytes(data[:4096] + os.urandom(3 * 4096) + data[4 * 4096:])
    elif damage == "truncated":
        path.write_bytes(data[:len(data) // 3 + 100])
    elif damage == "random":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    else:
        path.unlink()
    run, seconds = _recall(str(path))
    line = _one_error_line(run)
    assert str(path) in line and message in line, line
    assert seconds < 30, seconds  # 67-117 s before


def test_an_index_held_by_another_process_is_one_error_line(index_file, tmp_path):
    path = _copy(index_file, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time\n"
                               f"f = open({str(tmp_path / '.milvus.db.lock')!r}, 'a')\n"
                               "fcntl.lockf(f, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        run, _ = _recall(str(path))
    finally:
        holder.kill()
        holder.wait()
    assert "is in use by another process" in _one_error_line(run)
    with open(tmp_path / ".milvus.db.lock", "a") as f:  # released again: the probe left no lock behind
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_an_alias_naming_a_dropped_collection_is_one_error_line(index_file, tmp_path):
    path = _copy(index_file, tmp_path)
    client = connect(IndexConfig(uri=str(path)))
    client.insert("dssm_items__alias", [{"collection": "dssm_items_g29990101000000000000000", "alias": "dssm_items",
                                         "unused": [0.0, 0.0]}])  # newer than the real one, never created
    client.close()
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(path))  # this process's Milvus Lite lets go of the file
    run, seconds = _recall(str(path))
    line = _one_error_line(run)
    assert "names collection 'dssm_items_g29990101000000000000000', which does not exist" in line, line
    assert seconds < 30


def test_an_empty_filter_list_is_refused_before_milvus_sees_it(index_file, tmp_path):
    path = _copy(index_file, tmp_path)
    item_index = MilvusIndex(IndexConfig(uri=str(path)))
    try:
        for call in (lambda: item_index.check_request(10, {"topic_id": []}),
                     lambda: item_index.search(np.ones((1, DIM), np.float32), 10, filters={"topic_id": []})):
            with pytest.raises(ValueError, match=r"the filter on \['topic_id'\] lists no value"):
                call()
        hits = item_index.search(np.ones((1, DIM), np.float32), 5, filters={"topic_id": ["1"]},
                               output_fields=["topic_id"])
        assert len(hits[0]) == 5 and {h["topic_id"] for h in hits[0]} == {"1"}
    finally:
        item_index.close()
