"""docs/configuration.md, generated from the config dataclasses: every key, its default and the comment
written beside it in the source (pipeline/config.py, model/config.py, retrieval/milvus.py).

    python -m pipeline.config_doc > docs/configuration.md

tests/pipeline/test_docs.py fails when the file and the dataclasses disagree.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import os
import sys
import tokenize

import yaml

from pipeline.config import PipelineConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HEADER = """# Configuration

`run_pipeline.py local|kubeflow --config FILE` takes YAML. Every key is optional and an unknown key is
an error (it names the keys known there); a value of the wrong type or outside its choices is an error
before anything runs. Below: every key with its default and what it does.

This page is generated from the config dataclasses (`.venv/bin/python -m pipeline.config_doc > docs/configuration.md`)
and `tests/pipeline/test_docs.py` checks that it matches them. Examples: `configs/continuous.yaml` (daily
runs), `configs/original_design.yaml` (the original write-up's pointwise setup).

```yaml
"""


def _field_comments(cls) -> dict[str, tuple[list[str], str]]:
    """{field: (comment lines above it, the comment on its line and the lines continuing it)}."""
    source = inspect.getsource(cls)
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    lines = source.splitlines()
    field_column = None
    fields = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, tuple[list[str], str]] = {}
    pending: list[str] = []
    current, in_body = None, False
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        in_body = in_body or stripped.startswith("class ")
        name = stripped.split(":", 1)[0].strip() if ":" in stripped and not stripped.startswith("#") else None
        if name in fields:
            field_column = len(line) - len(line.lstrip())
            trailing = [t.string[1:].strip() for t in tokens if t.type == tokenize.COMMENT and t.start[0] == number]
            current = name
            out[name] = (pending, " ".join(trailing))
            pending = []
        elif stripped.startswith("#") and (field_column is not None or in_body):
            text = stripped[1:].strip()
            indent = len(line) - len(line.lstrip())
            if current and field_column is not None and indent > field_column + 4:  # continues the one above
                above, trailing = out[current]
                out[current] = (above, f"{trailing} {text}".strip())
            else:
                pending.append(text)
                current = None
        elif stripped.startswith(("def ", "@")) and field_column is not None:
            break  # the fields are over: methods follow
    return out


def _yaml_value(value) -> str:
    if isinstance(value, str) and os.path.isabs(value) and value.startswith(REPO):
        value = os.path.relpath(value, REPO)
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def _lines(instance, indent: str = "") -> list[str]:
    out = []
    comments = _field_comments(type(instance))
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        above, trailing = comments.get(f.name, ([], ""))
        choices = f.metadata.get("choices")
        if choices and " | ".join(choices) not in trailing:
            trailing = f"{' | '.join(choices)}" + (f"; {trailing}" if trailing else "")
        out += [f"{indent}# {text}" for text in above]
        if dataclasses.is_dataclass(value):
            out.append(f"{indent}{f.name}:" + (f"  # {trailing}" if trailing else ""))
            out += _lines(value, indent + "  ")
        else:
            line = f"{indent}{f.name}: {_yaml_value(value)}"
            out.append(f"{line:<40} # {trailing}" if trailing else line)
    return out


def render() -> str:
    return HEADER + "\n".join(_lines(PipelineConfig())) + "\n```\n"


if __name__ == "__main__":
    sys.stdout.write(render())
