"""REST front end of the recall service, on the model server's hardened HTTP transport:

    POST /v1/recall   {"features": {...}} | {"log_line": "..."} | {"instances": [either, ...]},
                      "k", "filters": {"topic_id": ["3"]}, "keep_read", "new_posts"
                      -> {"hits": [...], "history_length", "model_version", "generation"}
                         ("instances": {"answers": [{"hits", "history_length"}, ...], "model_version", "generation"})
    POST /v1/items    {"posts": [{"post_id", "values", <item features>}, ...]} (or the bare list)
                      -> {"added", "seconds", "generation", "model_version"}
    GET  /v1/status   -> {"generation", "model_version", "item_count", "item_store", "user_tower"}

Errors are {"error": message} with the HTTP status of the gRPC code (400, 404, 429, 503, ...).
"""
from __future__ import annotations

import json
import logging

import grpc

from retrieval.service.core import RecallCore
from serving.http_transport import JSON_DECODER, HttpLimits, JsonApp
from serving.json_scan import json_scan
from serving.status import ServingError, invalid_argument

log = logging.getLogger("retrieval.service")

# A JSON value costs ~56 bytes as a Python object: the values a body may hold are counted before it
# is decoded (as it arrives, for a large one).
MAX_BODY_VALUES = 1_000_000      # /v1/items: 1,300 posts of 768 values
MAX_RECALL_VALUES = 100_000      # /v1/recall: users' features are texts, a few values each

_HTTP = {grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.INTERNAL: 500}
_ROUTES = {"/v1/recall": "POST", "/v1/items": "POST", "/v1/status": "GET"}
_RECALL_KEYS = {"features", "log_line", "instances", "k", "filters", "keep_read", "new_posts"}


def _http_status(e: ServingError) -> int:
    return _HTTP.get(e.code, e.http_status)


class RecallRestApp(JsonApp):
    def __init__(self, core: RecallCore, limits: HttpLimits):
        super().__init__(limits)
        self.core = core

    def scan_problem(self, deepest: int, values: int) -> str | None:
        problem = super().scan_problem(deepest, values)
        if not problem and values > MAX_BODY_VALUES:
            return f"the body holds at least {values:,} JSON values, more than {MAX_BODY_VALUES:,}"
        return problem

    def answer(self, method: str, target: str, body: bytes, scanned: tuple[int, int] | None = None
               ) -> tuple[int, bytes]:
        path = target.split("?", 1)[0]
        if path not in _ROUTES:
            return 404, json.dumps({"error": f"no such path: {path[:200]} (the API: POST /v1/recall, "
                                             "POST /v1/items, GET /v1/status)"}).encode()
        if method != _ROUTES[path]:
            return 405, json.dumps({"error": f"{path} takes {_ROUTES[path]}, not {method[:20]}"}).encode()
        try:
            status, payload = 200, self._route(path, body, scanned)
        except ServingError as e:
            if e.code != grpc.StatusCode.INVALID_ARGUMENT:
                log.warning("%s %s: %s: %s", method, target[:100], e.code.name, e.message)
            status, payload = _http_status(e), {"error": e.message}
        return status, json.dumps(payload).encode()

    def _route(self, path: str, body: bytes, scanned) -> dict:
        if path == "/v1/status":
            return self.core.status()
        deepest, values = scanned or json_scan(body)
        problem = self.scan_problem(deepest, values)
        if not problem and path == "/v1/recall" and values > MAX_RECALL_VALUES:
            problem = f"the body holds at least {values:,} JSON values, more than {MAX_RECALL_VALUES:,} for a recall"
        if problem:
            raise invalid_argument(problem)
        try:
            request = JSON_DECODER.decode(body.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, NaN, numbers of 5,000 digits
            raise invalid_argument(f"JSON Parse error: {str(e)[:200]}") from None
        if path == "/v1/items":
            posts = request.get("posts") if isinstance(request, dict) and set(request) == {"posts"} else request
            return self.core.add_items(posts)
        return self._recall(request)

    def _recall(self, request) -> dict:
        if not isinstance(request, dict):
            raise invalid_argument("the body must be a JSON object")
        unknown = sorted(set(request) - _RECALL_KEYS)
        if unknown:
            raise invalid_argument(f"unknown key(s) {[str(u)[:40] for u in unknown[:5]]}; a recall takes "
                                   f"{sorted(_RECALL_KEYS)}")
        users = [k for k in ("features", "log_line", "instances") if k in request]
        if len(users) != 1:
            raise invalid_argument("give exactly one of \"features\", \"log_line\" or \"instances\"")
        if "k" not in request:
            raise invalid_argument("\"k\" is missing: how many posts to recall")
        many = users[0] == "instances"
        queries = request["instances"] if many else [{users[0]: request[users[0]]}]
        if many and not isinstance(queries, list):
            raise invalid_argument("\"instances\" must be a list of {\"features\": ...} or {\"log_line\": ...}")
        answer = self.core.recall(queries, request["k"], request.get("filters"), request.get("keep_read", False),
                                  request.get("new_posts", 0))
        if many:
            return answer
        return {**answer.pop("answers")[0], **answer}
