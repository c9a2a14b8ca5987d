"""The catalog path: posts (id, item features, content vector) through a model version's item tower
into the index, shared by retrieval.add_items (new posts, one generation) and ItemIndexer (every
stored post, a new generation, then the posts stored while it was written).

`item_tower(examples, version)` gives the item-tower vectors of serialized tf.Examples from that
model version (retrieval.recall's SavedModelTowers.item in-process, ServingTowers.item
over TF Serving's protocol).
"""
from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from retrieval.index import Batch, GenerationGone, ItemIndex, ItemIndexError
from schema.spec import FeatureSpec

MAX_TRIES = 3  # generations followed while posts are added (each try is one alias move)
CLOCK_MARGIN_MS = 60_000  # posts stamped this long before the store was scanned are added again after
# A generation's field: "1" when the version that filled it has a trained id embedding for the post,
# "0" for a post new to it (embedded by its content alone). Recall can reserve places for the "0"s.
KNOWN_FIELD = "model_knows"


class ModelVocabulary:
    """Which posts a pushed model version knows: the item-id vocabulary in its assets (Transform's
    vocab_<group> of the item tower's id feature). A spec whose item tower has no id feature knows no
    post by id: every post is embedded by its content alone."""

    def __init__(self, model_path: str, spec: FeatureSpec):
        """model_path: a base path of versions, or one version directory."""
        from schema.spec import vocab_name

        self.model_path = model_path
        feature = next((f for f in spec.features if f.tower == "item" and f.kind == "sparse"
                        and f.column == spec.item_id), None)
        self.file = vocab_name(feature.group) if feature else None
        self._known: dict[int | None, frozenset] = {}

    def flags(self, version: int | None, ids: list[str]) -> list[str]:
        """KNOWN_FIELD's value of each post for that version."""
        known = self._read(version)
        return ["1" if item in known else "0" for item in ids]

    def _read(self, version: int | None) -> frozenset:
        import os

        from schema import files

        if self.file is None:
            return frozenset()
        if version not in self._known:
            base = self.model_path
            if not files.isdir(os.path.join(base, "assets")):  # a base path of versions
                numbered = sorted(int(e) for e in files.listdir(base) if e.isdigit())
                if version is None and numbered:
                    version = numbered[-1]
                base = os.path.join(base, str(version))
            path = os.path.join(base, "assets", self.file)
            if not files.exists(path):
                raise ValueError(f"cannot tell which posts model version {version} knows: no {path} (the pushed "
                                 "model's files are needed beside a remote tower: give the run's --workdir)")
            with files.open_file(path) as f:
                self._known[version] = frozenset(line.rstrip("\n") for line in f)
            while len(self._known) > 2:  # the versions of the last two generations
                self._known.pop(next(iter(self._known)))
        return self._known[version]


def flagged(batch: Batch, vocabulary: ModelVocabulary, version: int | None) -> Batch:
    """The batch with KNOWN_FIELD added: what a generation stores beside each post's own fields."""
    return Batch(batch.ids, {**batch.scalars, KNOWN_FIELD: vocabulary.flags(version, batch.ids)}, batch.vectors)


def item_examples(builder, spec: FeatureSpec, batch: Batch) -> list[bytes]:
    """The item tower's tf.Examples of a batch of posts: id, item columns, the post's own vector."""
    columns = list(batch.scalars)
    return [builder.from_features({spec.item_id: item, **{c: batch.scalars[c][i] for c in columns
                                                          if batch.scalars[c][i]}},
                                  item_vector=batch.vectors[i])
            for i, item in enumerate(batch.ids)]


