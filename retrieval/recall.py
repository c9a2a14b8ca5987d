"""Recall: raw user features (or a log line) in, the top-K posts out.

The user vector comes from the user tower, in-process (a pushed SavedModel) or from any TF Serving
endpoint, with the read posts' content vectors from the item store (retrieval/item_store.py: the
posts of the training run and those added since); the posts come from the Milvus generation behind
the alias (retrieval/milvus.py).
The user's read posts are excluded unless asked otherwise; filters keep items whose stored
features (topic_id) take one of the given values. Before answering, the CLI checks that the index
was filled by the model it queries (a few indexed items embedded again by the model's item tower).

    python -m retrieval.recall [--workdir runs/demo] [--milvus URI] [--model DIR | --target HOST:PORT]
                             (--features JSON | --log-line LINE | --log-file TSV [--limit N])
                             [--k 10] [--filter topic_id=3,7] [--keep-read]
"""
from __future__ import annotations

import os

from common.quiet import quiet, verbose_requested

if __name__ == "__main__":
    quiet(verbose_requested())  # before TensorFlow loads; --verbose brings its warnings back

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

from common import signature_names  # noqa: E402
from common.user_input_args import add_user_input_args, check_user_input_args  # noqa: E402
from retrieval.backends import check_index, open_index  # noqa: E402
from retrieval.catalog import KNOWN_FIELD  # noqa: E402
from retrieval.index import (  # noqa: E402
    GenerationGone,
    IndexConfig,  # noqa: E402
    ItemIndex,
    ItemIndexError,
    normalise,
)
from retrieval.item_store import ItemStore  # noqa: E402
from schema.spec import FeatureSpec, load_spec  # noqa: E402
from serving.examples import ExampleBuilder  # noqa: E402


class SavedModelTowers:
    """A pushed model's towers in this process: called, the user tower; `item(examples)`, the item
    tower of the same model. A base path of versions (the asked version, else the latest) or one
    version directory. A version pushed after the start is found when it is first asked for (the
    base path is listed again); the two versions used last stay loaded."""

    KEEP_LOADED = 2

    def __init__(self, path: str):
        import threading

        import tensorflow as tf

        from serving.servables import versions_on_disk

        if not os.path.exists(path):
            raise ValueError(f"no model at {path}: give --workdir of a run that pushed one, or --model")
        self._base, self._list = path, versions_on_disk
        self._versions = versions_on_disk(path)
        self.path = self._versions[max(self._versions)] if self._versions else path
        self._loaded: dict[str, tuple] = {}
        self._lock = threading.Lock()
        self._tf = tf

    def _signatures(self, version: int | None):
        if version is not None and self._versions and version not in self._versions:
            self._versions = self._list(self._base)  # pushed since the start?
        if version is not None and self._versions:
            if version not in self._versions:
                raise ValueError(f"the item index was filled by model version {version}, which is not under "
                                 f"{self._base} (versions {sorted(self._versions)})")
            path = self._versions[version]
        else:
            path = self.path
        with self._lock:
            if path not in self._loaded:
                signatures = self._tf.saved_model.load(path).signatures
                self._loaded[path] = (signatures[signature_names.USER], signatures[signature_names.ITEM])
                while len(self._loaded) > self.KEEP_LOADED:
                    self._loaded.pop(next(iter(self._loaded)))
            else:
                self._loaded[path] = self._loaded.pop(path)  # most recently used last
            return self._loaded[path]

    def __call__(self, examples: list[bytes], version: int | None = None) -> np.ndarray:
        return self._signatures(version)[0](examples=self._tf.constant(examples))["embedding"].numpy()

    def item(self, examples: list[bytes], version: int | None = None) -> np.ndarray:
        return self._signatures(version)[1](examples=self._tf.constant(examples))["embedding"].numpy()

    def describe(self) -> str:
        return f"in-process {self._base}"


class ServingTowers:
    """A pushed model's towers behind a TF Serving endpoint, called for the user tower (and `item` for
    the item tower) (deadline and retries from ServingClient); with a
    version, exactly that version (ModelSpec.version), never whatever the server loaded last."""

    def __init__(self, client):
        self.client = client

    def __call__(self, examples: list[bytes], version: int | None = None) -> np.ndarray:
        return self.client.embeddings(signature_names.USER, examples, version)

    def item(self, examples: list[bytes], version: int | None = None) -> np.ndarray:
        return self.client.embeddings(signature_names.ITEM, examples, version)

    def describe(self) -> str:
        return f"TF Serving {self.client.target} (model {self.client.model_name})"


