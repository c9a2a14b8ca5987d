"""The log files an input pattern names, and their header rows.

Light on purpose (no TensorFlow, no TFX): the command line checks every local input with it before
the heavy imports, so a wrong path or header is reported in about a second. TsvExampleGen expands
local patterns with the same function, so the pre-check and the run see the same files.

`glob_files` follows tf.io.gfile.glob on local paths: the wildcards * ? [..] match within one path
component, and hidden files (".x") are matched like any other.
"""
from __future__ import annotations

import fnmatch
import gzip
import os
import re
import zlib

from common.progress import RateLog
from schema.spec import FeatureSpec

_WILDCARD = re.compile(r"[*?\[]")


class LogFileError(ValueError):
    """An input file that cannot be used; the message names it."""


def glob_files(pattern: str) -> list[str]:
    """Every path matching `pattern` (files and directories alike), sorted."""
    parts = pattern.split(os.sep)
    if not any(_WILDCARD.search(p) for p in parts):
        return [pattern] if os.path.lexists(pattern) else []
    first = next(i for i, p in enumerate(parts) if _WILDCARD.search(p))
    matches = [os.sep.join(parts[:first]) or (os.sep if pattern.startswith(os.sep) else ".")]
    for i, part in enumerate(parts[first:], start=first):
        last = i == len(parts) - 1
        found = []
        for base in matches:
            if not _WILDCARD.search(part):
                path = os.path.join(base, part)
                if os.path.lexists(path):
                    found.append(path)
                continue
            try:
                names = os.listdir(base)
            except OSError:
                continue
            found += [os.path.join(base, n) for n in names if fnmatch.fnmatchcase(n, part)
                      and (last or os.path.isdir(os.path.join(base, n)))]
        matches = found
    if not pattern.startswith(os.sep) and not pattern.startswith("."):
        matches = [m[2:] if m.startswith("./") else m for m in matches]
    return sorted(matches)


def check_matches(pattern: str, paths: list[str], isdir, open_binary) -> None:
    """LogFileError naming a match that is a directory or cannot be opened and read."""
    for path in paths:
        if isdir(path):
            raise LogFileError(f"{path}: matches the input pattern {pattern} but is a directory")
        try:
            with open_binary(path) as f:
                f.read(1)
        except Exception as e:  # noqa: BLE001 - a broken link, a loop, no permission: all mean the same
            raise LogFileError(f"{path}: matches the input pattern {pattern} but cannot be read "
                               f"({type(e).__name__}: {e})") from None


def read_header(line: bytes) -> list[str]:
    return line.decode("utf-8", errors="replace").rstrip("\r\n").split("\t")


def check_header(header: list[str], spec: FeatureSpec, path: str) -> None:
    """Raises LogFileError naming the missing / unexpected / misordered columns."""
    expected = list(spec.columns)
    if header == expected:
        return
    missing = [c for c in expected if c not in header]
    unexpected = [c for c in header if c not in expected]
    hint = " (the file must be tab-separated)" if len(header) == 1 and "," in header[0] else ""
    if missing or unexpected:
        raise LogFileError(f"{path}: header does not match the feature spec{hint}: missing columns {missing}, "
                           f"unexpected columns {unexpected} (expected {expected})")
    raise LogFileError(f"{path}: header columns are in a different order than the feature spec: "
                       f"got {header}, expected {expected}")


def first_line(path: str, open_binary) -> bytes:
    """The first line of a log file, through gzip for .gz; LogFileError naming the file otherwise."""
    try:
        with open_binary(path) as raw:
            f = gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw
            return next(bounded_lines(f, 64 << 10, chunk=64 << 10), b"")  # a header: 64 KiB bounds a bomb
    except (OSError, EOFError, zlib.error) as e:  # e.g. a .gz that is plain text
        raise LogFileError(f"{path}: cannot read the file ({type(e).__name__}: {e})") from None


