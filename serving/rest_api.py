"""REST front end, TF Serving's /v1 API:

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]             -> model version status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata    -> signature defs
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict     -> row ("instances") or columnar ("inputs")

Errors are {"error": message} with TF Serving's HTTP status for the code.

HTTP is Tornado's (chunked bodies, Content-Length validation, keep-alive), on its own event-loop
thread; predictions run in a pool of --rest_api_num_threads threads. What a request may cost is
bounded before it is read or decoded: --max_request_bytes (413 from the headers, or as soon as a
chunked body passes it; no 100 Continue before), --rest_api_timeout_in_ms for a request's headers,
its body and an idle kept-alive connection, --rest_api_max_connections open at once (more are
closed on accept), --max_json_depth of nesting, and --max_request_elements tensor elements. Every
response is written with its headers in one send on a TCP_NODELAY socket (no 40 ms Nagle stalls).
"""
from __future__ import annotations

import json
import logging
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2
from tornado import http1connection, httputil, netutil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from serving import predict
from serving.servables import ServableManager
from serving.status import ServingError, code_name, invalid_argument
from serving.tensors import INT64_MAX, array_to_json, count_elements, json_to_array

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


def rest_predict(manager: ServableManager, name: str, version: int | None, label: str | None, body: dict,
                 max_elements: int = 0) -> dict:
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
    if max_elements:
        total = sum(count_elements(v, max_elements + 1) for v in columns.values())
        if total > max_elements:
            raise invalid_argument(f"the request holds more than {max_elements} tensor elements "
                                   f"(--max_request_elements)")
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


def _chunk_framing_is_a_400() -> None:
    """Tornado 6.5 checks the CRLF after each chunk with `assert`: a malformed chunked body drops the
    connection with an AssertionError in the log instead of answering 400 (its other framing errors
    are HTTPInputError, answered 400 and closed). The same check, as the 400 it should be."""
    original = http1connection.HTTP1Connection._read_chunked_body

    async def read_chunked_body(self, delegate):
        try:
            return await original(self, delegate)
        except AssertionError:
            raise httputil.HTTPInputError("a chunk does not end with CRLF") from None

    http1connection.HTTP1Connection._read_chunked_body = read_chunked_body


_chunk_framing_is_a_400()


@dataclass(frozen=True)
class RestLimits:
    max_request_bytes: int = 16 * 1024 * 1024
    max_elements: int = 0           # tensor elements per request (0 = no limit)
    max_json_depth: int = 32
    timeout_seconds: float = 30.0   # headers, body, and an idle kept-alive connection
    max_connections: int = 1024
    threads: int = 16


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


def json_depth(body: bytes, chunk: int = 1 << 20) -> int:
    """The deepest nesting of [ and { in a JSON text (strings skipped), in bounded memory and at C
    speed: checked before json.loads, which would recurse once per level."""
    text = _STRING.sub(b'""', body)
    depth = deepest = 0
    for start in range(0, len(text), chunk):
        b = np.frombuffer(text[start:start + chunk], np.uint8)
        steps = np.isin(b, _OPEN).astype(np.int32) - np.isin(b, _CLOSE).astype(np.int32)
        running = np.cumsum(steps) + depth
        if running.size:
            deepest = max(deepest, int(running.max()))
            depth = int(running[-1])
    return deepest


def _parse_version(text: str | None) -> int | None:
    if text is None:
        return None
    if len(text) > 19 or int(text) > INT64_MAX:
        raise invalid_argument(f"Failed to convert version: {text[:32]}{'...' if len(text) > 32 else ''} "
                               f"is not an int64")
    return int(text)


# Lingering close after an early 413: the rest of the body is read and dropped for this long, up to
# this much, before the connection closes. Closing with unread input makes the kernel send a reset,
# and a reset can destroy the 413 in the client's buffer before the client reads it.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20


