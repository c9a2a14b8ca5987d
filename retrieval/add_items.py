"""New posts into the system without retraining: into the item store and the serving generation.

    python -m retrieval.add_items --workdir RUN (--items FILE | --watch DIR) [--milvus URI]
                                  [--model DIR | --target HOST:PORT]

FILE: JSON lines (plain or .gz), one post a line: {"post_id": "...", "values": [d floats], <the item
tower's other features, e.g. "topic_id": "t3">}. Each post is embedded by the item tower of the model
version that filled the serving generation (the version its user vectors come from), written to the
item store and upserted into that generation; the command returns once every post is searchable and
prints the count and the seconds. Re-adding an id replaces its row. A bad row is reported with its
line number and counted, and nothing of it is written; the other rows are added (exit code 2 when a
row was refused). If a new generation goes live while posts are added, they are added to it as well
(ItemIndexer also picks up every post the store got while it wrote a generation).

--watch DIR is the streaming path on the same code: every *.jsonl[.gz] file renamed into DIR is added
as --items adds one, then moved to DIR/added/ (or DIR/refused/, with <name>.refused.txt listing each
refused line and why); a Milvus or model-server failure leaves the file to be tried again.
"""
from __future__ import annotations

import os

from common.quiet import quiet, verbose_requested

if __name__ == "__main__":
    quiet(verbose_requested())  # before TensorFlow loads

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402

from retrieval.catalog import ModelVocabulary, add_posts  # noqa: E402
from retrieval.index import Batch, ItemIndexError  # noqa: E402
from schema.numbers import NumberError, check_number  # noqa: E402
from schema.spec import FeatureSpec  # noqa: E402

MAX_LINE_BYTES = 16 << 20
BYTES_PER_VALUE = 32  # the longest float a line may spend per vector value ("-1.2345678901234567e-123, ")
CHUNK_ROWS = 10_000  # posts checked and added at a time (768-d: about 30 MB of vectors)


@dataclass
class Rejected:
    line: int | None
    reason: str


@dataclass
class Posts:
    """Posts checked and ready to add (the last row of an id wins), and the rows refused."""
    ids: list[str] = field(default_factory=list)
    scalars: dict[str, list[str]] = field(default_factory=dict)
    vectors: list[np.ndarray] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    def batch(self) -> Batch:
        dim = self.vectors[0].shape[0] if self.vectors else 0
        return Batch(list(self.ids), {c: list(v) for c, v in self.scalars.items()},
                     np.asarray(self.vectors, np.float32).reshape(len(self.ids), dim))


