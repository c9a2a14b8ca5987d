"""The documentation agrees with the code: the configuration page with the config dataclasses, the
README's diagram with the DAG create_pipeline builds, and the README's links with docs/."""
import dataclasses
import os
import re

import yaml

from pipeline import config_doc
from pipeline.config import PipelineConfig
from tests.conftest import REPO
from tests.pipeline.test_wiring import _span_pipeline


def _read(path: str) -> str:
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def _yaml_block(text: str) -> str:
    return text.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_configuration_page_is_the_one_the_dataclasses_generate():
    assert _read("docs/configuration.md") == config_doc.render(), \
        "run: .venv/bin/python -m pipeline.config_doc > docs/configuration.md"


def test_the_configuration_page_lists_every_key_with_its_default():
    """Read back as YAML, the page is the defaults of the dataclasses themselves (paths in the repo
    relative to it): no key missing, none extra, no default different."""
    defaults = dataclasses.asdict(PipelineConfig())
    for key in ("feature_spec", "schema"):
        defaults[key] = os.path.relpath(defaults[key], REPO)
    assert yaml.safe_load(_yaml_block(_read("docs/configuration.md"))) == defaults


def test_every_key_on_the_configuration_page_says_what_it_does():
    lines = _yaml_block(_read("docs/configuration.md")).splitlines()
    unexplained = [line.strip() for i, line in enumerate(lines)
                   if not line.lstrip().startswith("#") and not line.rstrip().endswith(":")
                   and "#" not in line and not (i and lines[i - 1].lstrip().startswith("#"))]
    assert unexplained == []


def test_the_readme_diagram_names_every_component_in_the_order_of_the_dag():
    readme = _read("README.md")
    diagram = readme.split("## The pipeline", 1)[1].split("```", 2)[1]
    components = _span_pipeline(2)  # with {SPAN} logs: the warm-start resolver too
    names = {cid: "Importer" if cid == "item_vectors_importer" else cid for cid in components}
    missing = sorted(cid for cid, name in names.items() if not re.search(rf"\b{name}\b", diagram))
    assert missing == []
    # ItemIndexer reads TowerPusher's output: it comes after it, on the same line of the drawing.
    assert "pushed_model" in components["ItemIndexer"].inputs
    assert re.search(r"TowerPusher[^\n]*──►\s*ItemIndexer", diagram)


def test_the_readme_links_every_page_of_docs_and_only_pages_that_exist():
    readme = _read("README.md")
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", readme))
    pages = {f"docs/{name}" for name in os.listdir(os.path.join(REPO, "docs")) if name.endswith(".md")}
    assert linked == pages
