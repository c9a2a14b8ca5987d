"""The item vectors in Milvus: one collection per indexing run ("generation") behind an alias.

A run writes <alias>_g<UTC time>, inserts every item (id, its single-valued item features, the
L2-normalised item-tower vector), flushes, builds the index (metric IP), loads it, checks the row
count, and only then points the alias at it; older generations beyond `keep_generations` are
dropped. A run that fails half-way drops its own partial collection and leaves the alias where it
was, so queries never see a half-written index.

Milvus servers have aliases (create_alias / alter_alias). Milvus Lite 2.5 answers them with
UNIMPLEMENTED, so on a Lite file the alias is the newest row of a small pointer collection
(<alias>__alias), switched by inserting one row: the same all-or-nothing switch for readers.
Searchers resolve the alias to its generation themselves (every second), on a server too.

Milvus Lite 2.5 builds FLAT, IVF_FLAT and AUTOINDEX only; other index types (HNSW, ...) are passed
through to a Milvus server. Measured on Lite 2.5.1 (bench/milvus_search.py): on a 100k-item
collection IVF_FLAT / AUTOINDEX return about 0.7 of the true top 100 whatever nlist / nprobe are (it
is searched through Milvus's interim index), at 1M items IVF_FLAT is exact; the default is FLAT.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from common.progress import RateLog
from retrieval.index import (
    Batch,
    Generation,
    GenerationGone,
    IndexConfig,
    ItemIndex,
    ItemIndexError,
    normalise,
)

__all__ = ["Batch", "IndexConfig", "ItemIndexError", "MilvusIndex", "normalise"]

log = logging.getLogger("retrieval")

VECTOR_FIELD = "embedding"
MAX_VARCHAR = 1024
GET_BATCH = 256  # ids per get request: Milvus Lite 2.5 takes time in the square of them (4,096 ids: 76 s)


def connect(config: IndexConfig):
    from pymilvus import MilvusClient

    if config.is_lite:
        import os

        os.makedirs(os.path.dirname(os.path.abspath(config.uri)), exist_ok=True)
    return MilvusClient(uri=config.uri, token=config.token)


SQLITE_HEADER = b"SQLite format 3\x00"


def why_no_index(workdir: str) -> str:
    """What to do about a work directory without an item index, from its run summary when it has one:
    a run that pushed nothing is not cured by running the pipeline 'first'."""
    import json

    try:
        with open(os.path.join(workdir, "run_summary.json")) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        if os.path.exists(os.path.join(workdir, "partial", "run_summary.json")):
            return f"only a partial run (--until) ran in {workdir}: run the whole pipeline"
        return "no pipeline run wrote this work directory: run the pipeline first (make demo), or give --milvus"
    if summary.get("failure"):
        return f"the last run in {workdir} stopped: {summary['failure']}"
    if summary.get("not_pushed_because"):
        return (f"the last run in {workdir} pushed no model, so nothing was indexed: "
                + "; ".join(summary["not_pushed_because"]))
    index = summary.get("item_index") or {}
    if index.get("not_indexed_because"):
        return f"the last run in {workdir} indexed nothing: {index['not_indexed_because']}"
    return f"the last run in {workdir} did not reach the ItemIndexer (a partial run?); run the whole pipeline"


def check_lite_file(path: str, check_lock: bool = True) -> None:
    """ItemIndexError, in a second and with the reason, for a Milvus Lite file that cannot be searched:
    missing, not a regular file, unreadable, not an SQLite database (what Milvus Lite stores), damaged
    (SQLite's quick_check), or held by another process (Milvus Lite's lock beside it). Without this,
    Milvus Lite answers a malformed file with results, or its client retries for a minute or two.

    check_lock only in a process that holds no Milvus Lite server for the file: closing the probe's
    descriptor would drop a POSIX lock this process holds."""
    import sqlite3

    if not os.path.exists(path):
        raise ItemIndexError(f"{path} does not exist: {why_no_index(os.path.dirname(path) or '.')}")
    if not os.path.isfile(path):
        raise ItemIndexError(f"{path} is not a file: give the Milvus Lite file (.db) itself")
    try:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as e:
        raise ItemIndexError(f"{path} cannot be read: {e.strerror}") from None
    if header != SQLITE_HEADER:
        raise ItemIndexError(f"{path} is not a Milvus Lite file (not an SQLite database)")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            (result,) = db.execute("PRAGMA quick_check(1)").fetchone()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise ItemIndexError(f"{path} cannot be read as a Milvus Lite file: {e}") from None
    if result != "ok":
        found = " ".join(result.split())
        raise ItemIndexError(f"{path} is damaged (SQLite quick_check: {found}): index the items again")
    if check_lock:
        _check_not_locked(path)


def _check_not_locked(path: str) -> None:
    import fcntl

    lock_path = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.lock")
    if not os.path.exists(lock_path):
        return
    try:
        with open(lock_path, "a") as f:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise ItemIndexError(f"{path} is in use by another process (Milvus Lite opens a file in one "
                                     "process at a time): stop it, or use a Milvus server") from None
            fcntl.lockf(f, fcntl.LOCK_UN)
    except PermissionError:
        return  # a read-only place: Milvus Lite will say so itself


def milvus_string(value: str) -> str:
    """A string literal for a Milvus filter expression (quotes and backslashes escaped)."""
    return json.dumps(str(value), ensure_ascii=False)


# ---- the alias ----

class _PointerAlias:
    """Milvus Lite: the alias is the newest row of <alias>__alias (one row per generation, insert
    only: an upsert is a delete and an insert, and a reader between the two would see nothing)."""

    def __init__(self, client, alias: str):
        self.client, self.alias, self.name = client, alias, f"{alias}__alias"

    def _ensure(self) -> None:
        from pymilvus import DataType

        if self.client.has_collection(self.name):
            return
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("collection", DataType.VARCHAR, max_length=MAX_VARCHAR, is_primary=True)
        schema.add_field("alias", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field
        self.client.create_collection(self.name, schema=schema, consistency_level="Strong")
        index = self.client.prepare_index_params()
        index.add_index("unused", index_type="FLAT", metric_type="L2")
        self.client.create_index(self.name, index)
        self.client.load_collection(self.name)

    def get(self) -> str | None:
        if not self.client.has_collection(self.name):
            return None
        rows = self.client.query(self.name, filter=f"alias == {milvus_string(self.alias)}",
                                 output_fields=["collection"], consistency_level="Strong")
        return max((r["collection"] for r in rows), default=None)  # generation names sort by time

    def point_to(self, collection: str, wait_seconds: float = 60.0) -> None:
        self._ensure()
        self.client.insert(self.name, [{"collection": collection, "alias": self.alias, "unused": [0.0, 0.0]}])
        deadline = time.monotonic() + wait_seconds
        while self.get() != collection:  # visible to readers before the switch counts as done
            if time.monotonic() > deadline:
                raise ItemIndexError(f"the alias {self.alias} does not show {collection} after {wait_seconds} s")
            time.sleep(0.05)

    def forget(self, collection: str) -> None:
        if self.client.has_collection(self.name):
            self.client.delete(self.name, ids=[collection])


class _ServerAlias:
    """A Milvus server: a real alias."""

    def __init__(self, client, alias: str):
        self.client, self.alias = client, alias

    def get(self) -> str | None:
        from pymilvus.exceptions import MilvusException

        try:
            return self.client.describe_alias(self.alias)["collection_name"]
        except MilvusException:
            return None

    def point_to(self, collection: str) -> None:
        from pymilvus.exceptions import MilvusException

        # Alter first: an alias left behind by a dropped collection cannot be described, and
        # cannot be created again either.
        try:
            self.client.alter_alias(collection, self.alias)
        except MilvusException:  # no such alias yet
            self.client.create_alias(collection, self.alias)

    def forget(self, collection: str) -> None:
        pass  # dropping a collection is enough on a server


def alias_of(client, config: IndexConfig):
    return _PointerAlias(client, config.alias) if config.is_lite else _ServerAlias(client, config.alias)


# ---- writing a generation ----

def generation_name(alias: str) -> str:
    """<alias>_g<UTC time to the nanosecond>: names sort in creation order."""
    ns = time.time_ns()
    return f"{alias}_g{time.strftime('%Y%m%d%H%M%S', time.gmtime(ns // 10**9))}{ns % 10**9:09d}"


def generations(client, alias: str) -> list[str]:
    """This alias's generations, oldest first (the names sort by creation time)."""
    prefix = f"{alias}_g"
    return sorted(c for c in client.list_collections() if c.startswith(prefix))