def check_post(obj, spec: FeatureSpec, dim: int, columns: list[str]) -> tuple[str, dict[str, str], np.ndarray]:
    """(id, columns, vector) of one post, or ValueError with the reason."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    allowed = {spec.item_id, "values", *columns}
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; a post takes {sorted(allowed)}")
    item = obj.get(spec.item_id)
    if isinstance(item, bool) or not isinstance(item, (str, int)) or not str(item).strip():
        raise ValueError(f"{spec.item_id} must be a non-empty string, got {item!r}")
    item = str(item).strip()
    if any(c in item for c in "\t\n\r,") or len(item.encode()) > 1024:
        raise ValueError(f"{spec.item_id} {item!r} holds a tab, newline or comma, or is over 1,024 bytes")
    values = obj.get("values")
    if not isinstance(values, list) or len(values) != dim:
        got = f"{len(values)} values" if isinstance(values, list) else repr(values)[:40]
        raise ValueError(f"values must be a list of {dim} numbers (the item store's vectors), got {got}")
    try:
        for v in values:
            check_number(v)
    except NumberError as e:
        raise ValueError(f"values must be finite float32 numbers: {e}") from None
    vector = np.asarray(values, np.float32)
    if not vector.any():
        raise ValueError("an all-zero vector means 'no vector' to the model: give the post's content vector")
    scalars = {}
    for c in columns:
        value = obj.get(c, "")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(f"{c} must be a string, got {value!r}")
        value = str(value).strip()
        if any(ch in value for ch in "\t\n\r") or len(value.encode()) > 1024:
            raise ValueError(f"{c} {value!r} holds a tab or newline, or is over 1,024 bytes")
        scalars[c] = value
    return item, scalars, vector


def check_posts(rows, spec: FeatureSpec, dim: int, columns: list[str]) -> Posts:
    """rows: (line number or None, a JSON value or a json.JSONDecodeError/ValueError)."""
    posts = Posts(scalars={c: [] for c in columns})
    where: dict[str, int] = {}
    for line, obj in rows:
        try:
            if isinstance(obj, Exception):
                raise ValueError(str(obj))
            item, scalars, vector = check_post(obj, spec, dim, columns)
        except ValueError as e:
            posts.rejected.append(Rejected(line, str(e)))
            continue
        if item in where:  # the later row of an id replaces the earlier, as a second add would
            i = where[item]
            posts.vectors[i] = vector
            for c in columns:
                posts.scalars[c][i] = scalars[c]
            continue
        where[item] = len(posts.ids)
        posts.ids.append(item)
        posts.vectors.append(vector)
        for c in columns:
            posts.scalars[c].append(scalars[c])
    return posts


def line_limit(dim: int) -> int:
    """The longest line a post of `dim` values needs, with 64 KiB for its other fields: JSON is parsed
    into Python objects at ~30x its bytes, so a line is refused unparsed when it could only hold a lie
    (a 16 MiB line of 8M one-digit values would cost ~300 MB)."""
    return min(MAX_LINE_BYTES, dim * BYTES_PER_VALUE + (64 << 10))


def read_items_file(path: str, max_line: int = MAX_LINE_BYTES):
    """(line number, parsed JSON or the error) per non-empty line of a JSON-lines file (.gz too)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                if len(line) > max_line:
                    yield lineno, ValueError(f"a line of {len(line):,} bytes, longer than a post of the store's "
                                             f"size needs ({max_line:,}): not read")
                    continue
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    yield lineno, ValueError(f"not JSON: {e}")
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read the file ({e})") from None


def main(argv=None) -> int:
    from retrieval.index import IndexConfig

    defaults = IndexConfig()
    p = argparse.ArgumentParser(prog="python -m retrieval.add_items", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=os.path.join("runs", "demo"),
                   help="a run's work directory: its milvus.db and its pushed serving/MODEL_NAME (default: the demo's)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--items", help="JSON lines (or .jsonl.gz) of posts: post_id, values, item features")
    source.add_argument("--watch", metavar="DIR",
                        help="add every *.jsonl[.gz] file that appears in DIR (write it elsewhere, then rename it in), "
                             "then move it to DIR/added/ (or DIR/refused/ with the refused lines beside it); until "
                             "Ctrl-C")
    p.add_argument("--poll-seconds", type=float, default=1.0, help="with --watch: how often DIR is listed")
    p.add_argument("--milvus", default=None, help="Milvus Lite file or URI (default: WORKDIR/milvus.db)")
    p.add_argument("--token", default="")
    p.add_argument("--alias", default=defaults.alias)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--model", default=None, help="pushed model base path (default: WORKDIR/serving/MODEL_NAME)")
    where.add_argument("--target", help="host:port of a TF Serving endpoint serving the model instead")
    p.add_argument("--model-name", default="dssm")
    p.add_argument("--spec", default=None)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    from schema.spec import load_spec
    from serving.examples import FeatureError

    spec = load_spec(args.spec)
    config = IndexConfig(uri=args.milvus or IndexConfig().at(args.workdir).uri, token=args.token, alias=args.alias)
    model = args.model or os.path.join(args.workdir, "serving", args.model_name)
    try:
        adder = Adder(config, spec, _item_tower(args, model), ModelVocabulary(model, spec))
        if args.watch:
            return watch(adder, args.watch, args.poll_seconds)
        result = adder.add_file(args.items)
    except (ItemIndexError, ValueError, FeatureError) as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({k: v for k, v in result.items() if k != "rejected"}))
    return 2 if result["refused"] else 0


