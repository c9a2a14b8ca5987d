"""The item store: every known post's content vector and item features, keyed by post id.

The one catalog of the system: the training run seeds it from its vector file (ItemIndexer, with each
post's most frequent item features in the logs), `retrieval.add_items` writes new posts to it, and
ItemIndexer, recall (the read history's vectors) and add_items read a post from it. It is a Milvus
collection (`<alias>_store`) beside the index's generations: the run's Milvus Lite file on a laptop,
a Milvus server (milvus.uri) for many machines; nothing home-made.

Rows: the id (primary key: an upsert replaces a post, never two rows), the item tower's
single-valued string columns (topic_id), `added_ms` (when the row was written, ms since the epoch: a
new generation picks up the posts added while it was written) and the content vector as given
(not normalised: the towers read it as it is). Reads are Strong: a post written is read back by
the next call, from any client.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np

from retrieval.index import Batch, IndexConfig, ItemIndexError
from retrieval.milvus import GET_BATCH, MAX_VARCHAR, ColumnWriter, connect, milvus_string

CONTENT_FIELD = "content"
ADDED_FIELD = "added_ms"
# Rows per scan or get request. Milvus Lite 2.5's cost grows with the square of the ids in one request:
# a get of 256 ids took 0.03 s, of 4,096 ids 76 s (768-d, 20k rows; a query iterator of 4,096-row
# batches likewise), so requests stay small.
SCAN_BATCH = 256


class _NoLiteTimestampWarning(logging.Filter):
    """Milvus Lite gives its query iterator no server timestamp; pymilvus warns at every scan that it
    uses the client's clock instead, which is what a scan of one process's file needs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to get mvccTs" not in record.getMessage()


logging.getLogger("pymilvus.orm.iterator").addFilter(_NoLiteTimestampWarning())


def store_name(config: IndexConfig) -> str:
    return f"{config.alias}_store"


def now_ms() -> int:
    return int(time.time() * 1000)