def check_index_matches_model(item_index: ItemIndex, item_tower, spec: FeatureSpec, store, sample: int = 8,
                              tolerance: float = 1e-3) -> None:
    """ValueError unless a few indexed item vectors equal what this model's item tower (the version the
    generation records, when it does) gives the same items now, i.e. the index was filled by this
    model. A user vector of one model searched against the item vectors of another gives scores that
    mean nothing, with nothing to tell."""
    collection, version = item_index.generation()
    scalars = sorted(item_index.describe(collection).fields - {spec.item_id, KNOWN_FIELD})
    rows = item_index.stored_items(collection, spec.item_id, sample)
    if not rows:
        return
    builder = ExampleBuilder(spec, store)
    examples = [builder.from_features({spec.item_id: r[spec.item_id], **{c: r[c] for c in scalars if r.get(c)}})
                for r in rows]  # each post's own vector from the item store
    stored = np.asarray([r["vector"] for r in rows], np.float32)
    now = normalise(np.asarray(item_tower(examples, version), np.float32))
    gap = float(np.abs(now - stored).max()) if now.shape == stored.shape else float("inf")
    if gap > tolerance:
        raise ValueError(f"the item index {collection} ({item_index.where}) was not filled by this model "
                         f"(its item vectors differ from the model's item tower by up to {gap:.3g}): use the model "
                         f"and the index of one run (--workdir), or --skip-model-check")


class Recaller:
    """User features -> top-K items. `encoder(examples, version)` gives the user vectors of serialized
    tf.Examples from that model version (None: whichever the encoder has); `store` the read posts'
    content vectors (retrieval.item_store.ItemStore)."""

    def __init__(self, encoder, item_index: ItemIndex, spec: FeatureSpec, store):
        self.encoder, self.item_index, self.spec = encoder, item_index, spec
        self.examples = ExampleBuilder(spec, store, tower="user")
        self.history = spec.history_columns()

    def _read(self, serialized: bytes) -> set[str]:
        from common import tf_protos

        tf_protos.load()
        from tensorflow.core.example import example_pb2

        features = example_pb2.Example.FromString(serialized).features.feature
        return {v.decode() for c in self.history for v in features[c].bytes_list.value}

    def read_posts(self, texts: dict[str, str]) -> set[str]:
        # Every read post of the raw input: the tf.Example keeps only the first maxlen of them.
        return {x.strip() for c in self.history if c in texts for x in texts[c].split(",") if x.strip()}

    def recall_examples(self, serialized: list[bytes], k: int, exclude_read: bool = True,
                        filters: dict[str, list[str]] | None = None,
                        read: list[set[str]] | None = None) -> list[list[dict]]:
        """`read`: each user's read posts when the caller has more than the examples hold (they
        are truncated to maxlen); by default the examples' own history lists."""
        return self.answer(serialized, k, exclude_read, filters, read)["hits"]

    def answer(self, serialized: list[bytes], k: int, exclude_read: bool = True,
               filters: dict[str, list[str]] | None = None, read: list[set[str]] | None = None,
               stored_fields: bool = False, new_posts: int = 0) -> dict:
        """{"hits", "collection", "model_version"}: the user vectors come from the model version that
        filled the generation searched (recorded by ItemIndexer), so a query never mixes the user
        tower of one version with the item vectors of another while the alias or the model moves.
        stored_fields: each hit carries every scalar field the generation stores (topic_id, ...).
        new_posts: places of the k kept for the best-scored posts that version does not know (new since
        its training run: see reserve_new_posts); 0: one ranking of every post."""
        self.item_index.check_request(k, filters)
        if isinstance(new_posts, bool) or not isinstance(new_posts, int) or not 0 <= new_posts <= k:
            raise ValueError(f"new_posts must be an integer from 0 to k ({k}), got {new_posts!r}")
        if not serialized:
            raise ValueError("no users to recall for")
        exclude = (read if read is not None else [self._read(s) for s in serialized]) if exclude_read else None
        for attempt in (0, 1):
            try:
                collection, version = self.item_index.generation(refresh=attempt == 1)
                vectors = self.encoder(serialized, version)
                fields = (sorted(self.item_index.describe(collection).fields - {self.spec.item_id}) if stored_fields
                          else list(filters or {}))
                hits = self.item_index.search(vectors, k, exclude=exclude, filters=filters,
                                            output_fields=fields, generation=collection)
                if new_posts:
                    if KNOWN_FIELD not in self.item_index.describe(collection).fields:
                        raise ValueError(f"the item index {collection} does not mark the posts its model knows "
                                         "(written before 2026-12-08): run the pipeline again to use new_posts")
                    new = self.item_index.search(vectors, new_posts, exclude=exclude,
                                               filters={**(filters or {}), KNOWN_FIELD: ["0"]},
                                               output_fields=fields, generation=collection)
                    hits = [reserve_new_posts(h, n, k) for h, n in zip(hits, new, strict=True)]
                return {"hits": hits, "collection": collection, "model_version": version}
            except GenerationGone:
                if attempt == 1:  # the generation was dropped while it was read: once more, on the new one
                    raise

    def recall(self, users: list[dict], k: int = 10, exclude_read: bool = True,
               filters: dict[str, list[str]] | None = None) -> list[list[dict]]:
        if not isinstance(users, list) or not all(isinstance(u, dict) for u in users):
            raise ValueError("users must be a list of JSON objects of raw user features")
        examples = [self.examples.from_features(u) for u in users]
        read = [self.read_posts(self.examples.texts(u)) for u in users]
        return self.recall_examples(examples, k, exclude_read, filters, read)

    def recall_log_lines(self, lines: list[str], k: int = 10, exclude_read: bool = True,
                         filters: dict[str, list[str]] | None = None) -> list[list[dict]]:
        examples = [self.examples.from_log_line(x) for x in lines]
        texts = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in lines]
        read = [self.read_posts(dict(zip(self.spec.columns, t.rstrip("\r\n").split("\t"), strict=False)))
                for t in texts]
        return self.recall_examples(examples, k, exclude_read, filters, read)


