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


def add_posts(index: ItemIndex, store, item_tower, builder, spec: FeatureSpec, batch: Batch) -> dict:
    """Embeds the posts with the item tower of the version that filled the serving generation (a version
    the tower cannot give is refused before anything is written), writes them to the item store, then
    upserts them into that generation; if the alias has moved meanwhile, into the new one too (a
    generation being written picks them up from the store). Returns {"added", "generation",
    "model_version", "seconds"} once every post is searchable."""
    started = time.perf_counter()
    if not batch.ids:
        return {"added": 0, "generation": None, "model_version": None, "seconds": 0.0}
    from concurrent.futures import ThreadPoolExecutor

    generation, version = index.generation(refresh=True)
    # The first post alone: a version the tower cannot give is refused before anything is written.
    first = embed_posts(item_tower, builder, spec, _head(batch, 1), version)
    with ThreadPoolExecutor(1) as pool:  # the store's write and the embedding side by side
        stored = pool.submit(store.upsert, batch)
        rest = _tail(batch, 1)
        vectors = np.concatenate([first, embed_posts(item_tower, builder, spec, rest, version)]) if rest.ids else first
        stored.result()  # in the store before any generation: a generation being written picks it up
    for _ in range(MAX_TRIES):
        try:
            index.upsert_items(generation, Batch(batch.ids, batch.scalars, vectors))
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


def index_store(index: ItemIndex, store, item_tower, builder, spec: FeatureSpec, version: int | None,
                seed: Iterable[Batch] = (), seed_ms: int | None = None, keep=None) -> dict:
    """Every post of the item store through `version`'s item tower into a new generation (the alias
    moves when it is complete), then the posts the store got while it was written (stamped since the
    scan began, less CLOCK_MARGIN_MS for other machines' clocks). `seed`: posts just written to the
    store with the stamp seed_ms, passed from memory; the store is then read only for its other posts.
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
        return batch

    batches = itertools.chain([kept(Batch(first.ids, first.scalars, first_vectors))],
                              (kept(Batch(b.ids, b.scalars, embed_posts(item_tower, builder, spec, b, version)))
                               for b in posts))
    result = index.write_generation(batches, spec.item_id, list(store.columns), first_vectors.shape[1],
                                    expected_count=store.count() or None, model_version=version)
    late = 0
    for batch in store.scan(since_ms=scanned_from - CLOCK_MARGIN_MS, but_ms=seed_ms):
        vectors = embed_posts(item_tower, builder, spec, batch, version)
        late += index.upsert_items(result["collection"], Batch(batch.ids, batch.scalars, vectors))
    return {**result, "dim": int(first_vectors.shape[1]), "added_during_write": late}
