"""REST front end, TF Serving's /v1 API:

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]             -> model version status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata    -> signature defs
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict     -> row ("instances") or columnar ("inputs")

Errors are {"error": message} with TF Serving's HTTP status for the code.
"""
from __future__ import annotations

import json
import logging
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from serving import predict
from serving.servables import ServableManager
from serving.status import ServingError, code_name, invalid_argument
from serving.tensors import array_to_json, json_to_array

log = logging.getLogger("serving")

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


def rest_predict(manager: ServableManager, name: str, version: int | None, label: str | None, body: dict) -> dict:
    servable = manager.resolve(name, version=version, label=label)
    if not isinstance(body, dict):
        raise invalid_argument("the request body must be a JSON object")
    sig_name, sig = predict.signature_def(servable, body.get("signature_name", ""), rest=True)
    if "instances" in body and "inputs" in body:
        raise invalid_argument("Request body must contain either 'inputs' or 'instances', not both")
    if "instances" in body:
        columns = _instances_to_columns(sig, body["instances"])
    elif "inputs" in body:
        columns = _inputs_to_columns(sig, body["inputs"])
    else:
        raise invalid_argument("Missing 'inputs' or 'instances' key")
    predict.check_input_names(sig, list(columns))
    arrays = {k: json_to_array(v, k, sig.inputs[k].dtype) for k, v in columns.items()}
    _, outputs = predict.predict_arrays(servable, sig_name, arrays, rest=True)
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


def make_handler(manager: ServableManager, max_request_bytes: int):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "dssm-model-server"

        def log_message(self, fmt, *args):  # access log at debug level, not on stderr
            log.debug("rest %s " + fmt, self.address_string(), *args)

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, e: ServingError) -> None:
            self._send(e.http_status, {"error": e.message})

        def _route(self, pattern):
            path = self.path.split("?", 1)[0]
            m = pattern.fullmatch(path)
            if not m:
                return None
            version = int(m["version"]) if m["version"] else None
            return m, version

        def do_GET(self):
            routed = self._route(_GET)
            if routed is None:
                return self._send(404, {"error": f"Malformed request: GET {self.path}"})
            m, version = routed
            try:
                if m["metadata"]:
                    return self._send(200, rest_metadata(manager, m["name"], version, m["label"]))
                return self._send(200, rest_status(manager, m["name"], version, m["label"]))
            except ServingError as e:
                return self._error(e)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length > max_request_bytes:
                self.close_connection = True
                return self._send(413, {"error": f"request of {length} bytes exceeds the limit of "
                                                 f"{max_request_bytes} bytes"})
            body = self.rfile.read(length)
            routed = self._route(_POST)
            if routed is None:
                return self._send(404, {"error": f"Malformed request: POST {self.path}"})
            m, version = routed
            try:
                if m["verb"] != "predict":
                    raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{m['verb']} is not supported: "
                                                                   "the served signatures are predict signatures")
                try:
                    parsed = json.loads(body)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise invalid_argument(f"JSON Parse error: {e}") from None
                return self._send(200, rest_predict(manager, m["name"], version, m["label"], parsed))
            except ServingError as e:
                return self._error(e)
            except Exception as e:
                log.exception("REST predict failed")
                return self._send(500, {"error": f"{type(e).__name__}: {e}"})

    return Handler


def make_rest_server(manager: ServableManager, host: str, port: int, max_request_bytes: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(manager, max_request_bytes))
    server.daemon_threads = True
    return server