def reserve_new_posts(hits: list[dict], new: list[dict], k: int) -> list[dict]:
    """The k hits with `new` (the best-scored posts the model does not know) kept in: they, then the
    best of the others, ordered by score. A new post that was among the top k anyway takes no place
    of another: the reserve is a floor, not an addition. Why: a post without a trained id is scored by
    its content alone and ranks below warm posts of equal interest (docs/quality.md, Freshness)."""
    chosen = {h["id"]: h for h in new}
    for h in hits:
        if len(chosen) >= k:
            break
        chosen.setdefault(h["id"], h)
    return sorted(chosen.values(), key=lambda h: -h["score"])


def _filters(values: list[str]) -> dict[str, list[str]]:
    out = {}
    for v in values:
        name, sep, allowed = v.partition("=")
        if not sep or not allowed:
            raise SystemExit(f"error: --filter takes FIELD=V1,V2,..., got {v!r}")
        if not name.isidentifier():
            raise SystemExit(f"error: --filter: {name!r} is not a field name")
        out.setdefault(name, []).extend(allowed.split(","))
    return out


class Query:
    """One user to recall for: who it is (for the output), its serialized example, its read posts and
    its raw feature texts."""

    def __init__(self, who: dict, example: bytes, read: set[str], texts: dict[str, str]):
        self.who, self.example, self.read, self.texts = who, example, read, texts


def queries_from_features(users: list[dict], builder: ExampleBuilder, recaller: Recaller, spec: FeatureSpec):
    out = []
    for n, u in enumerate(users, start=1):
        texts = builder.texts(u)
        who = {"source": "--features", "index": n, spec.user_id: str(u.get(spec.user_id, "")) or None}
        out.append(Query(who, builder.from_features(u), recaller.read_posts(texts), texts))
    return out


def queries_from_lines(numbered: list[tuple[str, int | None, str]], builder: ExampleBuilder, recaller: Recaller,
                       spec: FeatureSpec):
    """numbered: (source, line number or None, the log line)."""
    out = []
    for source, lineno, line in numbered:
        columns = dict(zip(spec.columns, line.rstrip("\r\n").split("\t"), strict=False))
        who = {"source": source, "line": lineno, spec.user_id: columns.get(spec.user_id) or None}
        out.append(Query(who, builder.from_log_line(line), recaller.read_posts(columns), columns))
    return out


SCORE_MEANING = ("cosine of the user and item vectors (both towers end in an L2 normalization): -1 to 1, "
                 "higher is closer")


def user_topics(texts: dict[str, str], spec: FeatureSpec, stored: list[str]) -> dict[str, list[str]]:
    """The user's own values of each user-tower list that shares a vocabulary with a field the index
    stores (follow_topic_id and all_topic_fav_7 share topic_id's): what the user says they like."""
    history = set(spec.history_columns())
    return {f.column: [v.strip() for v in texts.get(f.column, "").split(",") if v.strip()]
            for f in spec.tower_features("user") if f.group in stored and f.column not in history}


