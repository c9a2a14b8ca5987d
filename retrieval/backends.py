"""The item index the config's uri names, and what callers outside retrieval/ ask about it: nothing
outside this package knows a Milvus Lite file from a Milvus server or an in-process index.

  memory://NAME      NumpyIndex (retrieval/numpy_index.py): exact, in this process only
  http(s)://...      MilvusIndex on a Milvus server
  anything else      MilvusIndex on a Milvus Lite file
"""
from __future__ import annotations

import os

from retrieval.index import IndexConfig, ItemIndex


def open_index(config: IndexConfig, refresh_seconds: float = 1.0, timeout_seconds: float | None = None) -> ItemIndex:
    """timeout_seconds: the deadline of each search (None: the back end's own)."""
    config.validate()
    if config.in_memory:
        from retrieval.numpy_index import NumpyIndex

        return NumpyIndex(config)
    from retrieval.milvus import MilvusIndex

    return MilvusIndex(config, refresh_seconds=refresh_seconds, timeout_seconds=timeout_seconds)


def check_index(config: IndexConfig) -> None:
    """ItemIndexError in about a second, with the reason and what to do, for an index that cannot be
    opened: a Lite file that is missing, not Milvus's, damaged or held by another process. A server
    is checked when it is first asked."""
    if config.is_lite:
        from retrieval.milvus import check_lite_file

        check_lite_file(config.uri)


def nothing_indexed_yet(config: IndexConfig) -> bool:
    """True when the index certainly holds nothing (a Lite file not yet written), without opening it."""
    return config.is_lite and not os.path.exists(config.uri)


def local_files(config: IndexConfig) -> dict[str, str]:
    """{what: path} of the files the index writes on this machine (a run's preflight checks them)."""
    return {"Milvus Lite file": config.uri} if config.is_lite else {}
