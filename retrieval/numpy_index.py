"""An exact item index in this process's memory: inner products of normalised vectors with numpy.

The same interface and rules as MilvusIndex (generations behind an alias, switched only once full;
filters, exclusions, upserts, the model version each generation was filled by), without a server
or a file: for unit tests, and wherever one process holds the whole catalog. Opened by
retrieval/backends.py for a uri memory://NAME; every index opened on the same NAME in a process
sees the same generations. Ties rank by the order the items were written.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from retrieval.index import Batch, Generation, GenerationGone, IndexConfig, ItemIndex, ItemIndexError, normalise


@dataclass
class _Generation:
    id_field: str
    scalar_fields: list[str]
    model_version: int | None
    ids: list[str] = field(default_factory=list)
    position: dict[str, int] = field(default_factory=dict)
    scalars: dict[str, list[str]] = field(default_factory=dict)
    vectors: np.ndarray = None


@dataclass
class _Space:
    """Everything written under one memory://NAME: generations by name, each alias's target."""
    generations: dict[str, _Generation] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


_SPACES: dict[str, _Space] = {}
_SPACES_LOCK = threading.Lock()
_SERIAL = itertools.count(1)


class NumpyIndex(ItemIndex):
    def __init__(self, config: IndexConfig):
        if not config.in_memory:
            raise ValueError(f"NumpyIndex takes a memory://NAME uri, got {config.uri!r}")
        self.config = config
        with _SPACES_LOCK:
            self._space = _SPACES.setdefault(config.uri, _Space())

    @property
    def where(self) -> str:
        return f"alias {self.config.alias} at {self.config.uri}"

    def close(self) -> None:
        pass  # the space outlives an index opened on it, as a Milvus collection outlives a client

    def _mine(self) -> list[str]:
        """This alias's generations, oldest first."""
        prefix = f"{self.config.alias}_g"
        return sorted(g for g in self._space.generations if g.startswith(prefix))

    def _get(self, generation: str) -> _Generation:
        found = self._space.generations.get(generation)
        if found is None:
            raise GenerationGone(f"{generation} at {self.config.uri}: dropped (or never written)")
        return found

    def write_generation(self, batches: Iterable[Batch], id_field: str, scalar_fields: list[str], dim: int,
                         expected_count: int | None = None, model_version: int | None = None) -> dict:
        started = time.perf_counter()
        gen = _Generation(id_field, list(scalar_fields), model_version, scalars={f: [] for f in scalar_fields})
        parts = []
        for batch in batches:  # built aside: readers see nothing of it until the alias moves
            if batch.vectors.shape[1:] != (dim,):
                raise ItemIndexError(f"a batch has vectors of shape {batch.vectors.shape}, expected [n, {dim}]")
            for item in batch.ids:
                if item in gen.position:
                    raise ItemIndexError(f"duplicate id {item!r} in the catalog written to {self.where}")
                gen.position[item] = len(gen.ids)
                gen.ids.append(item)
            for f in scalar_fields:
                gen.scalars[f].extend(str(v) for v in batch.scalars[f])
            parts.append(normalise(batch.vectors))
        gen.vectors = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        name = f"{self.config.alias}_g{next(_SERIAL):08d}"
        with self._space.lock:
            self._space.generations[name] = gen
            previous = self._space.aliases.get(self.config.alias)
            self._space.aliases[self.config.alias] = name
            dropped = [g for g in self._mine()[:-self.config.keep_generations] if g != name]
            for g in dropped:
                del self._space.generations[g]
        seconds = time.perf_counter() - started
        return {"collection": name, "alias": self.config.alias, "previous": previous, "count": len(gen.ids),
                "dim": dim, "model_version": model_version, "index_type": "exact (numpy)", "index_params": {},
                "total_seconds": round(seconds, 3), "items_per_second": round(len(gen.ids) / max(seconds, 1e-9)),
                "dropped": dropped}

    def generation(self, refresh: bool = False) -> tuple[str, int | None]:
        with self._space.lock:
            name = self._space.aliases.get(self.config.alias)
            if name is None or name not in self._space.generations:
                raise ItemIndexError(f"no index behind alias {self.config.alias} at {self.config.uri}: "
                                     "run the pipeline (ItemIndexer) first")
            return name, self._space.generations[name].model_version

    def describe(self, generation: str) -> Generation:
        gen = self._get(generation)
        return Generation(generation, gen.model_version, frozenset([gen.id_field, *gen.scalar_fields]))

    def search(self, vectors: np.ndarray, k: int, exclude: list[set[str]] | None = None,
               filters: dict[str, list[str]] | None = None, output_fields: list[str] | None = None,
               generation: str | None = None) -> list[list[dict]]:
        self.check_request(k, filters)
        queries = normalise(np.atleast_2d(np.asarray(vectors, np.float32)))
        exclude = exclude or [set()] * len(queries)
        with self._space.lock:
            gen = self._get(generation or self.generation()[0])
            ids, stored, scalars = list(gen.ids), gen.vectors, {f: list(v) for f, v in gen.scalars.items()}
        allowed = np.ones(len(ids), bool)
        for f, values in (filters or {}).items():
            column = ids if f == gen.id_field else scalars[f]
            wanted = {str(v) for v in values}
            allowed &= np.array([v in wanted for v in column], bool)
        scores = (queries @ stored.T).astype(np.float64) if len(ids) else np.zeros((len(queries), 0))
        results = []
        for row, excluded in zip(scores, exclude, strict=True):
            order = np.argsort(-row, kind="stable")
            hits = []
            for i in order:
                if allowed[i] and ids[i] not in excluded:
                    hits.append({"id": ids[i], "score": float(row[i]),
                                 **{f: (ids[i] if f == gen.id_field else scalars[f][i]) for f in output_fields or []}})
                    if len(hits) == k:
                        break
            results.append(hits)
        return results

    def stored_items(self, generation: str, id_field: str, limit: int) -> list[dict]:
        with self._space.lock:
            gen = self._get(generation)
            return [{id_field: item, **{f: gen.scalars[f][i] for f in gen.scalar_fields},
                     "vector": gen.vectors[i].tolist()} for i, item in enumerate(gen.ids[:limit])]

    def upsert_items(self, generation: str, batch: Batch) -> int:
        vectors = normalise(batch.vectors)
        with self._space.lock:
            gen = self._get(generation)
            if vectors.shape[1:] != gen.vectors.shape[1:]:
                raise ItemIndexError(f"vectors of shape {vectors.shape}, expected [n, {gen.vectors.shape[1]}]")
            new = []
            for i, item in enumerate(batch.ids):
                at = gen.position.get(item)
                values = {f: str(batch.scalars.get(f, [""] * len(batch.ids))[i]) for f in gen.scalar_fields}
                if at is None:
                    gen.position[item] = len(gen.ids)
                    gen.ids.append(item)
                    for f, v in values.items():
                        gen.scalars[f].append(v)
                    new.append(vectors[i])
                else:  # an id already there is replaced, as a Milvus upsert does
                    gen.vectors[at] = vectors[i]
                    for f, v in values.items():
                        gen.scalars[f][at] = v
            if new:
                gen.vectors = np.concatenate([gen.vectors, np.stack(new)])
        return len(batch.ids)

    def holds(self, generation: str, ids: list[str]) -> set[str]:
        with self._space.lock:
            gen = self._get(generation)
            return {i for i in ids if i in gen.position}

    def count(self, generation: str) -> int:
        with self._space.lock:
            return len(self._get(generation).ids)

    def versions_in_use(self) -> set[int]:
        with self._space.lock:
            return {self._space.generations[g].model_version for g in self._mine()
                    if self._space.generations[g].model_version is not None}