def history_fields(read: set[str], found: dict[str, dict], stored: list[str], top: int = 10) -> dict[str, dict]:
    """{stored field: {value: read posts with it}} of the read posts the store holds, the `top` most
    frequent values first: what the user actually read."""
    out = {}
    for field in stored:
        counts: dict[str, int] = {}
        for post in read:
            if post in found:
                value = str(found[post].get(field, ""))
                counts[value] = counts.get(value, 0) + 1
        out[field] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top])
    return out


def numbered_log_lines(path: str, limit: int, spec: FeatureSpec) -> list[tuple[str, int, str]]:
    """(path, line number in the file, line in the spec's column order) of its first `limit` data lines
    (the header says where each column is: schema.logfiles.read_log)."""
    from schema.logfiles import read_log

    return [(path, lineno, line) for lineno, line in read_log(path, spec, limit)]


def recall_queries(recaller: Recaller, queries: list[Query], k: int, exclude_read: bool,
                   filters: dict[str, list[str]], store=None, new_posts: int = 0) -> list[dict]:
    """One record per query: who, the model version and the generation searched, what the score means,
    how much history the model saw (a note when none), the user's own topics and those of its reads
    (from `store`, the item store, when given), and the hits with every stored scalar field."""
    answer = recaller.answer([q.example for q in queries], k, exclude_read, filters,
                             [q.read for q in queries] if exclude_read else None, stored_fields=True,
                             new_posts=new_posts)
    history = ", ".join(recaller.history) or "history"
    stored = list(store.columns) if store is not None else []
    found = store.get(sorted(set().union(*(q.read for q in queries)))) if stored else {}
    records = []
    for query, hits in zip(queries, answer["hits"], strict=True):
        record = {"user": query.who, "model_version": answer["model_version"], "generation": answer["collection"],
                  "history_length": len(query.read), "excluded_read": exclude_read, "score": SCORE_MEANING,
                  "user_topics": user_topics(query.texts, recaller.spec, stored)}
        if stored:  # the read posts the item store holds; a post without a vector is not there
            record["history_topics"] = history_fields(query.read, found, stored)
            record["history_posts_not_stored"] = sum(1 for p in query.read if p not in found)
        if not query.read:
            record["note"] = (f"empty history ({history}): the user vector comes from the user's other features "
                              f"alone, so these items are not chosen by what this user read")
        record["hits"] = [{**h, "score": round(h["score"], 5)} for h in hits]
        records.append(record)
    return records


