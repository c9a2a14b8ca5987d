"""HTTP/1.1 for a JSON API, hardened: Tornado's server on its own event-loop thread, answers computed
in a pool of threads. The model server's REST API (serving/rest_api.py) and the recall service's
(retrieval/service/rest.py) are apps on it; an app says what a request costs and how it is answered.

What a request may cost is bounded before it is read or decoded: max_request_bytes (413 from the
headers, or as soon as a chunked body passes it; no 100 Continue before), timeout_seconds for a
request's headers, its body and an idle kept-alive connection, max_connections open at once (at the
cap the connection idle longest, else the one sending its request longest, makes room; when every
one is waiting for its answer the new one is closed), and the
app's own scan of a large body as it arrives (nesting, values). A client that half-closes after its
request still gets the answer. Every response is written with its headers in one send on a
TCP_NODELAY socket (no 40 ms Nagle stalls). Tornado's chunked-body reader is replaced when the first
server starts (install_chunked_reader), not on import.
"""
from __future__ import annotations

import abc
import json
import logging
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tornado import http1connection, httputil, iostream, netutil
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from serving.json_scan import SMALL_BODY, JsonScan
from serving.memory import return_freed_memory

log = logging.getLogger("serving")

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


_installed = False


def install_chunked_reader() -> None:
    """Tornado's HTTP1Connection reads chunked bodies with _read_chunked_body above from now on (in this
    process). Called by HttpServer.start: importing this module changes nothing."""
    global _installed
    if not _installed:
        http1connection.HTTP1Connection._read_chunked_body = _read_chunked_body
        _installed = True


class _HalfClosableStream(iostream.IOStream):
    """Tornado closes a connection as soon as a read sees the end of the client's data. A client that
    sent its whole request and then shut down its sending side (legal HTTP, done by some clients and
    proxies) still waits for the answer: while an answer is being computed, that end only stops the
    listening for reads; once the answer is written, the next read sees the end and closes.

    Also what the connection cap needs: whether a request is in progress, and since when it is idle."""

    answer_pending = False
    busy = False
    idle_since = 0.0
    busy_since = 0.0  # when its request began

    def _handle_events(self, fd, events) -> None:
        if not (self.answer_pending and events & IOLoop.READ and self._read_future is None and self._peer_done()):
            super()._handle_events(fd, events)
            return
        super()._handle_events(fd, events & ~IOLoop.READ)
        if not self.closed() and self._state is not None and self._state & IOLoop.READ:
            self._state &= ~IOLoop.READ  # until the answer is written: no busy loop on the readable end
            self.io_loop.update_handler(self.fileno(), self._state)

    def _check_max_bytes(self, delimiter, size: int) -> None:
        """Tornado closes the connection at once when a delimited read runs past its limit (the header
        block, a chunk-size line); TF Serving answers first, and so does this: 431 for a header block
        over --max_header_size-like limits, 400 for an overlong framing line. Then Tornado closes."""
        try:
            super()._check_max_bytes(delimiter, size)
        except iostream.UnsatisfiableReadError:
            headers = isinstance(delimiter, re.Pattern)  # the header read is the only regex read
            status = b"431 Request Header Fields Too Large" if headers else b"400 Bad Request"
            try:
                self.socket.send(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass  # the peer is gone: nothing to tell
            raise

    def _peer_done(self) -> bool:
        try:
            return self.socket.recv(1, socket.MSG_PEEK) == b""
        except OSError:  # nothing to read yet, or an error that Tornado's own read will report
            return False


@dataclass(frozen=True)
class HttpLimits:
    max_request_bytes: int = 16 * 1024 * 1024
    max_json_depth: int = 32
    timeout_seconds: float = 30.0   # headers, body, and an idle kept-alive connection
    max_connections: int = 1024
    threads: int = 16


def no_constants(name: str):
    raise ValueError(f"{name} is not JSON (numbers are finite)")


def _json_float(text: str) -> float:
    from schema.numbers import NumberError, nonzero_float

    try:
        return nonzero_float(text)
    except NumberError as e:
        raise ValueError(str(e)) from None


# one decoder (json.loads(**kw) builds one a call); NaN and Infinity refused, 1e-400 too (not a silent 0)
JSON_DECODER = json.JSONDecoder(parse_constant=no_constants, parse_float=_json_float)


# Lingering close after an early 413: the rest of the body is read and dropped for this long, up to
# this much, before the connection closes. Closing with unread input makes the kernel send a reset,
# and a reset can destroy the 413 in the client's buffer before the client reads it.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20


class _Request(httputil.HTTPMessageDelegate):
    """One HTTP request (Tornado's HTTPMessageDelegate protocol): the body is kept only while it stays
    within the limit; the answer is computed in the pool and written from the event loop."""

    def __init__(self, app: JsonApp, connection):
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
        """A request the app can refuse from its method and path (a model that is not served) is
        answered from the headers: its body is never read into memory or decoded, whatever it holds."""
        refusal = self.app.refuse_from_headers(self.method, self.path)
        if refusal is not None:
            # the body is within max_request_bytes: read to its end and dropped, so the client,
            # still sending, reads the answer instead of a reset
            self._drop_limit = self.app.limits.max_request_bytes
            self._refuse(*refusal, linger)

    def _stream_state(self, busy: bool, answer_pending: bool = False) -> None:
        stream = getattr(self.connection, "stream", None)
        if isinstance(stream, _HalfClosableStream):
            if busy and not stream.busy:
                stream.busy_since = time.monotonic()
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
            429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented",
            503: "Service Unavailable", 504: "Gateway Timeout"}