def check_headers(files: list[str], spec: FeatureSpec, open_binary=None) -> None:
    for path in files:
        first = first_line(path, open_binary or (lambda p: open(p, "rb")))
        if not first:
            raise LogFileError(f"{path}: file is empty (expected a header row)")
        check_header(read_header(first), spec, path)


def expand_local(pattern: str) -> list[str]:
    """The local files of a pattern, each checked to be a readable file."""
    files = glob_files(pattern)
    check_matches(pattern, files, os.path.isdir, lambda p: open(p, "rb"))
    return files


def bounded_lines(f, limit: int, chunk: int = 1 << 20):
    """The lines of a binary file object (anything with read(n): TFX's file objects take no size in
    readline), read a chunk at a time: a line longer than `limit` is yielded cut after limit + 1 bytes
    and the rest of it is dropped as it is read, so memory stays within limit + 2 chunks."""
    pending, skipping = b"", False
    while data := f.read(chunk):
        pending += data
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            if skipping:
                skipping = False
            else:
                yield pending[start:end + 1]
            start = end + 1
        pending = pending[start:]
        if skipping:
            pending = b""
        elif len(pending) > limit:
            yield pending[:limit + 1]
            pending, skipping = b"", True
    if pending and not skipping:
        yield pending


def read_lines(path: str, open_binary=lambda p: open(p, "rb"), size=os.path.getsize):
    """(path, line number, raw bytes) for every data line of a plain or .gz log; line 1 is the header.

    Blank lines are yielded too: ingest rejects and counts them (field_count), never skips them. A
    line longer than rows.MAX_LINE_BYTES is yielded cut after MAX_LINE_BYTES + 1 bytes (ingest rejects
    it: line_too_long) and the rest of it is read and dropped a MiB at a time, so a line that never
    ends (a gzip bomb) costs bounded memory. A truncated or corrupt .gz is a LogFileError: a run stops
    rather than use part of a file.
    """
    from schema.rows import MAX_LINE_BYTES

    lineno = 0
    raw = open_binary(path)
    progress = RateLog(f"reading {os.path.basename(path)}", "MB", total=size(path) / 1e6)
    try:
        with gzip.GzipFile(fileobj=raw, mode="rb") if path.endswith(".gz") else raw as f:
            for line in bounded_lines(f, MAX_LINE_BYTES):
                lineno += 1
                if lineno > 1:
                    yield path, lineno, line
                if lineno % 20_000 == 0:  # the position in the (compressed) file measures progress
                    progress.update(raw.tell() / 1e6, f"{lineno - 1:,} rows")
    except (EOFError, OSError, zlib.error) as e:
        raise LogFileError(f"{path}: unreadable after line {lineno} ({type(e).__name__}: {e}); the file is "
                           f"truncated or corrupt, so the run stops rather than train on part of it") from None


def read_log(path: str, spec: FeatureSpec, limit: int | None = None):
    """(line number, the line in the spec's column order) for the first `limit` data lines of a plain
    or .gz log, for the tools that read a few users of a log (recall, the gRPC client, the report).
    The header decides where each column is: a file whose columns are the spec's in another order gives
    the same lines as the original; a header that is not the spec's columns (a headerless file, a
    missing or unknown column) is a LogFileError, never a silently shifted row."""
    import itertools

    if not os.path.isfile(path):
        raise LogFileError(f"{path}: no such file")
    first = first_line(path, lambda p: open(p, "rb"))
    if not first:
        raise LogFileError(f"{path}: file is empty (expected a header row)")
    header, expected = read_header(first), list(spec.columns)
    if sorted(header) != sorted(expected):
        check_header(header, spec, path)  # says which columns are missing or unexpected
    order = None if header == expected else [header.index(c) for c in expected]
    for _, lineno, raw in itertools.islice(read_lines(path), limit):
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise LogFileError(f"{path}:{lineno}: the line is not UTF-8") from None
        fields = text.split("\t")
        if order is not None and len(fields) == len(order):
            text = "\t".join(fields[i] for i in order)
        yield lineno, text