class _Request(httputil.HTTPMessageDelegate):
    """One HTTP request (Tornado's HTTPMessageDelegate protocol): the body is kept only while it stays
    within the limit; the answer is computed in the pool and written from the event loop."""

    def __init__(self, app: RestApp, connection):
        self.app, self.connection = app, connection
        self.body = bytearray()
        self.answered = False  # an early answer (413) makes the rest of the body irrelevant
        self._linger = None    # the timer that ends a lingering close
        self._dropped = 0

    def headers_received(self, start_line, headers):
        self.method, self.path = start_line.method, start_line.path
        length = headers.get("Content-Length")
        limit = self.app.limits.max_request_bytes
        # A malformed Content-Length is left to Tornado (400 and close); a too large one is refused
        # from the headers, before any of the body is read (and before a 100 Continue).
        if length is not None and length.strip().isdigit() and int(length) > limit:
            # A client that asked for 100 Continue sends no body: answer and finish at once.
            self._too_large(f"request of {int(length)} bytes exceeds the limit of {limit} bytes",
                            linger=headers.get("Expect") != "100-continue")
        return None

    def data_received(self, chunk):
        if self.answered:
            self._dropped += len(chunk)
            if self._linger is not None and self._dropped > LINGER_BYTES:
                self._close()
            return None
        self.body += chunk
        if len(self.body) > self.app.limits.max_request_bytes:
            self._too_large(f"request body exceeds the limit of {self.app.limits.max_request_bytes} bytes")
        return None

    def _too_large(self, message: str, linger: bool = True) -> None:
        self.body = bytearray()
        self.app.count("too_large")
        self._write(413, {"error": message}, finish=not linger)
        if linger and self.connection is not None:
            self._linger = self.app.loop.call_later(LINGER_SECONDS, self._close)

    def _close(self) -> None:
        """Ends a lingering close: whatever is still unread is dropped with the connection."""
        if self._linger is not None:
            self.app.loop.remove_timeout(self._linger)
            self._linger = None
        if self.connection is not None:
            self.connection.close()

    def finish(self):
        if self._linger is not None:  # the rest of an over-limit body has been read: end the 413
            self.app.loop.remove_timeout(self._linger)
            self._linger = None
            try:
                self.connection.finish()
            except Exception:  # noqa: BLE001 - the client went away
                log.debug("REST client closed before the answer")
            return
        if self.answered:
            return
        body, self.body = bytes(self.body), bytearray()
        future = self.app.pool.submit(self.app.answer, self.method, self.path, body)
        loop = self.app.loop
        future.add_done_callback(lambda f: loop.add_callback(self._done, f))

    def _done(self, future) -> None:
        try:
            status, payload = future.result()
        except Exception as e:  # noqa: BLE001 - the answer itself failed: a 500 with the reason
            log.exception("REST request failed")
            status, payload = 500, {"error": f"{type(e).__name__}: {e}"}
        self._write(status, payload)

    def _write(self, status: int, payload: dict, finish: bool = True) -> None:
        if self.answered or self.connection is None:
            return
        self.answered = True
        data = json.dumps(payload).encode()
        headers = httputil.HTTPHeaders({"Content-Type": "application/json", "Content-Length": str(len(data))})
        try:
            self.connection.write_headers(httputil.ResponseStartLine("HTTP/1.1", status, _REASONS.get(status, "")),
                                          headers, data)  # headers and body in one write
            if finish:
                self.connection.finish()
        except Exception:  # noqa: BLE001 - the client went away
            log.debug("REST client closed before the answer")

    def on_connection_close(self):
        if self._linger is not None:
            self.app.loop.remove_timeout(self._linger)
            self._linger = None
        self.connection = None
        self.body = bytearray()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
            429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented", 504: "Gateway Timeout"}


class RestApp(httputil.HTTPServerConnectionDelegate):
    """Routes and answers requests (in the pool's threads); counts what it refused."""

    def __init__(self, manager: ServableManager, limits: RestLimits):
        self.manager, self.limits = manager, limits
        self.pool = ThreadPoolExecutor(max_workers=limits.threads, thread_name_prefix="rest")
        self.loop = None
        self.refused: dict[str, int] = {}
        self._count_lock = threading.Lock()

    def count(self, what: str) -> None:
        with self._count_lock:
            self.refused[what] = self.refused.get(what, 0) + 1

    # Tornado's HTTPServerConnectionDelegate protocol
    def start_request(self, server_conn, request_conn):
        return _Request(self, request_conn)

    def on_close(self, server_conn):
        pass

    def answer(self, method: str, target: str, body: bytes) -> tuple[int, dict]:
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
            depth = json_depth(body)
            if depth > self.limits.max_json_depth:
                raise invalid_argument(f"JSON Parse error: nesting depth {depth} exceeds the limit of "
                                       f"{self.limits.max_json_depth} (--max_json_depth)")
            try:
                parsed = json.loads(body)
            except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, numbers of 5,000 digits
                raise invalid_argument(f"JSON Parse error: {str(e)[:200]}") from None
            return 200, rest_predict(self.manager, m["name"], version, m["label"], parsed, self.limits.max_elements)
        except ServingError as e:
            return e.http_status, {"error": e.message}


class RestServer:
    """Tornado's HTTP/1.1 server on its own event-loop thread. The port is bound in the constructor
    (port 0 picks a free one: .port)."""

    def __init__(self, manager: ServableManager, host: str, port: int, limits: RestLimits):
        self.app = RestApp(manager, limits)
        self.limits = limits
        self._sockets = netutil.bind_sockets(port, address=host, family=socket.AF_INET6 if ":" in host
                                             else socket.AF_INET)
        self.port = self._sockets[0].getsockname()[1]
        self._thread = None
        self._ready = threading.Event()
        self._server = None

    def start(self) -> RestServer:
        self._thread = threading.Thread(target=self._run, daemon=True, name="rest")
        self._thread.start()
        self._ready.wait(30)
        return self

    def _run(self) -> None:
        import asyncio

        asyncio.set_event_loop(asyncio.new_event_loop())
        loop = IOLoop.current()
        self.app.loop = loop
        self._server = _LimitedHTTPServer(self.app, self.limits)
        self._server.add_sockets(self._sockets)
        self._ready.set()
        loop.start()
        loop.close(all_fds=True)

    def stop(self) -> None:
        if self._thread is None:
            return
        loop = self.app.loop

        async def shutdown():
            self._server.stop()
            await self._server.close_all_connections()
            loop.stop()

        loop.add_callback(shutdown)
        self._thread.join(timeout=30)
        self.app.pool.shutdown(wait=False, cancel_futures=True)


class _LimitedHTTPServer(HTTPServer):
    """Tornado's HTTP server with at most max_connections open; each accepted socket gets TCP_NODELAY."""

    def initialize(self, app: RestApp, limits: RestLimits):
        super().initialize(app, no_keep_alive=False, xheaders=False,
                           max_body_size=1 << 62,  # enforced by _Request, which answers 413 itself
                           max_header_size=64 * 1024, idle_connection_timeout=limits.timeout_seconds,
                           body_timeout=limits.timeout_seconds)
        self._app, self._max_connections, self._open = app, limits.max_connections, 0

    def handle_stream(self, stream, address):
        if self._open >= self._max_connections:
            self._app.count("connection_limit")
            stream.close()
            return
        self._open += 1
        stream.set_nodelay(True)
        super().handle_stream(stream, address)

    def on_close(self, server_conn):
        self._open -= 1
        super().on_close(server_conn)
