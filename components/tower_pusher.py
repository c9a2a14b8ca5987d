"""TowerPusher: TFX's Pusher, plus the user-only and item-only SavedModels pushed beside the full one.

The Trainer exports <Format-Serving> (all signatures) and <Format-Serving>-user / -item (one tower
each). The full model goes to <base>/<version>/ as with TFX's Pusher; the towers go to
<base>_user/<version>/ and <base>_item/<version>/ with the same version, so that a TF Serving
instance can load one tower only. saved_model.pb is copied last in each: TF Serving treats its
presence as "the version is complete".
"""
import json
import os
import shutil

from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils

TOWERS = ("user", "item")
TOWER_DESTINATIONS = "tower_destinations"
KEEP_VERSIONS = "keep_versions"  # custom_config key: pushed versions kept per folder (0 = all)


def prune_versions(base: str, keep: int) -> list[str]:
    """Deletes all but the newest `keep` version folders (<base>/<integer>/) and returns them.
    TF Serving unloads a version whose folder disappears; other entries are left alone."""
    if keep <= 0 or not os.path.isdir(base):
        return []
    versions = sorted((e for e in os.listdir(base) if e.isdigit()), key=int)
    removed = [os.path.join(base, v) for v in versions[:-keep]]
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
        towers = {}
        for tower in TOWERS:
            src = f"{model_path.rstrip('/')}-{tower}"
            dest = os.path.join(f"{base}_{tower}", version)
            if not fileio.exists(os.path.join(dest, "saved_model.pb")):
                copy_saved_model(src, dest)
            towers[tower] = dest
        pushed.set_json_value_custom_property(TOWER_DESTINATIONS, towers)
        keep = int(json.loads(exec_properties.get("custom_config") or "{}").get(KEEP_VERSIONS, 0))
        for folder in (base, *(f"{base}_{tower}" for tower in TOWERS)):
            prune_versions(folder, keep)


class TowerPusher(pusher_component.Pusher):
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
