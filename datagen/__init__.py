"""Deterministic synthetic click logs with a planted signal."""
import common  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TensorFlow import)
