"""Predict and GetModelMetadata on a resolved Servable, with TF Serving's checks and messages.

The gRPC and REST front ends differ only in how tensors are encoded; both come through here.
"""
from __future__ import annotations

import os

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2, predict_pb2, prediction_log_pb2

from serving import request_cost
from serving.request_cost import RequestLimits
from serving.servables import Servable, ServableManager
from serving.status import ServingError, failed_precondition, invalid_argument
from serving.tensors import array_to_proto, proto_to_array, proto_upper_bytes

DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"


def signature_def(servable: Servable, name: str, rest: bool = False):
    name = name or DEFAULT_SIGNATURE
    if not servable.callable_signature(name):
        if rest:
            raise invalid_argument(f'Serving signature name: "{name}" not found in signature def')
        raise failed_precondition(f'Serving signature key "{name}" not found.')
    return name, servable.signature_defs[name]


def check_input_names(sig, given: list[str]) -> None:
    expected = sorted(sig.inputs)
    if len(given) != len(expected):
        extra = sorted(set(given) - set(expected))
        missing = sorted(set(expected) - set(given))
        raise invalid_argument(
            f"input size does not match signature: {len(given)}!={len(expected)} "
            f"len({{{','.join(sorted(given))}}}) != len({{{','.join(expected)}}}). "
            f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.")
    for alias in sorted(given):
        if alias not in sig.inputs:
            raise invalid_argument(f"input tensor alias not found in signature: {alias}. "
                                   f"Inputs expected to be in the set {{{','.join(expected)}}}.")


def output_keys(sig, output_filter) -> list[str]:
    if not output_filter:
        return sorted(sig.outputs)
    seen = []
    for alias in output_filter:
        if alias not in sig.outputs:
            raise invalid_argument(f"output tensor alias not found in signature: {alias} "
                                   f"Outputs expected to be in the set {{{','.join(sorted(sig.outputs))}}}.")
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen


def resolve(manager: ServableManager, spec: model_pb2.ModelSpec, has_spec: bool = True) -> Servable:
    if not has_spec:
        raise invalid_argument("Missing ModelSpec")
    which = spec.WhichOneof("version_choice")
    return manager.resolve(spec.name, version=spec.version.value if which == "version" else None,
                           label=spec.version_label if which == "version_label" else None)


def _rows(shape) -> int:
    return int(shape[0]) if len(shape) else 1


def check_values(servable: Servable, signature: str, arrays: dict[str, np.ndarray], limits: RequestLimits | None,
                 entries: int) -> None:
    """What the arrays cost and hold, before the model runs: padded model memory for their rows, the
    entries inside serialized tf.Examples, float values finite (and at least the contract's minimum)."""
    if limits is None:  # the model's own warmup requests
        return
    contract = servable.contract
    cost = contract.cost(signature)
    if arrays:
        request_cost.check_model_memory(cost, max(_rows(a.shape) for a in arrays.values()), limits)
    for alias, a in arrays.items():
        if a.dtype.kind == "f":
            largest = request_cost.FLOAT32_MAX if a.dtype == np.float32 else float(np.finfo(a.dtype).max)
            request_cost.check_floats(a.ravel(), alias, contract.minimum.get(alias), largest=largest)
    if cost.examples_input in arrays:
        request_cost.check_examples(arrays[cost.examples_input].ravel(), limits, entries)


def check_response_size(outputs: dict[str, np.ndarray], limits: RequestLimits | None) -> None:
    if limits is None or not limits.max_response_bytes:
        return
    size = sum(proto_upper_bytes(a) for a in outputs.values())
    if size > limits.max_response_bytes:
        raise response_too_large(size, limits)


def response_too_large(size: int, limits: RequestLimits) -> ServingError:
    return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the response would take up to {size} bytes, more than the limit of "
                        f"{limits.max_response_bytes} bytes (--max_response_bytes): ask for fewer rows")


def predict_request(servable: Servable, request: predict_pb2.PredictRequest,
                    limits: RequestLimits | None = None) -> predict_pb2.PredictResponse:
    name, sig = signature_def(servable, request.model_spec.signature_name)
    check_input_names(sig, list(request.inputs))
    entries = 0
    if limits is not None:
        # from the declared shapes, before any tensor is built (a 20-byte TensorProto can declare
        # [200000] elements, one value filling all)
        entries = sum(request_cost.shape_entries([d.size for d in t.tensor_shape.dim]) for t in request.inputs.values())
        request_cost.check_entries(entries, limits)
    keys = output_keys(sig, request.output_filter)
    arrays = {alias: proto_to_array(request.inputs[alias], alias, sig.inputs[alias].dtype, i)
              for i, alias in enumerate(sorted(request.inputs))}
    check_values(servable, name, arrays, limits, entries)
    outputs = servable.run(name, arrays, keys)
    check_response_size(outputs, limits)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = name
    for alias, array in outputs.items():
        response.outputs[alias].CopyFrom(array_to_proto(array))
    return response


def predict_arrays(servable: Servable, signature_name: str, arrays: dict[str, np.ndarray],
                   rest: bool = False, limits: RequestLimits | None = None,
                   entries: int = 0) -> tuple[str, dict[str, np.ndarray]]:
    name, sig = signature_def(servable, signature_name, rest=rest)
    check_input_names(sig, list(arrays))
    check_values(servable, name, arrays, limits, entries)
    return name, servable.run(name, arrays, sorted(sig.outputs))


def metadata(manager: ServableManager, request: get_model_metadata_pb2.GetModelMetadataRequest
             ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    fields = list(request.metadata_field)
    if not fields:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    for f in fields:
        if f != SIGNATURE_DEF_FIELD:
            raise invalid_argument(f"Metadata field {f} is not supported")
    servable = resolve(manager, request.model_spec, request.HasField("model_spec"))
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in servable.signature_defs.items():
        sig_map.signature_def[key].CopyFrom(sig)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(sig_map)
    return response


WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


def run_warmup(servable: Servable) -> None:
    """Replays assets.extra/tf_serving_warmup_requests (PredictionLog TFRecords), as TF Serving does."""
    path = os.path.join(servable.path, WARMUP_FILE)
    if not os.path.isfile(path):
        return
    for n, record in enumerate(tf.data.TFRecordDataset(path)):
        if n >= MAX_WARMUP_RECORDS:
            break
        entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        if entry.WhichOneof("log_type") != "predict_log":
            raise ValueError(f"warmup record {n}: only predict_log is supported")
        predict_request(servable, entry.predict_log.request)