def embed_posts(item_tower, builder, spec: FeatureSpec, batch: Batch, version: int | None,
                chunk: int = 512) -> np.ndarray:
    """The posts' item-tower vectors from model `version` ([n, d], not normalised)."""
    out = []
    for s in range(0, len(batch.ids), chunk):
        part = Batch(batch.ids[s:s + chunk], {c: v[s:s + chunk] for c, v in batch.scalars.items()},
                     batch.vectors[s:s + chunk])
        out.append(np.asarray(item_tower(item_examples(builder, spec, part), version), np.float32))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def add_posts(index: ItemIndex, store, item_tower, vocabulary: ModelVocabulary, builder, spec: FeatureSpec,
              batch: Batch) -> dict:
    """Embeds the posts with the item tower of the version that filled the serving generation (a version
    the tower cannot give is refused before anything is written), writes them to the item store, then
    upserts them into that generation, each marked known or new to that version (KNOWN_FIELD); if the
    alias has moved meanwhile, into the new one too (a generation being written picks them up from the
    store). Returns {"added", "generation", "model_version", "seconds"} once every post is searchable."""
    started = time.perf_counter()
    if not batch.ids:
        return {"added": 0, "generation": None, "model_version": None, "seconds": 0.0}
    from concurrent.futures import ThreadPoolExecutor

    generation, version = index.generation(refresh=True)
    # The first post alone: a version the tower cannot give is refused before anything is written.
    first = embed_posts(item_tower, builder, spec, _head(batch, 1), version)
    vocabulary.flags(version, [])  # and one whose vocabulary cannot be read
    with ThreadPoolExecutor(1) as pool:  # the store's write and the embedding side by side
        stored = pool.submit(store.upsert, batch)
        rest = _tail(batch, 1)
        vectors = np.concatenate([first, embed_posts(item_tower, builder, spec, rest, version)]) if rest.ids else first
        stored.result()  # in the store before any generation: a generation being written picks it up
    for _ in range(MAX_TRIES):
        try:
            index.upsert_items(generation, flagged(Batch(batch.ids, batch.scalars, vectors), vocabulary, version))
            missing = set(batch.ids) - index.holds(generation, batch.ids)
            if missing:
                raise ItemIndexError(f"{len(missing)} posts not found in {generation} after the upsert "
                                     f"(e.g. {sorted(missing)[:3]})")
            written = generation
        except GenerationGone:  # dropped while written: the alias has moved on
            written = None
        now, now_version = index.generation(refresh=True)
        if now == written:
            return {"added": len(batch.ids), "generation": written, "model_version": version,
                    "seconds": round(time.perf_counter() - started, 4)}
        generation, version = now, now_version
        vectors = embed_posts(item_tower, builder, spec, batch, version)
    raise ItemIndexError(f"the alias moved {MAX_TRIES} times while {len(batch.ids)} posts were added: they are "
                         "in the item store; the next generation includes them")


def _head(batch: Batch, n: int) -> Batch:
    return Batch(batch.ids[:n], {c: v[:n] for c, v in batch.scalars.items()}, batch.vectors[:n])


def _tail(batch: Batch, n: int) -> Batch:
    return Batch(batch.ids[n:], {c: v[n:] for c, v in batch.scalars.items()}, batch.vectors[n:])


def index_store(index: ItemIndex, store, item_tower, vocabulary: ModelVocabulary, builder, spec: FeatureSpec,
                version: int | None, seed: Iterable[Batch] = (), seed_ms: int | None = None, keep=None) -> dict:
    """Every post of the item store through `version`'s item tower into a new generation (the alias
    moves when it is complete), each marked known or new to that version (KNOWN_FIELD), then the posts
    the store got while it was written (stamped since the scan began, less CLOCK_MARGIN_MS for other
    machines' clocks). `seed`: posts just written to the store with the stamp seed_ms, passed from
    memory; the store is then read only for its other posts.
    keep: called with each embedded Batch written to the generation (ItemIndexer keeps them for the
    report). Returns write_generation's result with "dim" and "added_during_write"."""
    import itertools

    from retrieval.item_store import now_ms

    scanned_from = now_ms()
    posts = itertools.chain(seed, store.scan(but_ms=seed_ms))
    first = next(posts, None)
    if first is None:
        raise ItemIndexError(f"{store.where} holds no post: the catalog is empty")
    first_vectors = embed_posts(item_tower, builder, spec, first, version)

    def kept(batch: Batch) -> Batch:
        if keep is not None:
            keep(batch)
        return flagged(batch, vocabulary, version)

    batches = itertools.chain([kept(Batch(first.ids, first.scalars, first_vectors))],
                              (kept(Batch(b.ids, b.scalars, embed_posts(item_tower, builder, spec, b, version)))
                               for b in posts))
    result = index.write_generation(batches, spec.item_id, [*store.columns, KNOWN_FIELD], first_vectors.shape[1],
                                    expected_count=store.count() or None, model_version=version)
    late = 0
    for batch in store.scan(since_ms=scanned_from - CLOCK_MARGIN_MS, but_ms=seed_ms):
        vectors = embed_posts(item_tower, builder, spec, batch, version)
        late += index.upsert_items(result["collection"], flagged(Batch(batch.ids, batch.scalars, vectors),
                                                                 vocabulary, version))
    return {**result, "dim": int(first_vectors.shape[1]), "added_during_write": late}
