"""ServingError: a gRPC status code and TF Serving's message, shared by the gRPC and REST front ends."""
from __future__ import annotations

import functools
import logging

import grpc

MESSAGE_LIMIT = 1024  # TF Serving cuts longer messages and appends "...TRUNCATED"

# REST status for each code, as TF Serving's HTTP handler maps them.
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = truncate(message)

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.code, 500)


def truncate(message: str) -> str:
    return message if len(message) <= MESSAGE_LIMIT else message[:MESSAGE_LIMIT] + "...TRUNCATED"


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def code_name(code: grpc.StatusCode) -> str:
    """"OK", "NOT_FOUND", ... as in TF Serving's REST status bodies."""
    return code.name


def grpc_status_codes(log: logging.Logger):
    """A decorator for gRPC servicer methods: a ServingError becomes its status, anything unexpected
    INTERNAL (logged to `log`); the server keeps running. One rule for every gRPC front end."""
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, request, context):
            try:
                return method(self, request, context)
            except ServingError as e:
                context.abort(e.code, e.message)
            except Exception as e:
                log.exception("%s failed", method.__name__)
                context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")
        return wrapper
    return decorate
