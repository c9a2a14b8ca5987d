"""The recall service's handlers, shared by its gRPC and REST front ends: requests are plain values
(dicts and lists, as JSON gives them), answers are dicts, and every refusal is a ServingError whose
gRPC code and HTTP status say whose fault it is (INVALID_ARGUMENT / 400 with the field named; a
Milvus or model-server outage UNAVAILABLE / 503 with the cause).

Every size is checked before any work: the number of users in a request, each feature's text, k, the
filters; the posts of an AddItems call. One Milvus client serves the process (the index and the item
store share it); the user tower is a TF Serving endpoint or a SavedModel in this process.
"""
from __future__ import annotations

import logging
import threading
import time

import grpc

from retrieval.catalog import add_posts
from retrieval.index import GenerationGone, ItemIndexError
from retrieval.recall import Recaller, check_index_matches_model
from serving.examples import ExampleBuilder, FeatureError
from serving.status import ServingError, invalid_argument

log = logging.getLogger("retrieval.service")

MAX_USERS = 256               # users in one Recall request
MAX_FEATURE_BYTES = 64 << 10  # one feature's text: maxlen ids of up to 1 KiB each, with room
MAX_LOG_LINE_BYTES = 256 << 10
MAX_FILTER_FIELDS = 8
MAX_FILTER_VALUES = 1024      # values of one filter field
MAX_FILTER_VALUE_BYTES = 1024
MAX_POSTS_PER_CALL = 10_000   # posts of one AddItems call (768-d: ~30 MB of vectors)
ADD_WAIT_SECONDS = 30.0       # how long an AddItems call waits for the one before it


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


