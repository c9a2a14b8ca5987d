"""The TF Serving-protocol model server (gRPC and REST) and its client; retrieval/ is the item index and recall."""
import common  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TensorFlow import)
