"""gRPC front end of the recall service: dssm.recall.v1.RecallService (recall_service.proto) over
RecallCore. Messages become the plain values the core takes; a ServingError becomes its status."""
from __future__ import annotations

import logging

import grpc

from retrieval.service import protos
from retrieval.service.core import MAX_POSTS_PER_CALL, RecallCore
from serving.status import grpc_status_codes, invalid_argument

pb2, pb2_grpc = protos.load()
log = logging.getLogger("retrieval.service")


_status_codes = grpc_status_codes(log)


def _query(query) -> dict:
    which = query.WhichOneof("user")
    if which == "features":
        return {"features": dict(query.features.values)}
    if which == "log_line":
        return {"log_line": query.log_line}
    return {}  # refused by the core, with its index


def _stored(value) -> str:
    return "" if value is None else str(value)


class RecallServicer(pb2_grpc.RecallServiceServicer):
    def __init__(self, core: RecallCore):
        self.core = core

    @_status_codes
    def Recall(self, request, context):
        filters: dict[str, list[str]] = {}
        for f in request.filters:
            filters.setdefault(f.field, []).extend(f.values)
        answer = self.core.recall([_query(q) for q in request.queries], request.k, filters or None,
                                  request.keep_read, request.new_posts)
        response = pb2.RecallResponse(model_version=answer["model_version"] or 0, generation=answer["generation"])
        for a in answer["answers"]:
            out = response.answers.add(history_length=a["history_length"])
            for h in a["hits"]:
                out.hits.add(id=str(h["id"]), score=h["score"],
                             fields={k: _stored(v) for k, v in h.items() if k not in ("id", "score")})
        return response

    @_status_codes
    def AddItems(self, request_iterator, context):
        item_id = self.core.spec.item_id
        posts = []
        for message in request_iterator:
            if len(posts) + len(message.posts) > MAX_POSTS_PER_CALL:
                raise invalid_argument(f"more than {MAX_POSTS_PER_CALL:,} posts in one call: split them")
            posts += [{item_id: p.post_id, "values": list(p.values), **dict(p.fields)} for p in message.posts]
        result = self.core.add_items(posts)
        return pb2.AddItemsResponse(added=result["added"], seconds=result["seconds"],
                                    generation=result["generation"] or "", model_version=result["model_version"] or 0)

    @_status_codes
    def Status(self, request, context):
        s = self.core.status()
        return pb2.StatusResponse(generation=s["generation"], model_version=s["model_version"] or 0,
                                  item_count=s["item_count"], item_store=pb2.ItemStoreStatus(**s["item_store"]),
                                  user_tower=s["user_tower"])


def add_service(server: grpc.Server, core: RecallCore) -> None:
    pb2_grpc.add_RecallServiceServicer_to_server(RecallServicer(core), server)