class Adder:
    """One open index, item store and item tower; files of posts added through retrieval.catalog."""

    def __init__(self, config, spec: FeatureSpec, towers, vocabulary):
        """vocabulary: retrieval.catalog.ModelVocabulary of the pushed model's versions."""
        from retrieval.backends import check_index, open_index
        from retrieval.item_store import ItemStore
        from serving.examples import ExampleBuilder

        check_index(config)
        self.index = open_index(config)
        self.store = ItemStore(config, spec.item_id, client=getattr(self.index, "client", None))
        if not self.store.exists:
            raise ItemIndexError(f"no {self.store.where}: run the pipeline first (ItemIndexer seeds it)")
        self.spec, self.towers, self.vocabulary = spec, towers, vocabulary
        self.builder = ExampleBuilder(spec, self.store)

    def add_file(self, path: str) -> dict:
        """Checks every row, reports each refused one on stderr (path:line: reason), adds the others, a
        chunk of CHUNK_ROWS rows at a time (memory holds one chunk, not the file; a later row of an id
        still replaces an earlier one, as the chunks are added in order)."""
        import itertools
        import time

        started = time.perf_counter()
        rows, added, rejected, result = read_items_file(path, line_limit(self.store.dim)), 0, [], {}
        while chunk := list(itertools.islice(rows, CHUNK_ROWS)):
            posts = check_posts(chunk, self.spec, self.store.dim, self.store.columns)
            for r in posts.rejected:
                print(f"{path}:{r.line}: refused: {r.reason}", file=sys.stderr)
            rejected += posts.rejected
            if posts.ids:
                result = add_posts(self.index, self.store, self.towers.item, self.vocabulary, self.builder, self.spec,
                                   posts.batch())
                added += result["added"]
        return {"added": added, "generation": result.get("generation"), "model_version": result.get("model_version"),
                "seconds": round(time.perf_counter() - started, 4), "refused": len(rejected),
                "store_count": self.store.count(), "rejected": rejected}


def watch(adder: Adder, folder: str, poll_seconds: float) -> int:
    """The streaming path: each new file of posts in `folder` added as --items adds one. A file is moved
    to added/ or, when a row was refused, to refused/ with <name>.refused.txt (line: reason) beside it;
    a Milvus or model failure leaves the file where it is, to be tried again at the next poll."""
    import time

    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: not a directory")
    for sub in ("added", "refused"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    print(f"watching {folder} for *.jsonl / *.jsonl.gz files (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        while True:
            names = sorted(n for n in os.listdir(folder) if n.endswith((".jsonl", ".jsonl.gz"))
                           and not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))
            for name in names:
                path = os.path.join(folder, name)
                try:
                    result = adder.add_file(path)
                except (ItemIndexError, OSError) as e:
                    print(f"{path}: not added, tried again in {poll_seconds:g} s: {e}", file=sys.stderr, flush=True)
                    continue
                except ValueError as e:  # the file itself is unusable (unreadable .gz, ...): kept, with the reason
                    result = {"added": 0, "refused": 1, "rejected": [Rejected(None, str(e))]}
                done = "refused" if result["refused"] else "added"
                if result["refused"]:
                    with open(os.path.join(folder, done, f"{name}.refused.txt"), "w") as f:
                        f.writelines(f"{r.line}: {r.reason}\n" for r in result["rejected"])
                os.replace(path, os.path.join(folder, done, name))
                print(json.dumps({"file": name, **{k: v for k, v in result.items() if k != "rejected"}}), flush=True)
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        return 0


def _item_tower(args, model: str):
    from retrieval.recall import SavedModelTowers, ServingTowers

    if args.target:
        from serving.client import ServingClient

        return ServingTowers(ServingClient(args.target, args.model_name))
    return SavedModelTowers(model)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
