"""Custom TFX components and the module files Transform and Trainer load."""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFX 1.16 and tf.Transform expect tf-keras (Keras 2)

# The custom artifact types, importable as components.<Type> (their TYPE_NAME; see artifacts.py).
from components.artifacts import ItemIndex, ItemVectors  # noqa: E402,F401
