"""Retrieval: the item index (index.py: the interface; milvus.py: Milvus, its one implementation),
recall (a user's vector -> the nearest items of the live generation) and ranking metrics."""
import common  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TensorFlow import)
