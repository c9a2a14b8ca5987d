"""Serving: the TF Serving-protocol model server (gRPC and REST), its client, the Milvus item index and recall."""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # TFX 1.16 and tf.Transform expect tf-keras (Keras 2)
