"""The project's packages import one way, lowest first: common -> schema -> serving -> components ->
pipeline -> run_pipeline.py, and no module imports itself through others. The graph is read from the
sources (every import statement, those inside functions included), not from what happens to load."""
import ast
import os

from common import LAYERS as PACKAGES
from tests.conftest import REPO

LAYERS = [*PACKAGES, "run_pipeline"]


def _module_name(path: str) -> str:
    name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return name.removesuffix(".__init__")


def _sources() -> dict[str, str]:
    found = {"run_pipeline": os.path.join(REPO, "run_pipeline.py")}
    for package in LAYERS[:-1]:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            found.update({_module_name(os.path.join(folder, f)): os.path.join(folder, f)
                          for f in files if f.endswith(".py")})
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (`from a import b` counts as a.b when b is a module)."""
    modules = _sources()
    graph = {}
    for name, path in modules.items():
        targets = set()
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                named = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                named = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            else:
                continue
            targets |= {t for t in named if t in modules}
        graph[name] = targets - {name}
    return graph


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def upward_imports(graph) -> list[str]:
    return sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts if _layer(t) > _layer(m))


def cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_a_higher_layer():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_find_what_they_look_for():
    """The checks themselves, on a made-up graph with one upward import and one cycle."""
    graph = {"serving.a": {"pipeline.b"}, "pipeline.b": {"pipeline.c"}, "pipeline.c": {"pipeline.b"},
             "common.d": set()}
    assert upward_imports(graph) == ["serving.a -> pipeline.b"]
    assert cycles(graph) == [["pipeline.b", "pipeline.c"]]
    real = import_graph()
    assert "common.progress" in real["retrieval.milvus"]  # `from common.progress import RateLog`
    assert "common.signature_names" in real["model.export"]  # `from common import signature_names`


def test_the_package_and_the_image_hold_every_layer():
    """setup.py installs, and the Kubeflow image copies, every project package (a new layer included)."""
    with open(os.path.join(REPO, "setup.py")) as f:
        setup = f.read()
    with open(os.path.join(REPO, "Dockerfile")) as f:
        dockerfile = f.read()
    for package in PACKAGES:
        assert f'"{package}*"' in setup, package
        assert f"COPY {package}/ {package}/" in dockerfile, package


def test_components_holds_only_components_one_module_each():
    """Every module of components/ (but artifacts.py, the artifact types) defines the pipeline node it is
    named for: a TFX component (a class, or a function under @component, which TFX turns into one) or
    the resolver strategy of a Resolver node; model code lives in model/, retrieval in retrieval/."""
    import importlib
    import inspect

    from tfx.dsl.components.base.base_component import BaseComponent
    from tfx.dsl.components.common.resolver import ResolverStrategy

    folder = os.path.join(REPO, "components")
    assert [d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and d != "__pycache__"] == []
    names = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f not in ("__init__.py", "artifacts.py"))
    assert names
    for name in names:
        module = importlib.import_module(f"components.{name}")
        nodes = [obj for obj in vars(module).values() if inspect.isclass(obj) and obj.__module__ == module.__name__
                 and issubclass(obj, (BaseComponent, ResolverStrategy))]
        assert len(nodes) == 1, (name, nodes)
