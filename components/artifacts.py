"""Custom artifact types of the pipeline."""
from tfx.types.artifact import Artifact, Property, PropertyType


class ItemVectors(Artifact):
    """Pretrained item vectors prepared by components/item_vectors.py (item_ids.txt, vectors.npy)."""

    TYPE_NAME = "ItemVectors"
    PROPERTIES = {"dim": Property(type=PropertyType.INT), "count": Property(type=PropertyType.INT),
                  "sha256": Property(type=PropertyType.STRING)}


class ItemIndex(Artifact):
    """The item-tower vectors of a model (embeddings/*.tfrecord.gz) and the Milvus generation they were
    written to (custom properties: uri, alias, collection, count, items_per_second, ...)."""

    TYPE_NAME = "ItemIndex"
    PROPERTIES = {"dim": Property(type=PropertyType.INT), "count": Property(type=PropertyType.INT)}
