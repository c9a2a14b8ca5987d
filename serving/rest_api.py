"""REST front end, TF Serving's /v1 API:

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]             -> model version status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata    -> signature defs
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict     -> row ("instances") or columnar ("inputs")

Errors are {"error": message} with TF Serving's HTTP status for the code.
Errors are {"error": message} with TF Serving's HTTP status for the code.

The HTTP transport and its limits are serving/http_transport.py's (--max_request_bytes,
--rest_api_timeout_in_ms, --rest_api_max_connections, --max_json_depth); this module adds
--max_request_elements (tensor elements counted before decoding) and answers a prediction for a model
that is not served from its headers, its body never read.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from serving import predict, request_cost
from serving.http_transport import JSON_DECODER, HttpLimits, HttpServer, JsonApp
from serving.json_scan import json_scan
from serving.request_cost import REST_COPIES, InFlight, RequestLimits
from serving.servables import Servable, ServableManager
from serving.status import ServingError, code_name, invalid_argument
from serving.tensors import INT64_MAX, array_to_json, json_to_array

_MODEL = r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
_GET = re.compile(_MODEL + r"(?P<metadata>/metadata)?")
_POST = re.compile(_MODEL + r":(?P<verb>predict|classify|regress)")


def _instances_to_columns(sig, instances) -> dict:
    """Row format: one input -> a list of values; several -> a list of objects sharing dim 0."""
    if not isinstance(instances, list) or not instances:
        raise invalid_argument("'instances' must be a non-empty list")
    names = sorted(sig.inputs)
    named = all(isinstance(i, dict) and "b64" not in i for i in instances)
    if len(names) == 1 and not named:
        columns = {names[0]: instances}
    elif named:
        keys = set(instances[0])
        if any(set(i) != keys for i in instances):
            raise invalid_argument("Failed to process element: every instance must have the same keys")
        columns = {k: [i[k] for i in instances] for k in keys}
    else:
        raise invalid_argument("The signature has several inputs: each instance must be an object keyed by input name")
    return columns


def _inputs_to_columns(sig, inputs) -> dict:
    """Columnar format: one input -> its value; several -> an object keyed by input name."""
    names = sorted(sig.inputs)
    if isinstance(inputs, dict) and "b64" not in inputs:
        columns = inputs
    elif len(names) == 1:
        columns = {names[0]: inputs}
    else:
        raise invalid_argument("The signature has several inputs: 'inputs' must be an object keyed by input name")
    return columns


def rest_predict(servable: Servable, body: dict, limits: RequestLimits | None = None) -> dict:
    if not isinstance(body, dict):
        raise invalid_argument("the request body must be a JSON object")
    signature_name = body.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise invalid_argument(f"'signature_name' must be a string, got {type(signature_name).__name__}")
    sig_name, sig = predict.signature_def(servable, signature_name, rest=True)
    if "instances" in body and "inputs" in body:
        raise invalid_argument("Request body must contain either 'inputs' or 'instances', not both")
    if "instances" in body:
        columns = _instances_to_columns(sig, body["instances"])
    elif "inputs" in body:
        columns = _inputs_to_columns(sig, body["inputs"])
    else:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    predict.check_input_names(sig, list(columns))
    entries = 0
    if limits is not None:
        stop = limits.max_entries or 1 << 62
        for v in columns.values():
            entries += request_cost.json_entries(v, stop - entries)
            request_cost.check_entries(entries, limits)
    arrays = {k: json_to_array(v, k, sig.inputs[k].dtype) for k, v in columns.items()}
    _, outputs = predict.predict_arrays(servable, sig_name, arrays, rest=True, limits=limits, entries=entries)
    if limits is not None and limits.max_response_bytes:
        # at least 2 characters a number ("0,"): an answer certainly too large is refused unwritten
        least = sum(2 * np.asarray(a).size for a in outputs.values())
        if least > limits.max_response_bytes:
            raise predict.response_too_large(least, limits)
    if "instances" in body:
        if len(outputs) == 1:
            return {"predictions": array_to_json(next(iter(outputs.values())), next(iter(outputs)))}
        rows = {k: array_to_json(v, k) for k, v in outputs.items()}
        n = len(next(iter(rows.values())))
        return {"predictions": [{k: rows[k][i] for k in rows} for i in range(n)]}
    if len(outputs) == 1:
        return {"outputs": array_to_json(next(iter(outputs.values())), next(iter(outputs)))}
    return {"outputs": {k: array_to_json(v, k) for k, v in outputs.items()}}


def rest_status(manager: ServableManager, name: str, version: int | None, label: str | None) -> dict:
    if label:
        version = manager.resolve(name, label=label).version
    return {"model_version_status": [
        {"version": str(v), "state": s.state,
         "status": {"error_code": code_name(s.error_code), "error_message": s.error_message}}
        for v, s in manager.version_states(name, version)]}


def rest_metadata(manager: ServableManager, name: str, version: int | None, label: str | None) -> dict:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[predict.SIGNATURE_DEF_FIELD])
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    elif label:
        request.model_spec.version_label = label
    response = predict.metadata(manager, request)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[predict.SIGNATURE_DEF_FIELD].Unpack(sig_map)
    return {"model_spec": {"name": name, "signature_name": "", "version": str(response.model_spec.version.value)},
            "metadata": {"signature_def": json_format.MessageToDict(sig_map)}}


@dataclass(frozen=True)
class RestLimits(HttpLimits):
    request: RequestLimits | None = None  # entries, model memory, response size (None: unchecked)


JSON_ENVELOPE_VALUES = 64  # the envelope ("inputs", "signature_name", ...) may hold a few values


def _parse_version(text: str | None) -> int | None:
    if text is None:
        return None
    if len(text) > 19 or int(text) > INT64_MAX:
        raise invalid_argument(f"Failed to convert version: {text[:32]}{'...' if len(text) > 32 else ''} "
                               f"is not an int64")
    return int(text)



def _decode(body: bytes):
    try:
        return JSON_DECODER.decode(body.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, NaN, numbers of 5,000 digits
        raise invalid_argument(f"JSON Parse error: {str(e)[:200]}") from None


class RestApp(JsonApp):
    """TF Serving's /v1 routes over the ServableManager."""

    def __init__(self, manager: ServableManager, limits: RestLimits, inflight: InFlight | None = None):
        super().__init__(limits)
        self.manager, self.inflight = manager, inflight

    def refuse_from_headers(self, method: str, target: str) -> tuple[int, str] | None:
        m = _POST.fullmatch(target.split("?", 1)[0])
        if method != "POST" or not m or m["verb"] != "predict":
            return None
        try:
            self.manager.resolve(m["name"], version=_parse_version(m["version"]), label=m["label"])
        except ServingError as e:
            self.count("model_not_served")
            return e.http_status, e.message
        return None

    def _predict(self, servable: Servable, body: bytes) -> dict:
        return rest_predict(servable, _decode(body), self.limits.request)

    def scan_problem(self, deepest: int, values: int) -> str | None:
        problem = super().scan_problem(deepest, values)
        request = self.limits.request
        if not problem and request and request.max_entries and values - JSON_ENVELOPE_VALUES > request.max_entries:
            return (f"the request holds at least {values - JSON_ENVELOPE_VALUES} entries (values and lists, empty "
                    f"ones included), more than the limit of {request.max_entries} (--max_request_elements)")
        return problem

    def answer(self, method: str, target: str, body: bytes, scanned: tuple[int, int] | None = None
               ) -> tuple[int, bytes]:
        """(status, JSON bytes): encoded here, in the pool, so the event loop never encodes an answer.
        scanned: the body's (depth, values) when it was scanned as it arrived."""
        status, payload = self._answer(method, target, body, scanned)
        data = json.dumps(payload).encode()
        limit = self.limits.request.max_response_bytes if self.limits.request else 0
        if limit and len(data) > limit:
            self.count("response_too_large")
            error = predict.response_too_large(len(data), self.limits.request)
            return 413, json.dumps({"error": error.message}).encode()
        return status, data

    def _answer(self, method: str, target: str, body: bytes, scanned: tuple[int, int] | None) -> tuple[int, dict]:
        path = target.split("?", 1)[0]
        try:
            if method == "GET":
                m = _GET.fullmatch(path)
                if not m:
                    return 404, {"error": f"Malformed request: GET {path[:200]}"}
                version = _parse_version(m["version"])
                if m["metadata"]:
                    return 200, rest_metadata(self.manager, m["name"], version, m["label"])
                return 200, rest_status(self.manager, m["name"], version, m["label"])
            if method != "POST":
                return 405, {"error": f"Malformed request: {method[:20]} is not GET or POST"}
            m = _POST.fullmatch(path)
            if not m:
                return 404, {"error": f"Malformed request: POST {path[:200]}"}
            version = _parse_version(m["version"])
            if m["verb"] != "predict":
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{m['verb']} is not supported: "
                                                               "the served signatures are predict signatures")
            # The model first: a request for a model that is not served costs no decoding.
            servable = self.manager.resolve(m["name"], version=version, label=m["label"])
            problem = self.scan_problem(*(scanned or json_scan(body)))
            if problem:
                raise invalid_argument(problem)
            if self.inflight is None:
                return 200, self._predict(servable, body)
            with self.inflight.hold(len(body) * REST_COPIES):
                return 200, self._predict(servable, body)
        except ServingError as e:
            if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max_response_bytes" in e.message:
                self.count("response_too_large")
                return 413, {"error": e.message}
            return e.http_status, {"error": e.message}



def RestServer(manager: ServableManager, host: str, port: int, limits: RestLimits,  # noqa: N802
               inflight: InFlight | None = None) -> HttpServer:
    """The /v1 API of `manager` on host:port (bound now; .start() serves)."""
    return HttpServer(RestApp(manager, limits, inflight), host, port)