class JsonApp(httputil.HTTPServerConnectionDelegate, abc.ABC):
    """Routes and answers requests (in the pool's threads); counts what it refused. An app defines
    `answer`, and may refuse a request early from its headers or from its body's scan."""

    def __init__(self, limits: HttpLimits):
        self.limits = limits
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

    def refuse_from_headers(self, method: str, target: str) -> tuple[int, str] | None:
        """(status, message) for a POST refused before its body is read; None: read it."""
        return None

    def scan_problem(self, deepest: int, values: int) -> str | None:
        """Why a JSON body of this depth and value count is refused before it is decoded (None: it is not)."""
        if deepest > self.limits.max_json_depth:
            return (f"JSON Parse error: nesting depth {deepest} exceeds the limit of {self.limits.max_json_depth} "
                    f"(--max_json_depth)")
        return None

    @abc.abstractmethod
    def answer(self, method: str, target: str, body: bytes, scanned: tuple[int, int] | None = None
               ) -> tuple[int, bytes]:
        """(status, JSON bytes), computed in the pool. scanned: the body's (depth, values) when it was
        scanned as it arrived."""


class HttpServer:
    """The app's HTTP/1.1 server on its own event-loop thread. The port is bound in the constructor
    (port 0 picks a free one: .port)."""

    def __init__(self, app: JsonApp, host: str, port: int):
        self.app, self.limits = app, app.limits
        self._sockets = netutil.bind_sockets(port, address=host, family=socket.AF_INET6 if ":" in host
                                             else socket.AF_INET)
        self.port = self._sockets[0].getsockname()[1]
        self._thread = None
        self._ready = threading.Event()
        self._server = None

    def start(self) -> HttpServer:
        install_chunked_reader()
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
    complete) or, when none is idle, of the one that has been sending its request longest (a slow
    body: slowloris), so neither idle nor slow sockets can lock new clients out; only when every
    connection is waiting for its answer is the new one closed. Each accepted socket gets TCP_NODELAY."""

    def initialize(self, app: JsonApp, limits: HttpLimits):
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
        if idle:
            victim, why = min(idle, key=lambda s: s.idle_since), "idle_evicted"
        else:
            sending = [s for s in self._streams if not s.answer_pending]
            if not sending:
                return False
            victim, why = min(sending, key=lambda s: s.busy_since), "slow_evicted"
        self._streams.pop(victim, None)
        victim.close()
        self._app.count(why)
        return True

    def on_close(self, server_conn):
        self._streams.pop(server_conn.stream, None)
        super().on_close(server_conn)
