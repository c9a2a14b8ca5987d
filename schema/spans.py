"""Daily spans of logs: patterns with {SPAN} (or {SPAN:width}), read the way TFX's ExampleGen reads them.

`logs/day-{SPAN}/train.tsv` names one set of files per span number (logs/day-3/train.tsv is span 3).
TFX's driver picks the latest span, or the one a static RangeConfig names, and writes its number
into the pattern (zero-padded to the width of {SPAN:width}); every split must have the same span.
This module does the same for local files, light (no TFX, no TensorFlow), so that the command line
can check a span's files and choose the training window before anything runs; tests/pipeline/test_spans.py
compares it with TFX's own resolution.

A training window of W spans is [span - W + 1, span] (TFX's RollingRange), clipped to the spans that
exist; the eval split always comes from the chosen span alone.
"""
from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass

from schema.logfiles import glob_files

SPAN_SPEC = re.compile(r"\{SPAN(?::(\d+))?\}")


class SpanError(ValueError):
    """Span patterns that cannot be resolved; the message names the pattern and the spans found."""


def has_span(pattern: str) -> bool:
    for m in SPAN_SPEC.finditer(pattern):
        if m.group(1) is not None and int(m.group(1)) == 0:  # TFX refuses it too
            raise SpanError(f"{m.group(0)} in {pattern}: the width must be a positive integer")
    return SPAN_SPEC.search(pattern) is not None


def for_span(pattern: str, span: int) -> str:
    """The pattern with the span's number written in, padded as its spec asks (TFX's rule)."""
    def token(m):
        width = int(m.group(1) or 0)
        text = str(span)
        if width and len(text) > width:
            raise SpanError(f"span {span} has more digits than {m.group(0)} allows in {pattern}")
        return text.zfill(width)

    return SPAN_SPEC.sub(token, pattern)


def _regex(pattern: str) -> re.Pattern:
    """A regex of the pattern's paths that captures each span token."""
    parts, last = [], 0
    for m in SPAN_SPEC.finditer(pattern):
        parts.append(_glob_regex(pattern[last:m.start()]))
        parts.append(rf"(\d{{{m.group(1)}}})" if m.group(1) else r"(\d+)")
        last = m.end()
    parts.append(_glob_regex(pattern[last:]))
    return re.compile("".join(parts) + r"\Z")


def _glob_regex(text: str) -> str:
    translated = fnmatch.translate(text)  # '(?s:...)\\Z'
    return translated[len("(?s:"):-len(")\\Z")]


def available_spans(pattern: str) -> dict[int, list[str]]:
    """span -> its files: the spans the pattern's files show, each with the files that the pattern
    with that span written in matches (what ExampleGen reads for a static range of that span)."""
    regex = _regex(pattern)
    candidates = set()
    for path in glob_files(SPAN_SPEC.sub("*", pattern)):
        m = regex.match(path)
        if m is not None and len({int(g) for g in m.groups()}) == 1:  # every token of a path: one span
            candidates.add(int(m.group(1)))
    found = {}
    for span in sorted(candidates):
        files = glob_files(for_span(pattern, span))
        if files:
            found[span] = files
    return found


@dataclass(frozen=True)
class SpanChoice:
    span: int                       # the chosen span: the eval split's, and the newest in training
    spans_used: tuple[int, ...]     # the training window's spans that exist, oldest first
    window: int
    files: dict                     # pattern name -> the files read ("training log" over the window)


def choose_span(patterns: dict[str, str], requested: int | None, window: int,
                train_key: str = "training log") -> SpanChoice | None:
    """The span to run (requested, or the latest that every pattern has) and the training window;
    None when no pattern has {SPAN}."""
    with_span = {k: p for k, p in patterns.items() if has_span(p)}
    if not with_span:
        if requested is not None:
            raise SpanError(f"--span {requested}: the log patterns have no {{SPAN}} "
                            f"(e.g. --train 'logs/day-{{SPAN}}/train.tsv')")
        if window != 1:
            raise SpanError(f"continuous.window {window}: the log patterns have no {{SPAN}} to make a window of")
        return None
    if len(with_span) != len(patterns):
        missing = sorted(set(patterns) - set(with_span))
        raise SpanError(f"every log pattern must have {{SPAN}} if one has (TFX's rule): not in {', '.join(missing)}")
    if window < 1:
        raise SpanError(f"continuous.window must be >= 1, got {window}")
    if window > 1 and train_key not in patterns:
        raise SpanError("continuous.window > 1 needs --train and --eval: with --input the eval split would "
                        "come from every span of the window, not the newest")
    spans = {k: available_spans(p) for k, p in patterns.items()}
    for k, found in spans.items():
        if not found:
            raise SpanError(f"{k} pattern {patterns[k]} matches no span")
    if requested is None:
        latest = {k: max(found) for k, found in spans.items()}
        if len(set(latest.values())) != 1:
            raise SpanError("the latest span differs between the log patterns: "
                            + ", ".join(f"{k} {v}" for k, v in latest.items()) + " (give --span)")
        span = next(iter(latest.values()))
    else:
        span = requested
        for k, found in spans.items():
            if span not in found:
                raise SpanError(f"--span {span}: no files match {for_span(patterns[k], span)} "
                                f"({k}; spans found: {', '.join(map(str, sorted(found)))})")
    training = train_key if train_key in patterns else next(iter(patterns))
    used = tuple(s for s in sorted(spans[training]) if span - window < s <= span)
    files = {k: sorted(spans[k][span]) for k in patterns}
    files[training] = sorted(f for s in used for f in spans[training][s])
    return SpanChoice(span=span, spans_used=used, window=window, files=files)


def file_stamps(files: list[str]) -> list[list]:
    """[path, size, mtime_ns] per file: a changed or added file of the window changes the cache key."""
    return [[os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files]
