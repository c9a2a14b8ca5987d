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
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2
from tornado import http1connection, httputil, iostream, netutil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from serving import predict, request_cost
from serving.json_scan import SMALL_BODY, JsonScan, json_scan
from serving.memory import return_freed_memory
from serving.request_cost import RequestLimits
from serving.servables import Servable, ServableManager
from serving.status import ServingError, code_name, invalid_argument
from serving.tensors import INT64_MAX, array_to_json, json_to_array

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


_CHUNK_SIZE_LINE = re.compile(rb"([0-9a-fA-F]{1,15})[ \t]*(?:;[^\r\n]*)?\r\n")  # size, extensions
MAX_CHUNK_LINE_BYTES = 4096
MAX_TRAILER_BYTES = 16 * 1024


async def _read_chunked_body(self, delegate) -> None:
    """HTTP/1.1 chunked framing (RFC 9112 7.1) for Tornado's HTTP1Connection, whose own reader refuses
    chunk extensions ("5;name=value") and trailer fields, and checks the CRLF after a chunk with
    `assert` (the connection dropped with no answer). Extensions and trailers are read and ignored;
    every framing error is HTTPInputError, which Tornado answers 400 and closes."""
    total = 0
    while True:
        line = await self.stream.read_until(b"\r\n", max_bytes=MAX_CHUNK_LINE_BYTES)
        m = _CHUNK_SIZE_LINE.fullmatch(line)
        if not m:
            raise httputil.HTTPInputError("invalid chunk size line")
        size = int(m[1], 16)
        if size == 0:
            trailers = 0
            while (field := await self.stream.read_until(b"\r\n", max_bytes=MAX_TRAILER_BYTES)) != b"\r\n":
                trailers += len(field)
                if trailers > MAX_TRAILER_BYTES or b":" not in field:
                    raise httputil.HTTPInputError("invalid trailer section")
            return
        total += size
        if total > self._max_body_size:
            raise httputil.HTTPInputError("chunked body too large")
        left = size
        while left:
            chunk = await self.stream.read_bytes(min(left, self.params.chunk_size), partial=True)
            left -= len(chunk)
            if not self._write_finished or self.is_client:
                ret = delegate.data_received(chunk)
                if ret is not None:
                    await ret
        if await self.stream.read_bytes(2) != b"\r\n":
            raise httputil.HTTPInputError("a chunk does not end with CRLF")


http1connection.HTTP1Connection._read_chunked_body = _read_chunked_body


class _HalfClosableStream(iostream.IOStream):
    """Tornado closes a connection as soon as a read sees the end of the client's data. A client that
    sent its whole request and then shut down its sending side (legal HTTP, done by some clients and
    proxies) still waits for the answer: while an answer is being computed, that end only stops the
    listening for reads; once the answer is written, the next read sees the end and closes.

    Also what the connection cap needs: whether a request is in progress, and since when it is idle."""

    answer_pending = False
    busy = False
    idle_since = 0.0

    def _handle_events(self, fd, events) -> None:
        if not (self.answer_pending and events & IOLoop.READ and self._read_future is None and self._peer_done()):
            super()._handle_events(fd, events)
            return
        super()._handle_events(fd, events & ~IOLoop.READ)
        if not self.closed() and self._state is not None and self._state & IOLoop.READ:
            self._state &= ~IOLoop.READ  # until the answer is written: no busy loop on the readable end
            self.io_loop.update_handler(self.fileno(), self._state)

    def _peer_done(self) -> bool:
        try:
            return self.socket.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # nothing to read yet, or an error that Tornado's own read will report
            return False


@dataclass(frozen=True)
class RestLimits:
    max_request_bytes: int = 16 * 1024 * 1024
    request: RequestLimits | None = None  # entries, model memory, response size (None: unchecked)
    max_json_depth: int = 32
    timeout_seconds: float = 30.0   # headers, body, and an idle kept-alive connection
    max_connections: int = 1024
    threads: int = 16


