"""The item index as the pipeline and recall use it, whatever stores the vectors.

An index keeps its item vectors in generations: write_generation fills a new one and only then moves
the alias to it, so readers never see a half-written index; search reads the generation the alias
names (or one given); describe says what a generation holds and which model version's item tower
filled it, so recall can ask for that version's user tower. retrieval/milvus.py (MilvusIndex: a
Milvus Lite file or a server) and retrieval/numpy_index.py (NumpyIndex: exact, in one process, for
tests) implement it; retrieval/backends.py opens the one the config's uri names and answers what
callers outside retrieval/ ask about it (is there an index yet, which local files it writes).

Adding a back end: subclass ItemIndex, raise ItemIndexError (GenerationGone for a generation dropped
while it was read) instead of the back end's own errors, and register it in retrieval/backends.py.
"""
from __future__ import annotations

import abc
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

LITE_FILE = "milvus.db"  # a run's Milvus Lite file in its work directory, when milvus.uri is ""
LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "AUTOINDEX")
MEMORY_SCHEME = "memory://"  # an in-process exact index (retrieval/numpy_index.py): tests, one process


@dataclass(frozen=True)
class IndexConfig:
    """Where and how the item vectors are indexed: the pipeline config's `milvus:` key as well."""
    uri: str = ""                              # a Milvus Lite file (*.db) or http(s)://host:port
    token: str = ""                            # a Milvus server's token ("user:password" or an API key)
    alias: str = "dssm_items"                  # queries go through it; each run writes a new collection
    # FLAT (exact) by default. On Milvus Lite 2.5, IVF_FLAT / AUTOINDEX on a 100k-item collection
    # return ~0.7 of the true top 100 whatever the parameters (interim index); at 1M items IVF_FLAT
    # nlist 4000 is exact and 10x faster than FLAT (bench/milvus_search.py, docs/retrieval.md).
    index_type: str = "FLAT"                   # FLAT | IVF_FLAT | AUTOINDEX on Milvus Lite; any type on a server
    index_params: dict = field(default_factory=dict)   # e.g. {nlist: 4096}; IVF nlist is capped at items / 39
    search_params: dict = field(default_factory=dict)  # e.g. {nprobe: 64}
    keep_generations: int = 2                  # collections kept, the serving one included
    insert_batch: int = 500                    # rows per insert request (500 x 8 in flight: fastest on Lite)
    insert_threads: int = 8                    # insert requests in flight (Milvus works on them in parallel)

    def at(self, workdir: str) -> IndexConfig:
        """This config, an empty uri resolved to the run's Milvus Lite file <workdir>/milvus.db."""
        return self if self.uri else replace(self, uri=os.path.join(workdir, LITE_FILE))

    @property
    def in_memory(self) -> bool:
        return self.uri.startswith(MEMORY_SCHEME)

    @property
    def is_lite(self) -> bool:
        """A Milvus Lite file: known inside retrieval/ only (retrieval/backends.py answers the callers)."""
        return not self.in_memory and not self.uri.startswith(("http://", "https://", "tcp://", "unix:"))

    def validate(self) -> None:
        if self.keep_generations < 1:
            raise ValueError("milvus.keep_generations must be >= 1 (the serving generation)")
        if self.is_lite and self.index_type not in LITE_INDEX_TYPES:
            raise ValueError(f"Milvus Lite builds {', '.join(LITE_INDEX_TYPES)} only, not {self.index_type}; "
                             "use a Milvus server (milvus.uri: http://host:19530) for other index types")
        if self.insert_batch < 1 or self.insert_threads < 1:
            raise ValueError("milvus.insert_batch and milvus.insert_threads must be >= 1")


class ItemIndexError(RuntimeError):
    """Indexing or searching failed; the previous generation (if any) keeps serving."""


class GenerationGone(ItemIndexError):
    """The generation searched was dropped while it was read: a newer one took its place."""


@dataclass(frozen=True)
class Batch:
    """Items to index: ids, their scalar fields (column -> values) and their vectors (one row each)."""
    ids: list[str]
    scalars: dict[str, list[str]]
    vectors: np.ndarray


@dataclass(frozen=True)
class Generation:
    """What describe() tells of a generation."""
    name: str
    model_version: int | None   # the pushed version whose item tower filled it (None: not recorded)
    fields: frozenset[str]      # the id and scalar fields: what a search can filter on and return


class ItemIndex(abc.ABC):
    MAX_K = 16384  # the most items one query may ask for (Milvus's cap on topk)

    @abc.abstractmethod
    def write_generation(self, batches: Iterable[Batch], id_field: str, scalar_fields: list[str], dim: int,
                         expected_count: int | None = None, model_version: int | None = None) -> dict:
        """Fills a new generation from the batches, moves the alias to it, drops generations beyond the
        ones kept; returns what was done (generation, count, seconds, ...). A failure leaves the alias
        where it was and no partial generation."""

    @abc.abstractmethod
    def generation(self, refresh: bool = False) -> tuple[str, int | None]:
        """(the generation the alias names, the model version that filled it); ItemIndexError if none."""

    @abc.abstractmethod
    def describe(self, generation: str) -> Generation:
        ...

    @abc.abstractmethod
    def search(self, vectors: np.ndarray, k: int, exclude: list[set[str]] | None = None,
               filters: dict[str, list[str]] | None = None, output_fields: list[str] | None = None,
               generation: str | None = None) -> list[list[dict]]:
        """Per query vector, the k nearest items by inner product of normalised vectors ({"id", "score",
        *output_fields}), none of its `exclude` ids, each field in `filters` among the values listed."""

    @abc.abstractmethod
    def stored_items(self, generation: str, id_field: str, limit: int) -> list[dict]:
        """Up to `limit` stored items: their id, scalar fields and stored (normalised) vector under "vector"."""

    @abc.abstractmethod
    def upsert_items(self, generation: str, batch: Batch) -> int:
        """Writes items (their item-tower vectors, normalised here) into a generation, replacing an id
        already there; searchable by the next query. GenerationGone when it was dropped meanwhile."""

    @abc.abstractmethod
    def holds(self, generation: str, ids: list[str]) -> set[str]:
        """Which of the ids the generation holds (read back, as a search would see them)."""

    @abc.abstractmethod
    def count(self, generation: str) -> int:
        """How many items the generation holds."""

    @abc.abstractmethod
    def versions_in_use(self) -> set[int]:
        """The model versions the kept generations were filled by: their towers must stay served."""

    @abc.abstractmethod
    def close(self) -> None:
        ...

    @property
    @abc.abstractmethod
    def where(self) -> str:
        """The index's address and alias, for messages."""

    def check_request(self, k, filters: dict[str, list[str]] | None) -> None:
        """ValueError, with the reason, for a k that is not an int in [1, MAX_K] or a filter on a field
        the index does not hold."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.MAX_K:
            raise ValueError(f"k must be an integer from 1 to {self.MAX_K}, got {k!r}")
        if filters:
            empty = sorted(f for f, values in filters.items() if not values)
            if empty:
                raise ValueError(f"the filter on {empty} lists no value: give at least one, or no filter")
            known = self.describe(self.generation()[0]).fields
            unknown = sorted(set(filters) - known)
            if unknown:
                raise ValueError(f"cannot filter on {unknown}: the index's filterable fields are {sorted(known)}")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero): inner product = cosine similarity."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
