"""The project's TFX components, one module each (components/<name>.py): the component (a class, or a
function under TFX's @component) and what only it uses, its Executor included when it has one, and
its OUTPUT_REPORT (common/outputs.py) when its output tells the run summary something. artifacts.py
holds the custom artifact types. The module files Transform and Trainer load live in model/."""
import common  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TensorFlow import)


def __getattr__(name):
    """The custom artifact types, importable as components.<Type> (their TYPE_NAME; see artifacts.py).
    Loaded on first use: `import components` must stay light (no TFX) for the command line."""
    if name in ("ItemIndex", "ItemVectors"):
        from components import artifacts

        return getattr(artifacts, name)
    raise AttributeError(f"module 'components' has no attribute {name!r}")
