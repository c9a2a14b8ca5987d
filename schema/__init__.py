"""The feature spec (single source of truth) and the curated TFDV schema."""
import common  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TensorFlow import)