class ItemStore:
    """A post's content and item features by id (a Milvus collection). `dim` and `columns` are read
    from the collection once it exists; ensure() creates it."""

    def __init__(self, config: IndexConfig, id_field: str, client=None, timeout_seconds: float | None = None):
        """timeout_seconds: the deadline of each read by id (None: Milvus's own)."""
        from pymilvus.exceptions import MilvusException

        self._milvus_error = MilvusException
        self.config, self.id_field, self.timeout_seconds = config, id_field, timeout_seconds
        self.name = store_name(config)
        try:
            self.client = client or connect(config)
        except MilvusException as e:
            raise self._error("cannot connect", e) from None
        self._own_client = client is None
        self._columns = ColumnWriter(config)
        self.dim: int | None = None
        self.columns: list[str] = []
        self._describe()

    @property
    def where(self) -> str:
        return f"item store {self.name} at {self.config.uri}"

    def _error(self, what: str, e: Exception) -> ItemIndexError:
        return ItemIndexError(f"Milvus at {self.config.uri}: {self.name}: {what}: {getattr(e, 'message', None) or e}")

    def _describe(self) -> None:
        try:
            if not self.client.has_collection(self.name):
                return
            fields = self.client.describe_collection(self.name)["fields"]
        except self._milvus_error as e:
            raise self._error("cannot describe", e) from None
        for f in fields:
            if f["name"] == CONTENT_FIELD:
                self.dim = int(f["params"]["dim"])
        self.columns = [f["name"] for f in fields if f["name"] not in (self.id_field, CONTENT_FIELD, ADDED_FIELD)]

    @property
    def exists(self) -> bool:
        return self.dim is not None

    def ensure(self, dim: int, columns: list[str]) -> None:
        """Creates the collection for vectors of `dim` and these item columns; ItemIndexError when it
        exists with others (a run on vectors of another size needs a new alias or an emptied store)."""
        if self.exists:
            if self.dim != dim or sorted(self.columns) != sorted(columns):
                raise ItemIndexError(f"{self.where} holds {self.dim}-d vectors with columns {sorted(self.columns)}, "
                                     f"not {dim}-d with {sorted(columns)}: drop it (or use another milvus.alias) "
                                     "to start a new catalog")
            return
        from pymilvus import DataType

        try:
            schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(self.id_field, DataType.VARCHAR, max_length=MAX_VARCHAR, is_primary=True)
            for c in columns:
                schema.add_field(c, DataType.VARCHAR, max_length=MAX_VARCHAR)
            schema.add_field(ADDED_FIELD, DataType.INT64)
            schema.add_field(CONTENT_FIELD, DataType.FLOAT_VECTOR, dim=dim)
            self.client.create_collection(self.name, schema=schema, consistency_level="Strong")
            index = self.client.prepare_index_params()
            index.add_index(CONTENT_FIELD, index_type="FLAT", metric_type="IP")
            self.client.create_index(self.name, index)
            self.client.load_collection(self.name)
        except self._milvus_error as e:
            raise self._error("cannot create", e) from None
        self._describe()

    def _need(self) -> None:
        if not self.exists:
            raise ItemIndexError(f"no {self.where}: run the pipeline (ItemIndexer seeds it) first")

    def upsert(self, batch: Batch, added_ms: int | None = None) -> int:
        """Writes the posts (an id already there is replaced); returns how many."""
        self._need()
        if batch.vectors.shape != (len(batch.ids), self.dim):
            raise ItemIndexError(f"{self.where}: {batch.vectors.shape} vectors for {len(batch.ids)} posts of "
                                 f"{self.dim} values")
        stamp = now_ms() if added_ms is None else added_ms
        n = len(batch.ids)
        columns = {self.id_field: list(batch.ids), ADDED_FIELD: [stamp] * n,
                   CONTENT_FIELD: np.asarray(batch.vectors, np.float32).tolist(),
                   **{c: list(batch.scalars.get(c, [""] * n)) for c in self.columns}}
        try:
            self._columns.upsert(self.name, columns)
        except self._milvus_error as e:
            raise self._error("upsert failed", e) from None
        return n

    def get(self, ids: list[str]) -> dict[str, dict]:
        """{id: {column: value, "vector": np.ndarray}} of the ids the store holds."""
        self._need()
        found = {}
        unique = list(dict.fromkeys(ids))
        try:
            for start in range(0, len(unique), GET_BATCH):
                for r in self.client.get(self.name, ids=unique[start:start + GET_BATCH],
                                         output_fields=[*self.columns, CONTENT_FIELD],
                                         timeout=self.timeout_seconds):
                    found[r[self.id_field]] = {**{c: r.get(c, "") for c in self.columns},
                                               "vector": np.asarray(r[CONTENT_FIELD], np.float32)}
        except self._milvus_error as e:
            raise self._error("read failed", e) from None
        return found

    def vectors(self, ids: list[str]) -> np.ndarray:
        """[len(ids), dim]: each post's content vector, all zero for a post the store does not hold
        (the towers read zeros as 'no vector'). The content lookup of serving.examples.ExampleBuilder."""
        self._need()
        found = self.get(ids)
        out = np.zeros((len(ids), self.dim), np.float32)
        for i, item in enumerate(ids):
            if item in found:
                out[i] = found[item]["vector"]
        return out

    def count(self) -> int:
        if not self.exists:
            return 0
        try:
            (row,) = self.client.query(self.name, filter="", output_fields=["count(*)"])
        except self._milvus_error as e:
            raise self._error("count failed", e) from None
        return int(row["count(*)"])

    def scan(self, since_ms: int | None = None, batch: int = SCAN_BATCH, but_ms: int | None = None) -> Iterator[Batch]:
        """Every post (or those written at or after since_ms; not those stamped but_ms) as Batches of
        ids, columns and vectors."""
        self._need()
        terms = [f"{self.id_field} != {milvus_string('')}"]
        if since_ms is not None:
            terms.append(f"{ADDED_FIELD} >= {int(since_ms)}")
        if but_ms is not None:
            terms.append(f"{ADDED_FIELD} != {int(but_ms)}")
        expr = " and ".join(terms)
        try:
            it = self.client.query_iterator(self.name, batch_size=batch, filter=expr,
                                            output_fields=[*self.columns, CONTENT_FIELD])
            try:
                while rows := it.next():
                    yield Batch([r[self.id_field] for r in rows],
                                {c: [r.get(c, "") for r in rows] for c in self.columns},
                                np.asarray([r[CONTENT_FIELD] for r in rows], np.float32))
            finally:
                it.close()
        except self._milvus_error as e:
            raise self._error("scan failed", e) from None

    def close(self) -> None:
        self._columns.close()
        if self._own_client:
            self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
