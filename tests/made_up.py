"""Tiny made-up artifacts for the executor tests (tests/components/test_components.py): a handful of tf.Examples,
the item-vector folder, and a SavedModel with the Trainer's signatures whose vectors are known by
hand, so each component's output can be checked against numbers worked out independently.

The made-up towers, over topics t1, t2, t3 and posts p1..p5 (weight w(p) = 5, 4, 3, 2, 1):
  user vector = [the followed topics, one-hot each] + [1.0]
  item vector = w(post) * ([its topic_id, one-hot] + [0.001])
so a user's score of an item is w * (1.001 if the user follows its topic else 0.001): every
ranking is strict and easy to write down. A second version of the model (`rotate=1`) puts topic i
in slot i+1 in both towers: it ranks the same way, but its user vectors searched against the first
version's item vectors (a mixed answer) rank another topic's items first.
"""
import json
import os

import numpy as np
import tensorflow as tf
from tfx.types import standard_artifacts

from common import signature_names
from components.artifacts import ItemVectors
from schema.item_vectors import IDS_FILE, VECTORS_FILE

TOPICS = ("t1", "t2", "t3")
WEIGHTS = {"p1": 5.0, "p2": 4.0, "p3": 3.0, "p4": 2.0, "p5": 1.0}
ITEM_TOPIC = {"p1": "t1", "p2": "t1", "p3": "t2", "p4": "t2", "p5": "t3"}
DIM = len(TOPICS) + 1


def _slot(topic, rotate: int) -> list[float]:
    return [float(TOPICS[(i - rotate) % len(TOPICS)] == topic) for i in range(len(TOPICS))]


def user_vector(followed, rotate: int = 0) -> np.ndarray:
    slots = [_slot(t, rotate) for t in followed] or [[0.0] * len(TOPICS)]
    return np.array(np.max(slots, axis=0).tolist() + [1.0], np.float32)


def item_vector(post, topic=None, rotate: int = 0) -> np.ndarray:
    topic = ITEM_TOPIC.get(post) if topic is None else topic
    return WEIGHTS.get(post, 0.0) * np.array(_slot(topic, rotate) + [0.001], np.float32)


def example(act=0, client="u0", post="p1", client_type=0, follow=(), fav=(), topic=None, read=()) -> bytes:
    """A raw tf.Example of the sample spec's features, written by hand (not by the project's parser)."""
    def strings(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))

    feature = {"act": ints([act]), "client_id": strings([client]), "post_id": strings([post]),
               "client_type": ints([client_type]), "follow_topic_id": strings(follow),
               "all_topic_fav_7": strings([k for k, _ in fav]),
               "all_topic_fav_7_weight": tf.train.Feature(float_list=tf.train.FloatList(value=[w for _, w in fav])),
               "topic_id": strings([ITEM_TOPIC.get(post, "") if topic is None else topic]),
               "read_post_id": strings(read)}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def examples_artifact(root, splits: dict[str, list[bytes]]):
    """An Examples artifact as ExampleGen writes it: Split-<name>/ folders of GZIP TFRecords."""
    artifact = standard_artifacts.Examples()
    artifact.uri = str(root)
    artifact.split_names = json.dumps(sorted(splits))
    for name, records in splits.items():
        os.makedirs(os.path.join(root, f"Split-{name}"))
        with tf.io.TFRecordWriter(os.path.join(root, f"Split-{name}", "data.gz"), options="GZIP") as w:
            for r in records:
                w.write(r)
    return artifact


def item_vectors_artifact(root, ids):
    """A prepared vector folder: the ids and a content vector each (the made-up towers read none)."""
    artifact = ItemVectors()
    artifact.uri = str(root)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, IDS_FILE), "w") as f:
        f.write("".join(f"{i}\n" for i in ids))
    table = np.concatenate([np.zeros((1, DIM), np.float32), np.ones((len(ids), DIM), np.float32)])
    np.save(os.path.join(root, VECTORS_FILE), table)
    artifact.set_int_custom_property("count", len(ids))
    return artifact


class NoContent:
    """The content lookup for the made-up towers, which read no vector: every post 'has none' (zeros)."""
    dim = DIM

    @staticmethod
    def vectors(ids) -> np.ndarray:
        return np.zeros((len(ids), DIM), np.float32)


def output_artifact(cls, root):
    artifact = cls()
    artifact.uri = str(root)
    os.makedirs(root, exist_ok=True)
    return artifact


