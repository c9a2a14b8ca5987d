"""TowerPusher: TFX's Pusher, plus the user-only and item-only SavedModels pushed beside the full one.

The Trainer exports <Format-Serving> (all signatures) and <Format-Serving>-user / -item (one tower
each). The full model goes to <base>/<version>/ as with TFX's Pusher; the towers go to
<base>_user/<version>/ and <base>_item/<version>/ with the same version, so that a TF Serving
instance can load one tower only. saved_model.pb is copied last in each: TF Serving treats its
presence as "the version is complete".
"""
import json
import logging
import os
import shutil

from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils

from common.outputs import OutputReport

TOWERS = ("user", "item")
TOWER_DESTINATIONS = "tower_destinations"
KEEP_VERSIONS = "keep_versions"  # custom_config key: pushed versions kept per folder (0 = all)
INDEX_CONFIG = "index_config"    # custom_config key: the item index, whose generations' versions are kept
MODEL_URI = "model_uri"          # custom property of a pushed PushedModel: the Model artifact's URI
OUTPUT_REPORT = OutputReport(
    "PushedModel", "pushed_model",
    read=lambda a, custom: {"pushed": bool(custom(a, "pushed")), "path": custom(a, "pushed_destination"),
                            "version": custom(a, "pushed_version"), "towers": custom(a, TOWER_DESTINATIONS) or {}},
    figures=lambda p: f"pushed version {p['version']}" if p["pushed"] else "not pushed")


def prune_versions(base: str, keep: int, protected: set[int] = frozenset()) -> list[str]:
    """Deletes all but the newest `keep` version folders (<base>/<integer>/) and returns them, never a
    protected version (one an item index generation was filled by: recall still asks for it). TF
    Serving unloads a version whose folder disappears; other entries are left alone."""
    if keep <= 0 or not os.path.isdir(base):
        return []
    versions = sorted((e for e in os.listdir(base) if e.isdigit()), key=int)
    removed = [os.path.join(base, v) for v in versions[:-keep] if int(v) not in protected]
    for path in removed:
        shutil.rmtree(path)
    return removed


def copy_saved_model(src: str, dest: str) -> None:
    io_utils.copy_dir(src, dest, deny_regex_patterns=[r"saved_model\.pb"])
    io_utils.copy_file(os.path.join(src, "saved_model.pb"), os.path.join(dest, "saved_model.pb"))


class Executor(pusher_executor.Executor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        super().Do(input_dict, output_dict, exec_properties)
        pushed = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not pushed.get_int_custom_property("pushed"):
            return
        destination = pushed.get_string_custom_property("pushed_destination")  # <base>/<version>
        base, version = os.path.split(destination.rstrip("/"))
        model_path = self.GetModelPath(input_dict)
        # which Model this is: the warm start of a later span resolves the pushed models by it
        pushed.set_string_custom_property(MODEL_URI, artifact_utils.get_single_uri(
            input_dict[standard_component_specs.MODEL_KEY]))
        towers = {}
        for tower in TOWERS:
            src = f"{model_path.rstrip('/')}-{tower}"
            dest = os.path.join(f"{base}_{tower}", version)
            if not fileio.exists(os.path.join(dest, "saved_model.pb")):
                copy_saved_model(src, dest)
            towers[tower] = dest
        pushed.set_json_value_custom_property(TOWER_DESTINATIONS, towers)
        custom = json.loads(exec_properties.get("custom_config") or "{}")
        keep = int(custom.get(KEEP_VERSIONS, 0))
        protected = indexed_versions(custom.get(INDEX_CONFIG)) if keep else set()
        if protected is None:
            return  # the index cannot say which versions it needs: keep them all this time
        for folder in (base, *(f"{base}_{tower}" for tower in TOWERS)):
            prune_versions(folder, keep, protected)


def indexed_versions(index_config: dict | None) -> set[int] | None:
    """The model versions the item index's generations were filled by; None if the index cannot be read."""
    if not index_config:
        return set()
    from retrieval.backends import nothing_indexed_yet, open_index
    from retrieval.index import IndexConfig

    config = IndexConfig(**index_config)
    if nothing_indexed_yet(config):
        return set()
    try:
        with open_index(config) as item_index:
            return item_index.versions_in_use()
    except Exception as e:  # noqa: BLE001 - an unreachable index must not make the push fail
        logging.warning("TowerPusher: cannot read the item index at %s (%s); no version is deleted", config.uri, e)
        return None


class TowerPusher(pusher_component.Pusher):
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
