"""The item index as the pipeline and recall use it, whatever stores the vectors.

An index keeps its item vectors in generations: write_generation fills a new one and only then moves
the alias to it, so readers never see a half-written index; search reads the generation the alias
names (or one given); describe says what a generation holds and which model version's item tower
filled it, so recall can ask for that version's user tower. retrieval/milvus.py (MilvusIndex) is
the one implementation; retrieval/backends.py opens it from the config.

Adding a back end: subclass ItemIndex, raise ItemIndexError (GenerationGone for a generation dropped
while it was read) instead of the back end's own errors, and register it in retrieval/backends.py.
"""
from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


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
