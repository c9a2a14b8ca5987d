"""The warm-start resolver: which earlier pushed model the Trainer starts from (a TFX resolver strategy)."""
from __future__ import annotations

import logging

from tfx.dsl.components.common import resolver
from tfx.types import standard_artifacts

from components.tower_pusher import MODEL_URI
from model.warm_start import WarmStartRefused, read_meta


class LatestPushedModelBeforeSpan(resolver.ResolverStrategy):
    """The newest Model that was pushed and was trained on a span before config["before_span"].

    Resolving only earlier spans keeps a span's re-run a cache hit: its Trainer gets the same base
    model as the first time, not the model that first run pushed. Inputs: model (Model channel),
    pushed_model (PushedModel channel, TowerPusher's, which records the Model's URI)."""

    def __init__(self, before_span: int):
        self._before_span = int(before_span)

    def resolve_artifacts(self, store, input_dict):
        pushed_uris = {p.get_string_custom_property(MODEL_URI) for p in input_dict.get("pushed_model", [])
                       if p.get_int_custom_property("pushed") == 1}
        models = [m for m in input_dict.get("model", []) if isinstance(m, standard_artifacts.Model)]
        for model in sorted(models, key=lambda m: m.id, reverse=True):
            if model.uri not in pushed_uris:
                continue
            try:
                meta = read_meta(model.uri)
            except WarmStartRefused as e:  # a damaged model is passed over, not a failed run
                logging.warning("warm start: skipping %s: %s", model.uri, e)
                continue
            if meta is not None and meta["span"] is not None and meta["span"] < self._before_span:
                return {"model": [model], "pushed_model": []}
        return {"model": [], "pushed_model": []}
