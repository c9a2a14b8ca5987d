"""New posts into the system without retraining: into the item store and the serving generation.

    python -m retrieval.add_items --workdir RUN --items FILE [--milvus URI] [--model DIR | --target HOST:PORT]

FILE: JSON lines (plain or .gz), one post a line: {"post_id": "...", "values": [d floats], <the item
tower's other features, e.g. "topic_id": "t3">}. Each post is embedded by the item tower of the model
version that filled the serving generation (the version its user vectors come from), written to the
item store and upserted into that generation; the command returns once every post is searchable and
prints the count and the seconds. Re-adding an id replaces its row. A bad row is reported with its
line number and counted, and nothing of it is written; the other rows are added (exit code 2 when a
row was refused). If a new generation goes live while posts are added, they are added to it as well
(ItemIndexer also picks up every post the store got while it wrote a generation).
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

from retrieval.catalog import add_posts  # noqa: E402
from retrieval.index import Batch, ItemIndexError  # noqa: E402
from schema.numbers import NumberError, check_number  # noqa: E402
from schema.spec import FeatureSpec  # noqa: E402

MAX_LINE_BYTES = 16 << 20


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
                raise ValueError(f"not JSON: {obj}")
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


def read_items_file(path: str):
    """(line number, parsed JSON or the error) per non-empty line of a JSON-lines file (.gz too)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                if len(line) > MAX_LINE_BYTES:
                    yield lineno, ValueError(f"a line longer than {MAX_LINE_BYTES >> 20} MiB")
                    continue
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    yield lineno, ValueError(str(e))
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read the file ({e})") from None


def main(argv=None) -> int:
    from retrieval.milvus import IndexConfig

    defaults = IndexConfig()
    p = argparse.ArgumentParser(prog="python -m retrieval.add_items", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=os.path.join("runs", "demo"),
                   help="a run's work directory: its milvus.db and its pushed serving/MODEL_NAME (default: the demo's)")
    p.add_argument("--items", required=True, help="JSON lines (or .jsonl.gz) of posts: post_id, values, item features")
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
    from retrieval.backends import open_index
    from retrieval.item_store import ItemStore
    from retrieval.milvus import check_lite_file
    from schema.spec import load_spec
    from serving.examples import ExampleBuilder, FeatureError

    spec = load_spec(args.spec)
    config = IndexConfig(uri=args.milvus or IndexConfig().at(args.workdir).uri, token=args.token, alias=args.alias)
    model = args.model or os.path.join(args.workdir, "serving", args.model_name)
    try:
        if config.is_lite:
            check_lite_file(config.uri)
        index = open_index(config)
        store = ItemStore(config, spec.item_id, client=getattr(index, "client", None))
        if not store.exists:
            raise ItemIndexError(f"no {store.where}: run the pipeline first (ItemIndexer seeds it)")
        posts = check_posts(read_items_file(args.items), spec, store.dim, store.columns)
        for r in posts.rejected:
            print(f"{args.items}:{r.line}: refused: {r.reason}", file=sys.stderr)
        encoder = _item_tower(args, model)
        result = add_posts(index, store, encoder.item, ExampleBuilder(spec, store), spec, posts.batch())
    except (ItemIndexError, ValueError, FeatureError) as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({**result, "refused": len(posts.rejected), "store_count": store.count()}))
    return 2 if posts.rejected else 0


def _item_tower(args, model: str):
    from retrieval.recall import SavedModelUserEncoder, ServingUserEncoder

    if args.target:
        from serving.client import ServingClient

        return ServingUserEncoder(ServingClient(args.target, args.model_name))
    return SavedModelUserEncoder(model)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