def _text(value, where: str, limit: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise invalid_argument(f"{where} must be a string, got {type(value).__name__}")
    text = str(value)
    if len(text.encode("utf-8", "surrogatepass")) > limit:
        raise invalid_argument(f"{where} is longer than {limit:,} bytes")
    if "\x00" in text:
        raise invalid_argument(f"{where} holds a NUL character")
    return text


def check_k(k) -> int:
    from retrieval.index import ItemIndex

    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= ItemIndex.MAX_K:
        raise invalid_argument(f"k must be an integer from 1 to {ItemIndex.MAX_K}, got {k!r}"[:200])
    return k


def check_filters(filters) -> dict[str, list[str]]:
    """{field: [values]} from a JSON object (or the gRPC Filter list, merged by field)."""
    if filters is None:
        return {}
    if not isinstance(filters, dict):
        raise invalid_argument(f"filters must be an object of field: [values], got {type(filters).__name__}")
    if len(filters) > MAX_FILTER_FIELDS:
        raise invalid_argument(f"filters name {len(filters)} fields, more than {MAX_FILTER_FIELDS}")
    out = {}
    for name, values in filters.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise invalid_argument(f"filters: {str(name)[:64]!r} is not a field name")
        if isinstance(values, (str, int)) and not isinstance(values, bool):
            values = [values]
        if not isinstance(values, list) or not values:
            raise invalid_argument(f"filters.{name} must be a non-empty list of values")
        if len(values) > MAX_FILTER_VALUES:
            raise invalid_argument(f"filters.{name} lists {len(values)} values, more than {MAX_FILTER_VALUES}")
        out[name] = [_text(v, f"filters.{name}[{i}]", MAX_FILTER_VALUE_BYTES) for i, v in enumerate(values)]
    return out


class RecallCore:
    """index: the open ItemIndex (its client shared with `store`); encoder: the user and item towers
    (retrieval.recall.SavedModelTowers or ServingTowers); vocabulary: which posts each pushed version
    knows (retrieval.catalog.ModelVocabulary)."""

    def __init__(self, index, store, encoder, vocabulary, spec, check_model: bool = True):
        self.index, self.store, self.encoder, self.spec = index, store, encoder, spec
        self.vocabulary = vocabulary
        if not store.exists:
            raise ItemIndexError(f"no {store.where}: run the pipeline first (ItemIndexer seeds it)")
        self.recaller = Recaller(encoder, index, spec, store)
        self.builder = self.recaller.examples  # user queries
        self.items = ExampleBuilder(spec, store)  # posts to add: their own content
        self._adding = threading.Lock()  # one AddItems at a time: memory holds one call's posts
        if check_model:
            check_index_matches_model(index, encoder.item, spec, store)

    # ---- Recall ----

    def _query(self, n: int, query) -> tuple[bytes, set[str]]:
        """(serialized tf.Example, the user's read posts) of one {"features": {...}} or {"log_line": ...}."""
        where = f"queries[{n}]"
        if not isinstance(query, dict) or len(query) != 1 or not {"features", "log_line"} & set(query):
            raise invalid_argument(f"{where} must be {{\"features\": {{...}}}} or {{\"log_line\": \"...\"}}")
        try:
            if "log_line" in query:
                line = _text(query["log_line"], f"{where}.log_line", MAX_LOG_LINE_BYTES)
                texts = dict(zip(self.spec.columns, line.rstrip("\r\n").split("\t"), strict=False))
                return self.builder.from_log_line(line), self.recaller.read_posts(texts)
            features = query["features"]
            if not isinstance(features, dict):
                raise invalid_argument(f"{where}.features must be an object of raw user features")
            texts = self.builder.texts(features)
            for name, text in texts.items():
                _text(text, f"{where}.features.{name}", MAX_FEATURE_BYTES)
            return self.builder.from_features(texts), self.recaller.read_posts(texts)
        except FeatureError as e:
            raise invalid_argument(f"{where}: {e}") from None

    def recall(self, queries, k, filters=None, keep_read: bool = False, new_posts: int = 0) -> dict:
        """{"answers": [{"hits": [{id, score, <stored fields>}], "history_length"}], "model_version",
        "generation"}: one answer per query; user and item vectors of one model version."""
        if not isinstance(queries, list) or not queries:
            raise invalid_argument("give at least one user (features or log_line)")
        if len(queries) > MAX_USERS:
            raise invalid_argument(f"{len(queries)} users in one request, more than {MAX_USERS}")
        k, filters = check_k(k), check_filters(filters)
        if not isinstance(keep_read, bool):
            raise invalid_argument(f"keep_read must be true or false, got {keep_read!r}"[:200])
        if isinstance(new_posts, bool) or not isinstance(new_posts, int) or not 0 <= new_posts <= k:
            raise invalid_argument(f"new_posts must be an integer from 0 to k ({k}), got {new_posts!r}"[:200])
        built = [self._query(n, q) for n, q in enumerate(queries)]
        try:
            answer = self.recaller.answer([b[0] for b in built], k, not keep_read, filters,
                                          [b[1] for b in built] if not keep_read else None, stored_fields=True,
                                          new_posts=new_posts)
        except (ItemIndexError, GenerationGone) as e:
            raise unavailable(f"the item index: {e}") from None
        except ValueError as e:
            raise invalid_argument(str(e)) from None
        except Exception as e:  # noqa: BLE001 - the user tower's own error, as its code says
            raise self._tower_error(e) from None
        return {"answers": [{"hits": [{**h, "score": float(h["score"])} for h in hits], "history_length": len(b[1])}
                            for hits, b in zip(answer["hits"], built, strict=True)],
                "model_version": answer["model_version"], "generation": answer["collection"]}

    def _tower_error(self, e: Exception) -> ServingError:
        if isinstance(e, grpc.RpcError):  # TF Serving answered, or could not be reached
            code = e.code() if callable(getattr(e, "code", None)) else None
            where = self.encoder.describe()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                return invalid_argument(f"the user tower ({where}) refused the features: {e.details()}")
            name = code.name if code is not None else "no status"
            return unavailable(f"the user tower ({where}): {name}: {e.details() if code else e}")
        if type(e).__name__ == "InvalidArgumentError":  # TensorFlow's, in this process: the graph's own check
            return invalid_argument(f"the user tower refused the features: {getattr(e, 'message', e)}")
        log.exception("recall failed")
        return ServingError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    # ---- AddItems ----

    def add_items(self, posts) -> dict:
        """All of the posts or none: each refused one named with its index and reason."""
        from retrieval.add_items import check_posts

        if not isinstance(posts, list) or not posts:
            raise invalid_argument("give at least one post")
        if len(posts) > MAX_POSTS_PER_CALL:
            raise invalid_argument(f"{len(posts):,} posts in one call, more than {MAX_POSTS_PER_CALL:,}: split them")
        started = time.perf_counter()
        checked = check_posts(list(enumerate(posts)), self.spec, self.store.dim, self.store.columns)
        if checked.rejected:
            shown = "; ".join(f"post {r.line}: {r.reason}" for r in checked.rejected[:20])
            more = len(checked.rejected) - 20
            raise invalid_argument(f"{len(checked.rejected)} of {len(posts)} posts refused, none added: {shown}"
                                   + (f"; and {more} more" if more > 0 else ""))
        if not self._adding.acquire(timeout=ADD_WAIT_SECONDS):
            raise unavailable(f"another AddItems call has been adding posts for over {ADD_WAIT_SECONDS:g} s: "
                              "try again later")
        try:
            result = add_posts(self.index, self.store, self.encoder.item, self.vocabulary, self.items, self.spec,
                               checked.batch())
        except ItemIndexError as e:
            raise unavailable(f"the item index: {e}") from None
        except ValueError as e:  # the model version behind the generation is not the tower's
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
        except Exception as e:  # noqa: BLE001
            raise self._tower_error(e) from None
        finally:
            self._adding.release()
        return {"added": result["added"], "seconds": round(time.perf_counter() - started, 4),
                "generation": result["generation"], "model_version": result["model_version"]}

    # ---- Status ----

    def status(self) -> dict:
        try:
            generation, version = self.index.generation()
            return {"generation": generation, "model_version": version, "item_count": self.index.count(generation),
                    "item_store": {"collection": self.store.name, "count": self.store.count(), "dim": self.store.dim},
                    "user_tower": self.encoder.describe()}
        except ItemIndexError as e:
            raise unavailable(f"the item index: {e}") from None
