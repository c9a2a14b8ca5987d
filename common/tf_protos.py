"""TensorFlow's and TF Serving's protocol buffers without TensorFlow's runtime.

The generated modules live inside the `tensorflow` package, so importing one runs TensorFlow's
__init__ (13-15 s and a GiB of address space on a 2-core machine) although the protos need only
protobuf. A gRPC client, the recall CLI against a served model and the log parser need the messages
alone: `load()` imports them under an unexecuted shell of the package and removes the shell again, so
a later `import tensorflow` in the same process runs TensorFlow's own __init__ as usual and finds
the very same message classes already loaded.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

MODULES = (
    "tensorflow.core.framework.tensor_pb2",
    "tensorflow.core.framework.tensor_shape_pb2",
    "tensorflow.core.framework.types_pb2",
    "tensorflow.core.example.example_pb2",
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "tensorflow_serving.apis.model_service_pb2_grpc",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
)


_loaded = False


def load() -> None:
    """Imports MODULES; without TensorFlow's runtime unless it is loaded already. Once per process:
    the log parser calls it for every row."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    if "tensorflow" in sys.modules or all(name in sys.modules for name in MODULES):
        for name in MODULES:
            importlib.import_module(name)
        return
    shell = importlib.util.module_from_spec(importlib.util.find_spec("tensorflow"))
    sys.modules["tensorflow"] = shell
    try:
        for name in MODULES:
            importlib.import_module(name)
    finally:
        if sys.modules.get("tensorflow") is shell:
            del sys.modules["tensorflow"]
