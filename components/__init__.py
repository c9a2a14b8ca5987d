"""Custom TFX components and the module files Transform and Trainer load."""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFX 1.16 and tf.Transform expect tf-keras (Keras 2)


def __getattr__(name):
    """The custom artifact types, importable as components.<Type> (their TYPE_NAME; see artifacts.py).
    Loaded on first use: `import model.config` must stay light (no TFX) for the command line."""
    if name in ("ItemIndex", "ItemVectors"):
        from components import artifacts

        return getattr(artifacts, name)
    raise AttributeError(f"module 'components' has no attribute {name!r}")
