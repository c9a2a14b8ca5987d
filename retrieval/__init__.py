"""Retrieval: the item index (index.py: the interface; milvus.py: Milvus, its one implementation),
recall (a user's vector -> the nearest items of the live generation) and ranking metrics."""
