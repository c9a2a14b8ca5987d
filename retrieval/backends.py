"""Opening the item index the config names. Milvus (a Lite file or a server) is the one back end."""
from __future__ import annotations

from retrieval.index import ItemIndex
from retrieval.milvus import IndexConfig, MilvusIndex


def open_index(config: IndexConfig, refresh_seconds: float = 1.0, timeout_seconds: float | None = None) -> ItemIndex:
    """timeout_seconds: the deadline of each search (None: Milvus's own)."""
    config.validate()
    return MilvusIndex(config, refresh_seconds=refresh_seconds, timeout_seconds=timeout_seconds)
