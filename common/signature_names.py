"""The exported model's signature names: what the Trainer writes, TowerPusher splits, and the
evaluator, ItemIndexer, the infra validator, the serving client and recall call."""

SCORE = "serving_default"  # TF Serving's default: a Predict without a signature name gets the pair score
USER = "user_embedding"    # serialized tf.Examples -> the user tower's vector
ITEM = "item_embedding"    # serialized tf.Examples -> the item tower's vector
RAW = "_raw"               # USER + RAW, ITEM + RAW: the same towers on raw feature tensors (no parsing)

MODEL_NAME = "dssm"       # the served model's default name (config model_name): <model_name>, _user, _item
