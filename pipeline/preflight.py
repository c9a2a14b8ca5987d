"""Checks before a run starts, light enough to answer in a second or two (no TensorFlow import):
every path the run will write, and whether the eval split can hold enough users to bless a model.
"""
from __future__ import annotations

import errno
import hashlib
import os

from schema.spec import FeatureSpec

EVAL_USER_SCAN_LINES = 5_000_000  # a guess from more rows than this is not "clearly" too few


class PathError(ValueError):
    """A path the run must write to cannot be written; the message names it and says why."""


def _probe_directory(directory: str) -> None:
    """Creates and removes a file in `directory`: the only test that also holds for read-only
    filesystems and for root (os.access answers yes to root on a read-only mount)."""
    probe = os.path.join(directory, f".write-check-{os.getpid()}")
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise PathError(f"{directory}: not writable ({os.strerror(e.errno) if e.errno else e})") from None


def check_writable(paths: dict[str, str]) -> None:
    """{what: path} of files or directories the run writes (existing or not): PathError naming the
    first that cannot be created or written, before anything heavy loads."""
    for what, path in paths.items():
        path = os.path.abspath(path)
        existing = path
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        if existing != path and not os.path.isdir(existing):
            raise PathError(f"cannot create the {what} {path}: {existing} is a file, not a directory")
        if os.path.isdir(existing):
            try:
                _probe_directory(existing)
            except PathError as e:
                raise PathError(f"cannot write the {what} {path}: {e}") from None
            continue
        # An existing file (metadata.sqlite, milvus.db): it and its directory (SQLite's journal).
        try:
            with open(existing, "r+b"):
                pass
            _probe_directory(os.path.dirname(existing))
        except OSError as e:
            raise PathError(f"cannot write the {what} {path}: {os.strerror(e.errno or errno.EACCES)}") from None
        except PathError as e:
            raise PathError(f"cannot write the {what} {path}: {e}") from None


def hash_split_is_eval(user_id: bytes, split_buckets: dict[str, int]) -> bool:
    """Whether ExampleGen's hash split (TFX: sha256 of the partition feature serialized as a
    tf.train.Feature, modulo the total buckets, train's buckets first) puts this user in eval."""
    # Feature{bytes_list: BytesList{value: [user_id]}} serialized: field 1 (LEN) around field 1 (LEN).
    inner = b"\x0a" + _varint(len(user_id)) + user_id
    key = b"\x0a" + _varint(len(inner)) + inner
    total = split_buckets["train"] + split_buckets["eval"]
    return int(hashlib.sha256(key).hexdigest(), 16) % total >= split_buckets["train"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def clicking_eval_users(files: list[str], spec: FeatureSpec, split_buckets: dict[str, int] | None,
                        enough: int, max_lines: int = EVAL_USER_SCAN_LINES) -> int | None:
    """Users with a clicked row that the eval split will hold (all the files' users when
    split_buckets is None: explicit eval logs; else those the hash split sends to eval), counted
    until `enough` are found. None when the files hold more than max_lines rows before that: the
    count would be a guess."""
    from schema.logfiles import read_lines

    user_col, label_col = spec.columns.index(spec.user_id), spec.columns.index(spec.label)
    users: set[bytes] = set()
    lines = 0
    for path in files:
        for _, _, line in read_lines(path):
            lines += 1
            if lines > max_lines:
                return None
            fields = line.rstrip(b"\r\n").split(b"\t")
            if len(fields) <= max(user_col, label_col) or fields[label_col].strip() != b"1":
                continue
            user = fields[user_col].strip()
            if user and user not in users and (split_buckets is None or hash_split_is_eval(user, split_buckets)):
                users.add(user)
                if len(users) >= enough:
                    return len(users)
    return len(users)


def too_few_eval_users_warning(eval_files: list[str], spec: FeatureSpec, split_buckets: dict[str, int] | None,
                               min_eval_users: int) -> str | None:
    """A warning when the eval split will clearly hold fewer clicking users than min_eval_users
    (the RetrievalEvaluator then blesses nothing), else None."""
    found = clicking_eval_users(eval_files, spec, split_buckets, enough=min_eval_users)
    if found is None or found >= min_eval_users:
        return None
    if split_buckets is None:
        where, needed = "the eval logs hold", f"eval logs with at least {min_eval_users} clicking users"
    else:
        share = split_buckets["eval"] / (split_buckets["train"] + split_buckets["eval"])
        where = (f"the hash split (split_buckets {split_buckets}) sends {share:.0%} of the users to eval: "
                 f"it will hold")
        needed = f"logs with about {min_eval_users / share:,.0f} clicking users or more"
    return (f"{where} {found} users with a click, fewer than evaluation.min_eval_users {min_eval_users}, so no "
            f"model can be blessed and nothing will be pushed (exit code 3); give {needed}, set "
            f"evaluation.allow_few_eval_users: true, or pass --allow-not-blessed if that is expected")


def first_vector_dim(path: str) -> int | None:
    """The length of the first vector of a local item-vector file (.jsonl[.gz]: the first line's
    values; .npy: the header's columns), read without TensorFlow; None when it cannot be told here
    (the full check, line by line, comes when the file is prepared)."""
    import gzip
    import json

    try:
        if path.endswith(".npy"):
            from schema.npy_files import read_npy_header

            with open(path, "rb") as f:
                shape = read_npy_header(f)[0]
            return int(shape[1]) if len(shape) == 2 else None
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            for line in f:
                if line.strip():
                    values = json.loads(line).get("values")
                    return len(values) if isinstance(values, list) else None
    except (OSError, EOFError, ValueError, AttributeError, TypeError, SyntaxError):
        return None  # the full check reports it, naming the line
    return None
