"""AnomalyGate: stops the pipeline when ExampleValidator found anomalies.

TFX 1.16's ExampleValidator records anomalies but lets the pipeline go on; training on data that
breaks the curated schema (an unexpected client_type, a missing feature, a type change) is what
this gate prevents. Transform runs after it (an upstream-node dependency), so a failing gate stops
the run before Transform, and the anomalies are listed in the error.
"""

import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies

ANOMALIES_FILE = "SchemaDiff.pb"


class DataAnomalyError(RuntimeError):
    pass


def list_anomalies(artifact) -> list[str]:
    """'<split>: <feature>: <description>' for every anomaly in every split."""
    found = []
    for split in artifact_utils.decode_split_names(artifact.split_names):
        path = os.path.join(artifact_utils.get_split_uri([artifact], split), ANOMALIES_FILE)
        with fileio.open(path, "rb") as f:
            anomalies = anomalies_pb2.Anomalies.FromString(f.read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reasons = "; ".join(r.description or r.short_description for r in info.reason)
            found.append(f"{split}: {feature}: {reasons or info.description}")
        if anomalies.HasField("dataset_anomaly_info"):
            reasons = "; ".join(r.description for r in anomalies.dataset_anomaly_info.reason)
            found.append(f"{split}: (dataset): {reasons}")
    return found


@component
def AnomalyGate(anomalies: InputArtifact[ExampleAnomalies]) -> None:
    found = list_anomalies(anomalies)
    if found:
        raise DataAnomalyError("the data does not match the schema; the run stops before Transform:\n  "
                               + "\n  ".join(found))