def _create_collection(client, name: str, id_field: str, scalar_fields: list[str], dim: int,
                       model_version: int | None = None) -> None:
    from pymilvus import DataType

    # The description records which model version's item tower filled the generation.
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False,
                                  description=json.dumps({"model_version": model_version}))
    schema.add_field(id_field, DataType.VARCHAR, max_length=MAX_VARCHAR, is_primary=True)
    for f in scalar_fields:
        schema.add_field(f, DataType.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    # Strong: a post added to the serving generation (retrieval/add_items.py) is searched by the next query.
    client.create_collection(name, schema=schema, consistency_level="Strong")


def generation_version(client, name: str) -> int | None:
    """The model version whose item tower filled the generation (None: not recorded)."""
    try:
        recorded = json.loads(client.describe_collection(name).get("description") or "{}")
    except ValueError:
        return None
    version = recorded.get("model_version") if isinstance(recorded, dict) else None
    return int(version) if isinstance(version, int) else None


def referenced_versions(client, alias: str) -> set[int]:
    """The model versions the alias's generations were filled by: a pushed version still queried
    through one of them must not be deleted."""
    return {v for g in generations(client, alias) if (v := generation_version(client, g)) is not None}


def _wait_for_index(client, name: str, count: int, timeout_seconds: float = 3600.0) -> None:
    """Until the server reports every row of the collection indexed (describe_index's indexed_rows, and
    its state where the server gives one); ItemIndexError if the build fails or takes too long."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        info = client.describe_index(name, VECTOR_FIELD) or {}
        state = str(info.get("state", "Finished"))
        if "Failed" in state:
            raise ItemIndexError(f"building the index of {name} failed: {info.get('index_state_fail_reason', state)}")
        indexed = int(info.get("indexed_rows", count))
        if indexed >= count and int(info.get("pending_index_rows", 0)) == 0 and "Finished" in state:
            return
        if time.monotonic() > deadline:
            raise ItemIndexError(f"the index of {name} is not built after {timeout_seconds:.0f} s "
                                 f"({indexed} of {count} rows)")
        time.sleep(0.5)


MIN_ITEMS_PER_LIST = 39  # k-means needs this many points per centroid to place it (Faiss's rule)


def effective_index_params(config: IndexConfig, count: int) -> dict:
    """The configured parameters, with an IVF nlist capped so that each list gets enough items: a
    small catalog (the sample's 1,500 items) with nlist 1024 would leave most lists empty."""
    params = dict(config.index_params)
    if config.index_type.startswith("IVF") and "nlist" in params:
        params["nlist"] = max(1, min(int(params["nlist"]), count // MIN_ITEMS_PER_LIST))
    return params


def _id_hashes(ids: list[str]) -> np.ndarray:
    """64-bit hashes of the ids (Python's own string hash: only compared within this process)."""
    return np.fromiter((hash(i) for i in ids), np.int64, count=len(ids))


def _duplicates(hashes: np.ndarray) -> int:
    return int(len(hashes) - len(np.unique(hashes)))


def write_generation(config: IndexConfig, batches: Iterable[Batch], id_field: str, scalar_fields: list[str],
                     dim: int, client=None, expected_count: int | None = None, model_version: int | None = None
                     ) -> dict:
    """Writes a new generation from the batches, then moves the alias to it. Returns what was done.

    model_version: the pushed version whose item tower gave the vectors, recorded with the generation
    so that recall asks the model server for that version's user tower. expected_count, when known,
    only makes the progress lines say how much is left."""
    from pymilvus import Collection, connections


    config.validate()
    client = client or connect(config)
    name = generation_name(config.alias)
    orm = f"indexer-{uuid.uuid4().hex[:8]}"  # a column-wise insert connection (much faster than row dicts)
    started = time.perf_counter()
    count = 0
    progress = RateLog(f"indexing into {name}", "items", total=expected_count)
    id_hashes = []  # 8 bytes per item, to detect repeated ids without holding the ids
    try:
        _create_collection(client, name, id_field, scalar_fields, dim, model_version)
        connections.connect(alias=orm, uri=config.uri, token=config.token)
        collection = Collection(name, using=orm)
        sem = threading.BoundedSemaphore(config.insert_threads * 2)  # bounds the rows held in memory

        def insert(columns):
            try:
                collection.insert(columns)
            finally:
                sem.release()

        with ThreadPoolExecutor(config.insert_threads) as pool:
            futures = []
            for batch in batches:
                if batch.vectors.shape[1:] != (dim,):
                    raise ItemIndexError(f"a batch has vectors of shape {batch.vectors.shape}, expected [n, {dim}]")
                vectors = normalise(batch.vectors)
                id_hashes.append(_id_hashes(batch.ids))
                for s in range(0, len(batch.ids), config.insert_batch):
                    e = s + config.insert_batch
                    sem.acquire()
                    # Lists of Python floats: pymilvus flattens the vectors element by element, and
                    # numpy scalars make that several times slower.
                    futures.append(pool.submit(insert, [batch.ids[s:e], *[batch.scalars[f][s:e] for f in scalar_fields],
                                                        vectors[s:e].tolist()]))
                count += len(batch.ids)
                progress.update(count)
                done = [f for f in futures if f.done()]
                for f in done:
                    f.result()  # raises the first insert error
                futures = [f for f in futures if not f.done()]
            for f in futures:
                f.result()
        inserted_seconds = time.perf_counter() - started
        client.flush(name)
        index_params = effective_index_params(config, count)
        index = client.prepare_index_params()
        index.add_index(VECTOR_FIELD, index_type=config.index_type, metric_type="IP", params=index_params)
        index_started = time.perf_counter()
        client.create_index(name, index)
        if not config.is_lite:  # a server builds it in the background: wait until every row is indexed
            _wait_for_index(client, name, count)
        index_seconds = time.perf_counter() - index_started
        client.load_collection(name)
        stored = client.get_collection_stats(name)["row_count"]
        if stored != count:
            raise ItemIndexError(f"{name} holds {stored} rows after inserting {count}")
        duplicates = _duplicates(np.concatenate(id_hashes) if id_hashes else np.zeros(0, np.int64))
        if duplicates:  # Milvus keeps both rows of a repeated primary key; a catalog must not have any
            raise ItemIndexError(f"{duplicates} duplicate ids in the catalog written to {name}")
        alias = alias_of(client, config)
        previous = alias.get()
        alias.point_to(name)
    except Exception:
        log.exception("indexing into %s failed; the alias %s is unchanged", name, config.alias)
        if client.has_collection(name):
            client.drop_collection(name)
        raise
    finally:
        connections.disconnect(orm)
    dropped = [g for g in generations(client, config.alias)[:-config.keep_generations] if g != name]
    for g in dropped:
        alias.forget(g)
        client.drop_collection(g)
    return {"collection": name, "alias": config.alias, "previous": previous, "count": count, "dim": dim,
            "model_version": model_version,
            "index_type": config.index_type, "index_params": index_params,
            "insert_seconds": round(inserted_seconds, 3), "index_seconds": round(index_seconds, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
            "items_per_second": round(count / max(inserted_seconds, 1e-9)), "dropped": dropped}


class ColumnWriter:
    """Upserts through pymilvus's ORM collections, column by column (less Python than the client's row
    dicts: 1,000 posts at 32-d 35 ms against 60 ms), in requests of `batch` rows with up to `threads`
    in flight: Milvus (Lite too) works on them in parallel, so 1,000 768-d posts take ~220 ms in two
    requests against ~420 ms in one. Collections are looked up once, and forgotten after a failure
    (a dropped generation)."""

    KEEP = 4  # collections remembered (a generation or two, the item store)

    def __init__(self, config: IndexConfig):
        self.config, self.batch, self.threads = config, config.insert_batch, config.insert_threads
        self._alias: str | None = None
        self._collections: dict = {}
        self._lock = threading.Lock()

    def upsert(self, name: str, columns: dict[str, list]) -> None:
        """columns: {field: values} for every field of the collection, in any order. The ids must be
        unique: requests in flight together would race for a repeated one."""
        collection = self._collection(name)
        order = [f.name for f in collection.schema.fields]
        ids = columns[order[0]]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{len(ids) - len(set(ids))} repeated ids in one upsert into {name}")
        parts = [[columns[f][s:s + self.batch] for f in order] for s in range(0, len(ids), self.batch)]
        try:
            if len(parts) == 1:
                collection.upsert(parts[0])
            else:
                with ThreadPoolExecutor(min(self.threads, len(parts))) as pool:
                    for done in [pool.submit(collection.upsert, part) for part in parts]:
                        done.result()  # the first failure is raised
        except Exception:
            with self._lock:
                self._collections.pop(name, None)
            raise

    def _collection(self, name: str):
        from pymilvus import Collection, connections

        with self._lock:
            if self._alias is None:
                self._alias = f"columns-{uuid.uuid4().hex[:8]}"
                connections.connect(alias=self._alias, uri=self.config.uri, token=self.config.token)
            if name not in self._collections:
                self._collections[name] = Collection(name, using=self._alias)
                while len(self._collections) > self.KEEP:
                    self._collections.pop(next(iter(self._collections)))
            return self._collections[name]

    def close(self) -> None:
        with self._lock:
            if self._alias is not None:
                from pymilvus import connections

                connections.disconnect(self._alias)
            self._alias, self._collections = None, {}


# ---- the index ----

class MilvusIndex(ItemIndex):
    """The item index in Milvus (a Lite file or a server): generations are collections, the alias a
    Milvus alias (a pointer collection on Lite). Searches resolve the alias themselves every
    `refresh_seconds`; exclusions are applied by over-fetching, so K results come back whenever K
    non-excluded items exist. Milvus's own errors come out as ItemIndexError."""

    def __init__(self, config: IndexConfig, client=None, refresh_seconds: float = 1.0,
                 timeout_seconds: float | None = None):
        self.config, self.timeout_seconds = config, timeout_seconds
        try:
            self.client = client or connect(config)
        except self._milvus_error() as e:
            raise self._error("cannot connect", e) from None
        self._alias = alias_of(self.client, config)
        self._refresh_seconds = refresh_seconds
        self._target, self._checked = None, 0.0
        self._lock = threading.Lock()
        self._described: dict[str, Generation] = {}
        self._columns = ColumnWriter(config)

    @property
    def where(self) -> str:
        return f"alias {self.config.alias} at {self.config.uri}"

    def close(self) -> None:
        self._columns.close()
        self.client.close()

    def write_generation(self, batches, id_field, scalar_fields, dim, expected_count=None, model_version=None) -> dict:
        return write_generation(self.config, batches, id_field, scalar_fields, dim, client=self.client,
                                expected_count=expected_count, model_version=model_version)

    def versions_in_use(self) -> set[int]:
        return referenced_versions(self.client, self.config.alias)

    def upsert_items(self, generation: str, batch: Batch) -> int:
        fields = sorted(self.describe(generation).fields - {self._id_field(generation)})
        n = len(batch.ids)
        columns = {self._id_field(generation): list(batch.ids), VECTOR_FIELD: normalise(batch.vectors).tolist(),
                   **{f: list(batch.scalars.get(f, [""] * n)) for f in fields}}
        try:
            self._columns.upsert(generation, columns)
        except self._milvus_error() as e:
            if not self.client.has_collection(generation):
                raise GenerationGone(f"{generation} at {self.config.uri}: dropped while posts were added") from None
            raise self._error(f"cannot add items to {generation}", e) from None
        return n

    def holds(self, generation: str, ids: list[str]) -> set[str]:
        id_field = self._id_field(generation)
        ids, found = list(ids), set()
        try:
            for start in range(0, len(ids), GET_BATCH):  # small requests: Lite's cost grows with their square
                found |= {r[id_field] for r in self.client.get(generation, ids=ids[start:start + GET_BATCH],
                                                               output_fields=[id_field])}
        except self._milvus_error() as e:
            raise self._error(f"cannot read {generation}", e) from None
        return found

    def count(self, generation: str) -> int:
        try:
            (row,) = self.client.query(generation, filter="", output_fields=["count(*)"])
        except self._milvus_error() as e:
            raise self._error(f"cannot count {generation}", e) from None
        return int(row["count(*)"])

    def _id_field(self, generation: str) -> str:
        described = self.client.describe_collection(generation)
        return next(f["name"] for f in described["fields"] if f.get("is_primary"))

    def describe(self, generation: str) -> Generation:
        with self._lock:
            known = self._described.get(generation)
        if known is None:
            try:
                described = self.client.describe_collection(generation)
            except self._milvus_error() as e:
                raise self._error(f"cannot describe {generation}", e) from None
            known = Generation(generation, generation_version(self.client, generation),
                               frozenset(f["name"] for f in described["fields"] if f["name"] != VECTOR_FIELD))
            with self._lock:
                self._described[generation] = known
        return known

    def _alias_target(self, refresh: bool = False) -> str:
        """The generation the alias names (checked again every refresh_seconds)."""
        with self._lock:
            if refresh or self._target is None or time.monotonic() - self._checked > self._refresh_seconds:
                # The concrete generation, on a server too: a proxy's alias cache can lag behind
                # alter_alias for seconds, describe_alias does not.
                try:
                    target = self._alias.get() or self._target  # the last one seen, over a transient empty read
                except self._milvus_error() as e:
                    raise self._error(f"cannot read the alias {self.config.alias}", e) from None
                if target is None:
                    raise ItemIndexError(f"no index behind alias {self.config.alias} at {self.config.uri}: "
                                         "run the pipeline (ItemIndexer) first")
                if target != self._target:
                    self._check_target(target)
                self._target, self._checked = target, time.monotonic()
            return self._target

    def _check_target(self, target: str) -> None:
        """A generation the alias names must exist and hold item vectors: an alias left pointing at a
        dropped or foreign collection is an error now, not a search retried for a minute."""
        try:
            exists = self.client.has_collection(target)
            fields = {f["name"] for f in self.client.describe_collection(target)["fields"]} if exists else set()
        except self._milvus_error() as e:
            raise ItemIndexError(f"alias {self.config.alias} at {self.config.uri} names collection {target!r}, "
                                 f"which cannot be read: {e}") from None
        if not exists:
            raise ItemIndexError(f"alias {self.config.alias} at {self.config.uri} names collection {target!r}, "
                                 "which does not exist (dropped?): run the pipeline (ItemIndexer) again")
        if VECTOR_FIELD not in fields:
            raise ItemIndexError(f"alias {self.config.alias} at {self.config.uri} names collection {target!r}, "
                                 f"which holds no {VECTOR_FIELD!r} field: not an item index")

    def generation(self, refresh: bool = False) -> tuple[str, int | None]:
        name = self._alias_target(refresh)
        return name, self.describe(name).model_version

    def stored_items(self, generation: str, id_field: str, limit: int) -> list[dict]:
        fields = sorted(self.describe(generation).fields)
        try:
            rows = self.client.query(generation, filter=f'{id_field} != ""', limit=limit,
                                     output_fields=[*fields, VECTOR_FIELD])
        except self._milvus_error() as e:
            raise self._error(f"cannot read {generation}", e) from None
        return [{**{f: r.get(f) for f in fields}, "vector": r[VECTOR_FIELD]} for r in rows]

    def search(self, vectors: np.ndarray, k: int, exclude: list[set[str]] | None = None,
               filters: dict[str, list[str]] | None = None, output_fields: list[str] | None = None,
               generation: str | None = None) -> list[list[dict]]:
        """generation: search this one (one that generation() gave), not the alias's latest."""
        self.check_request(k, filters)
        vectors = normalise(np.atleast_2d(np.asarray(vectors, np.float32)))
        exclude = exclude or [set()] * len(vectors)
        limit = min(k + max((len(e) for e in exclude), default=0), self.MAX_K)
        expr = " and ".join(f"{f} in [{', '.join(milvus_string(v) for v in values)}]"
                            for f, values in sorted((filters or {}).items()))
        params = {"metric_type": "IP", "params": self.config.search_params}
        for attempt in (0, 1):
            try:
                hits = self.client.search(generation or self._alias_target(refresh=attempt == 1), data=vectors.tolist(),
                                          limit=limit, filter=expr, search_params=params,
                                          output_fields=output_fields or [], timeout=self.timeout_seconds)
                break
            except self._milvus_error() as e:
                if generation:  # the generation asked for was dropped while it was read
                    raise GenerationGone(f"{generation} at {self.config.uri}: {_message(e)}") from None
                if attempt == 1:  # a stale pointer to a dropped generation is refreshed once
                    raise self._error("search failed", e) from None
        results = []
        for row, excluded in zip(hits, exclude, strict=True):
            kept = [{"id": h["id"], "score": float(h["distance"]), **h.get("entity", {})}
                    for h in row if h["id"] not in excluded]
            results.append(kept[:k])
        return results

    @staticmethod
    def _milvus_error():
        from pymilvus.exceptions import MilvusException

        return MilvusException

    def _error(self, what: str, e: Exception) -> ItemIndexError:
        return ItemIndexError(f"Milvus at {self.config.uri}: {what}: {_message(e)}")


def _message(e: Exception) -> str:
    return getattr(e, "message", None) or str(e)