class MadeUpTowers(tf.Module):
    """The Trainer's signatures (names and inputs) over the made-up towers above; `collapsed` gives
    every user the same vector, as a model trained into a constant would."""

    def __init__(self, collapsed: bool = False, rotate: int = 0):
        super().__init__()
        self.collapsed = collapsed
        slots = [(i + rotate) % len(TOPICS) for i in range(len(TOPICS))]
        self.topics = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(TOPICS), tf.constant(slots, tf.int64)), -1)
        self.weights = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(list(WEIGHTS)), tf.constant(list(WEIGHTS.values()))), 0.0)
        examples = tf.TensorSpec([None], tf.string, name="examples")
        self.user_embedding = tf.function(self._user_from_examples, input_signature=[examples])
        self.item_embedding = tf.function(self._item_from_examples, input_signature=[examples])
        self.score = tf.function(self._score, input_signature=[examples])
        self.item_embedding_raw = tf.function(self._item_raw, input_signature=[
            tf.TensorSpec([None], tf.string, name="post_id"), tf.TensorSpec([None], tf.string, name="topic_id")])

    def _one_hot(self, topics):
        return tf.one_hot(self.topics.lookup(topics), len(TOPICS))  # -1 (unknown) -> all zeros

    def _user(self, follow: tf.SparseTensor):
        dense = tf.sparse.to_dense(follow, default_value="")
        multi_hot = tf.reduce_max(self._one_hot(dense), axis=1) if not self.collapsed \
            else tf.zeros([tf.shape(dense)[0], len(TOPICS)])
        return tf.concat([multi_hot, tf.ones([tf.shape(dense)[0], 1])], axis=1)

    def _item(self, post, topic):
        base = tf.concat([self._one_hot(topic), tf.fill([tf.shape(post)[0], 1], 0.001)], axis=1)
        return self.weights.lookup(post)[:, None] * base

    def _parse(self, examples):
        return tf.io.parse_example(examples, {"follow_topic_id": tf.io.VarLenFeature(tf.string),
                                              "post_id": tf.io.FixedLenFeature([], tf.string, ""),
                                              "topic_id": tf.io.FixedLenFeature([], tf.string, "")})

    def _user_from_examples(self, examples):
        return {"embedding": self._user(self._parse(examples)["follow_topic_id"])}

    def _item_from_examples(self, examples):
        parsed = self._parse(examples)
        return {"embedding": self._item(parsed["post_id"], parsed["topic_id"])}

    def _score(self, examples):
        user, item = self._user_from_examples(examples), self._item_from_examples(examples)
        return {"score": tf.reduce_sum(user["embedding"] * item["embedding"], axis=1)}

    def _item_raw(self, post_id, topic_id):
        return {"embedding": self._item(post_id, topic_id)}

    def signatures(self, which: str) -> dict:
        user = {signature_names.USER: self.user_embedding}
        names = signature_names
        item = {names.ITEM: self.item_embedding, names.ITEM + names.RAW: self.item_embedding_raw}
        if which == "user":
            return {signature_names.SCORE: self.user_embedding, **user}
        if which == "item":
            return {signature_names.SCORE: self.item_embedding, **item}
        return {signature_names.SCORE: self.score, **user, **item}


def model_artifact(root, collapsed: bool = False, rotate: int = 0):
    """A Model artifact laid out as the Trainer writes it: Format-Serving and its -user / -item towers."""
    artifact = standard_artifacts.Model()
    artifact.uri = str(root)
    serving = os.path.join(root, "Format-Serving")
    module = MadeUpTowers(collapsed, rotate)
    tf.saved_model.save(module, serving, signatures=module.signatures("all"))
    write_vocabulary(serving)
    for tower in ("user", "item"):
        tf.saved_model.save(module, f"{serving}-{tower}", signatures=module.signatures(tower))
        write_vocabulary(f"{serving}-{tower}")
    return artifact


def write_vocabulary(saved_model: str) -> None:
    """The item-id vocabulary the Trainer's export carries (assets/vocab_post_id): the posts these
    towers have a weight for, as Transform lists the ids it saw."""
    os.makedirs(os.path.join(saved_model, "assets"), exist_ok=True)
    with open(os.path.join(saved_model, "assets", "vocab_post_id"), "w") as f:
        f.write("".join(f"{post}\n" for post in WEIGHTS))
