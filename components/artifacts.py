"""Custom artifact types of the pipeline."""
from tfx.types.artifact import Artifact


class ItemVectors(Artifact):
    """Pretrained item vectors prepared by schema/item_vectors.py (item_ids.txt, vectors.npy)."""

    # KFP v2 needs the type name to be "<module>.<Class>", and TFX's KFP v2 entry point imports the
    # class by that path (components/__init__.py exports it). dim, count and sha256 are custom
    # properties: KFP v2 compiles custom types to the generic Artifact schema, which has no properties.
    TYPE_NAME = "components.ItemVectors"


class ItemIndex(Artifact):
    """The item-tower vectors of a model (embeddings/*.tfrecord.gz) and the Milvus generation they were
    written to (custom properties: uri, alias, collection, count, items_per_second, ...)."""

    TYPE_NAME = "components.ItemIndex"