def format_table(record: dict) -> str:
    """A query's record as text: a heading line, the user's topics, the note, what the score is, then
    rank / id / score / stored fields."""
    who = record["user"]
    where = (f"{who['source']} line {who['line']}" if who.get("line")
             else f"--features #{who['index']}" if "index" in who else who.get("source", "?"))
    user_id = next((v for k, v in who.items() if k not in ("source", "line", "index")), None)
    heading = (f"user {user_id or '(no id)'} ({where}) · model version {record['model_version']} · "
               f"generation {record['generation']} · {record['history_length']} read posts"
               + (" excluded" if record["excluded_read"] and record["history_length"] else ""))
    lines = [heading]
    own = [f"{c} {','.join(v) or '-'}" for c, v in record.get("user_topics", {}).items()]
    read = [f"read posts' {field} " + (", ".join(f"{v} ×{n}" for v, n in counts.items()) or "-")
            for field, counts in record.get("history_topics", {}).items()]
    if record.get("history_posts_not_stored"):
        read.append(f"{record['history_posts_not_stored']} read posts not in the item store")
    if own or read:
        lines.append("  " + " · ".join([*own, *read]))
    if "note" in record:
        lines.append(f"  note: {record['note']}")
    hits = record["hits"]
    if not hits:
        lines.append("  (no items: the filters or exclusions left none)")
        return "\n".join(lines)
    lines.append(f"  score: {record['score']}")
    fields = [f for f in hits[0] if f not in ("id", "score")]
    rows = [["rank", "id", "score", *fields]] + [[str(n), str(h["id"]), f"{h['score']:.4f}",
                                                   *(str(h.get(f, "")) for f in fields)]
                                                  for n, h in enumerate(hits, start=1)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines += ["  " + "  ".join(cell.rjust(w) if c in (0, 2) else cell.ljust(w)
                               for c, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
              for row in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    defaults = IndexConfig()
    p = argparse.ArgumentParser(prog="python -m retrieval.recall", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=os.path.join("runs", "demo"),
                   help="a run's work directory: its milvus.db and its pushed serving/MODEL_NAME (default: the demo's)")
    p.add_argument("--milvus", default=None, help="Milvus Lite file or URI (default: WORKDIR/milvus.db)")
    p.add_argument("--token", default="")
    p.add_argument("--alias", default=defaults.alias)
    p.add_argument("--nprobe", type=int, default=0, help="IVF lists searched on a Milvus server (0: its default)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--model", default=None,
                       help="pushed model (base path or version directory), run in this process "
                            "(default: WORKDIR/serving/MODEL_NAME)")
    where.add_argument("--target", help="host:port of a TF Serving endpoint serving the model instead "
                                        "(this process then never loads TensorFlow)")
    p.add_argument("--model-name", default=signature_names.MODEL_NAME, help="with --target: the served model name")
    p.add_argument("--spec", default=None)
    add_user_input_args(p)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--filter", action="append", default=[], help="FIELD=V1,V2 (repeatable), e.g. topic_id=3,7")
    p.add_argument("--keep-read", action="store_true", help="do not exclude the user's read posts")
    p.add_argument("--new-posts", type=int, default=0, metavar="N",
                   help=f"keep N of the K places for the best-scored posts the model does not know (new since its "
                        f"training run; the hits' {KNOWN_FIELD} is 0); default 0: one ranking of every post")
    p.add_argument("--skip-model-check", action="store_true",
                   help="do not check that the index was filled by this model's item tower")
    p.add_argument("--format", choices=("json", "table"), default="json",
                   help="json: one object per query and line (user, model_version, generation, history_length, "
                        "note, hits with every stored field); table: the same for reading")
    p.add_argument("--verbose", action="store_true", help="also TensorFlow's C++ log and third-party warnings")
    args = p.parse_args(argv)
    check_user_input_args(args)
    args.milvus = args.milvus or IndexConfig().at(args.workdir).uri
    args.model = args.model or os.path.join(args.workdir, "serving", args.model_name)

    from common.progress import Activity
    from schema.logfiles import LogFileError
    from serving.examples import FeatureError

    spec = load_spec(args.spec)
    config = IndexConfig(uri=args.milvus, token=args.token, alias=args.alias,
                         search_params={"nprobe": args.nprobe} if args.nprobe else {})
    starting = None
    try:
        check_index(config)  # in a second, before Milvus Lite starts on it
        # The request is checked before the index opens and the model loads: a wrong k, filter or
        # log file answers in seconds.
        filters = _filters(args.filter)
        if args.features:
            users = json.loads(args.features)
            if isinstance(users, dict):
                users = [users]
            if not isinstance(users, list) or not users or not all(isinstance(u, dict) for u in users):
                raise ValueError("--features takes a JSON object of raw user features, or a non-empty list of them")
        else:
            lines = ([("--log-line", None, args.log_line)] if args.log_line
                     else numbered_log_lines(args.log_file, args.limit, spec))
            if not lines:
                raise ValueError(f"{args.log_file} holds no data line after its header")
        starting = Activity("opening the item index and " + (f"asking {args.target} for the user vectors"
                                                               if args.target else f"loading the model {args.model}"))
        starting.start()
        item_index = open_index(config)
        item_index.generation()  # the alias names a generation that exists, before a model loads
        store = ItemStore(config, spec.item_id, client=item_index.client)
        item_index.check_request(args.k, filters)
        if args.target:
            from serving.client import ServingClient

            encoder = ServingTowers(ServingClient(args.target, args.model_name))
        else:
            encoder = SavedModelTowers(args.model)
        if not args.skip_model_check:
            check_index_matches_model(item_index, encoder.item, spec, store)
        recaller = Recaller(encoder, item_index, spec, store)
        builder = recaller.examples
        queries = (queries_from_features(users, builder, recaller, spec) if args.features
                   else queries_from_lines(lines, builder, recaller, spec))
        records = recall_queries(recaller, queries, args.k, not args.keep_read, filters, store, args.new_posts)
    except (FeatureError, json.JSONDecodeError, ValueError, ItemIndexError, LogFileError) as e:
        raise SystemExit(f"error: {e}") from None
    except Exception as e:  # noqa: BLE001 - a gRPC error from the endpoint: its code and details, one line
        import grpc

        if not isinstance(e, grpc.RpcError):
            raise
        raise SystemExit(f"error: {args.target}: {e.code().name}: {e.details()}") from None
    finally:
        if starting is not None:
            starting.stop()
    for record in records:
        print(json.dumps(record) if args.format == "json" else format_table(record) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
