"""Daily spans from one set of logs: <out>/day-<d>/train.tsv and eval.tsv for d = 1..days, so that the
pipeline can be run day by day (--train '<out>/day-{SPAN}/train.tsv' --eval '<out>/day-{SPAN}/eval.tsv').

The training rows are cut into `days` consecutive parts, in file order (a log's order is time's);
each eval user's rows are dealt out over the days in turn, so every day's eval split holds most of
the eval users, as a day of fresh traffic would.

    python -m datagen.spans --source data/sample --out runs/spans --days 3
"""
from __future__ import annotations

import argparse
import os


def _read(path: str) -> tuple[str, list[str]]:
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    if not lines:
        raise SystemExit(f"error: {path} is empty (expected a header row)")
    return lines[0], lines[1:]


def make_spans(source: str, out: str, days: int) -> dict[int, dict[str, int]]:
    """Writes the spans; returns {day: {"train": rows, "eval": rows}}."""
    if days < 1:
        raise SystemExit(f"error: --days must be >= 1, got {days}")
    header, train = _read(os.path.join(source, "train.tsv"))
    eval_header, evals = _read(os.path.join(source, "eval.tsv"))
    user_column = header.rstrip("\r\n").split("\t").index("client_id")
    dealt: dict[str, int] = {}
    eval_days = [[] for _ in range(days)]
    for line in evals:
        user = line.split("\t")[user_column]
        turn = dealt.get(user, 0)
        dealt[user] = turn + 1
        eval_days[turn % days].append(line)
    counts = {}
    for d in range(days):
        folder = os.path.join(out, f"day-{d + 1}")
        os.makedirs(folder, exist_ok=True)
        part = train[d * len(train) // days:(d + 1) * len(train) // days]
        with open(os.path.join(folder, "train.tsv"), "w", encoding="utf-8") as f:
            f.writelines([header, *part])
        with open(os.path.join(folder, "eval.tsv"), "w", encoding="utf-8") as f:
            f.writelines([eval_header, *eval_days[d]])
        counts[d + 1] = {"train": len(part), "eval": len(eval_days[d])}
    return counts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m datagen.spans", description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="a folder with train.tsv and eval.tsv (e.g. data/sample)")
    p.add_argument("--out", required=True)
    p.add_argument("--days", type=int, default=3)
    args = p.parse_args(argv)
    for day, rows in make_spans(args.source, args.out, args.days).items():
        print(f"{args.out}/day-{day}: {rows['train']:,} training rows, {rows['eval']:,} eval rows")


if __name__ == "__main__":
    main()