JSON_ENVELOPE_VALUES = 64  # the envelope ("inputs", "signature_name", ...) may hold a few values


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON (numbers are finite)")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)  # one decoder: json.loads(**kw) builds one a call


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
        self._drop_limit = LINGER_BYTES  # how much of a refused body is read and dropped before closing
        self.scan = None                 # a large body's JSON scan, fed as it arrives

    def headers_received(self, start_line, headers):
        self.method, self.path = start_line.method, start_line.path
        self._stream_state(busy=True)
        length = headers.get("Content-Length")
        limit = self.app.limits.max_request_bytes
        # A malformed Content-Length, or copies that differ, are left to Tornado (400 and close); a
        # too large one (also repeated: "9, 9") is refused from the headers, before any of the body
        # is read (and before a 100 Continue).
        values = {v.strip() for v in length.split(",")} if length is not None else set()
        if len(values) == 1 and (value := values.pop()).isdigit() and int(value) > limit:
            # A client that asked for 100 Continue sends no body: answer and finish at once.
            self._too_large(f"request of {int(value)} bytes exceeds the limit of {limit} bytes",
                            linger=headers.get("Expect") != "100-continue")
        elif self.method == "POST":
            self._model_first(headers.get("Expect") != "100-continue")
        return None

    def _model_first(self, linger: bool) -> None:
        """A prediction for a model (version, label) that is not served is answered from the headers:
        its body is never read into memory or decoded, whatever it holds."""
        m = _POST.fullmatch(self.path.split("?", 1)[0])
        if not m or m["verb"] != "predict":
            return
        try:
            self.app.manager.resolve(m["name"], version=_parse_version(m["version"]), label=m["label"])
        except ServingError as e:
            self.app.count("model_not_served")
            # the body is within --max_request_bytes: read to its end and dropped, so the client,
            # still sending, reads the answer instead of a reset
            self._drop_limit = self.app.limits.max_request_bytes
            self._refuse(e.http_status, e.message, linger)

    def _stream_state(self, busy: bool, answer_pending: bool = False) -> None:
        stream = getattr(self.connection, "stream", None)
        if isinstance(stream, _HalfClosableStream):
            stream.busy, stream.answer_pending = busy, answer_pending
            if not busy:
                stream.idle_since = time.monotonic()

    def data_received(self, chunk):
        if self.answered:
            self._dropped += len(chunk)
            if self._linger is not None and self._dropped > self._drop_limit:
                self._close()
            return None
        self.body += chunk
        if len(self.body) > self.app.limits.max_request_bytes:
            self._too_large(f"request body exceeds the limit of {self.app.limits.max_request_bytes} bytes")
        elif len(self.body) >= SMALL_BODY and self.method == "POST":
            self._scan_as_it_arrives(chunk)
        return None

    def _scan_as_it_arrives(self, chunk: bytes) -> None:
        """A large body is scanned piece by piece as it arrives: one that nests too deep or holds too
        many values is refused before the rest of it is read."""
        if self.scan is None:
            self.scan = JsonScan()
            self.scan.feed(bytes(self.body))
        else:
            self.scan.feed(chunk)
        problem = self.app.scan_problem(self.scan.deepest, self.scan.values)
        if problem:
            self.app.count("refused_while_read")
            self._drop_limit = self.app.limits.max_request_bytes
            self._refuse(400, problem)

    def _too_large(self, message: str, linger: bool = True) -> None:
        self.app.count("too_large")
        self._refuse(413, message, linger)

    def _refuse(self, status: int, message: str, linger: bool = True) -> None:
        """Answers before the body is read; the rest of the body is dropped (lingering close)."""
        self.body = bytearray()
        self._write(status, json.dumps({"error": message}).encode(), finish=not linger)
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
        self._stream_state(busy=True, answer_pending=True)
        scanned = (self.scan.deepest, self.scan.values) if self.scan is not None else None
        future = self.app.pool.submit(self.app.answer, self.method, self.path, body, scanned)
        loop = self.app.loop
        future.add_done_callback(lambda f: loop.add_callback(self._done, f))

    def _done(self, future) -> None:
        try:
            status, data = future.result()
        except Exception as e:  # noqa: BLE001 - the answer itself failed: a 500 with the reason
            log.exception("REST request failed")
            status, data = 500, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
        self._write(status, data)

    def _write(self, status: int, data: bytes, finish: bool = True) -> None:
        if self.answered or self.connection is None:
            return
        self.answered = True
        headers = httputil.HTTPHeaders({"Content-Type": "application/json", "Content-Length": str(len(data))})
        try:
            self.connection.write_headers(httputil.ResponseStartLine("HTTP/1.1", status, _REASONS.get(status, "")),
                                          headers, data)  # headers and body in one write
            if finish:
                self._stream_state(busy=False)
                self.connection.finish()
        except Exception:  # noqa: BLE001 - the client went away
            log.debug("REST client closed before the answer")

    def on_connection_close(self):
        if self._linger is not None:
            self.app.loop.remove_timeout(self._linger)
            self._linger = None
        self.connection = None
        held, self.body = len(self.body), bytearray()
        if held > LINGER_BYTES:  # a large body of a client that went away: its memory back to the system
            return_freed_memory()


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

    def scan_problem(self, deepest: int, values: int) -> str | None:
        """Why a JSON body of this depth and value count is refused before it is decoded (None: it is not)."""
        if deepest > self.limits.max_json_depth:
            return (f"JSON Parse error: nesting depth {deepest} exceeds the limit of {self.limits.max_json_depth} "
                    f"(--max_json_depth)")
        request = self.limits.request
        if request and request.max_entries and values - JSON_ENVELOPE_VALUES > request.max_entries:
            return (f"the request holds at least {values - JSON_ENVELOPE_VALUES} entries (values and lists, empty "
                    f"ones included), more than the limit of {request.max_entries} (--max_request_elements)")
        return None

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
            try:
                parsed = _DECODER.decode(body.decode("utf-8"))
            except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, NaN, numbers of 5,000 digits
                raise invalid_argument(f"JSON Parse error: {str(e)[:200]}") from None
            return 200, rest_predict(servable, parsed, self.limits.request)
        except ServingError as e:
            if e.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max_response_bytes" in e.message:
                self.count("response_too_large")
                return 413, {"error": e.message}
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


