"""Files by local path or by URI. A URI (gs://, s3://, hdfs://, ...) goes through TensorFlow's file
system layer, imported only then; a local path through Python's own calls, so a tool that reads
local files (the serving client, recall) does not load TensorFlow (about 6 s) to read them."""
from __future__ import annotations

import os
import shutil


def is_uri(path: str) -> bool:
    return "://" in path


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def open_file(path: str, mode: str = "r"):
    if is_uri(path):
        return _gfile().GFile(path, mode)
    return open(path, mode) if "b" in mode else open(path, mode, encoding="utf-8")


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_uri(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_uri(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """The entries' names (no trailing slash), [] for a folder that does not exist."""
    if is_uri(path):
        return [e.rstrip("/") for e in _gfile().listdir(path)] if _gfile().isdir(path) else []
    return os.listdir(path) if os.path.isdir(path) else []


def size(path: str) -> int:
    return _gfile().stat(path).length if is_uri(path) else os.path.getsize(path)


def makedirs(path: str) -> None:
    if is_uri(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def rmtree(path: str) -> None:
    if is_uri(path):
        _gfile().rmtree(path)
    else:
        shutil.rmtree(path, ignore_errors=True)