READ_CHUNK_BYTES = 1 << 20  # a body reaches _Request in pieces of up to 1 MiB (Tornado's default: 64 KiB)


class _LimitedHTTPServer(HTTPServer):
    """Tornado's HTTP server with at most max_connections open. At the cap a new connection takes the
    place of the connection idle longest (no request in progress: kept alive, or headers not yet
    complete), so idle sockets cannot lock new clients out; only when every connection is busy is
    the new one closed. Each accepted socket gets TCP_NODELAY."""

    def initialize(self, app: RestApp, limits: RestLimits):
        super().initialize(app, no_keep_alive=False, xheaders=False, chunk_size=READ_CHUNK_BYTES,
                           max_body_size=1 << 62,  # enforced by _Request, which answers 413 itself
                           max_header_size=64 * 1024, idle_connection_timeout=limits.timeout_seconds,
                           body_timeout=limits.timeout_seconds)
        self._app, self._max_connections = app, limits.max_connections
        self._streams: dict[iostream.IOStream, None] = {}  # open connections, oldest first

    def handle_stream(self, stream, address):
        if len(self._streams) >= self._max_connections and not self._evict_idle():
            self._app.count("connection_limit")
            stream.close()
            return
        stream.__class__ = _HalfClosableStream  # same state, EOF and idle handling of its own
        stream.idle_since = time.monotonic()
        self._streams[stream] = None
        stream.set_nodelay(True)
        super().handle_stream(stream, address)

    def _evict_idle(self) -> bool:
        idle = [s for s in self._streams if not s.busy]
        if not idle:
            return False
        oldest = min(idle, key=lambda s: s.idle_since)
        self._streams.pop(oldest, None)
        oldest.close()
        self._app.count("idle_evicted")
        return True

    def on_close(self, server_conn):
        self._streams.pop(server_conn.stream, None)
        super().on_close(server_conn)
