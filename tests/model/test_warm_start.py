"""Warm start across vocabularies: an id keeps its learned row wherever its index moved, a new id keeps
today's fresh row, a dropped id's row is gone; Dense weights are copied; a changed tower refuses."""
import numpy as np
import pytest
import tensorflow as tf

from components.warm_start_resolver import LatestPushedModelBeforeSpan
from model import warm_start
from model.config import TrainerConfig
from model.towers import build_towers

TABLE = np.eye(4, 3, dtype=np.float32)  # the frozen pretrained table: not part of the warm start
# yesterday: topics a b c d e; today: c moved first, b and e kept (moved), a and d dropped, x and y new
OLD_TOPICS = [b"a", b"b", b"c", b"d", b"e"]
NEW_TOPICS = [b"c", b"x", b"b", b"e", b"y"]
OLD_TYPES, NEW_TYPES = [b"1", b"2"], [b"2", b"1", b"3"]
# the item ids (post_id and the read history's ids): p3 and p1 kept (moved), p2 dropped, p4 new
OLD_POSTS, NEW_POSTS = [b"p1", b"p2", b"p3"], [b"p3", b"p4", b"p1"]


def _files(tmp_path, name, topics, types):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "topics.txt").write_bytes(b"\n".join(topics) + b"\n")
    (folder / "types.txt").write_bytes(b"\n".join(types) + b"\n")
    (folder / "posts.txt").write_bytes(b"\n".join(_posts(topics)) + b"\n")
    return {"topic_id": str(folder / "topics.txt"), "client_type": str(folder / "types.txt"),
            "post_id": str(folder / "posts.txt")}


def _posts(topics):
    return OLD_POSTS if topics == OLD_TOPICS else NEW_POSTS


def _towers(spec, topics, types, seed, units=(8, 4), table=TABLE):
    cfg = TrainerConfig(user_units=list(units), item_units=list(units), seed=seed)
    sizes = {"topic_id": len(topics) + 2, "client_type": len(types) + 2, "post_id": len(_posts(topics)) + 2}
    return build_towers(spec, sizes, table, cfg)


def test_row_mapping_by_hand():
    m = warm_start.row_mapping(OLD_TOPICS, NEW_TOPICS, old_oov=1, new_oov=1)
    # today's rows: 0 pad, 1 c, 2 x, 3 b, 4 e, 5 y, 6 oov -> yesterday's: 0 pad, 3 c, 2 b, 5 e, 6 oov
    assert m.source.tolist() == [0, 3, -1, 2, 5, -1, 6]
    assert (m.kept, m.new, m.dropped) == (3, 2, 2)
    # a different number of OOV buckets hashes unseen ids elsewhere: fresh OOV rows
    assert warm_start.row_mapping(OLD_TOPICS, NEW_TOPICS, 1, 2).source.tolist()[-2:] == [-1, -1]


def test_load_moves_each_row_to_its_new_index(spec, tmp_path):
    old = _towers(spec, OLD_TOPICS, OLD_TYPES, seed=1)
    new = _towers(spec, NEW_TOPICS, NEW_TYPES, seed=2, table=2 * TABLE)  # today's item vectors differ
    old_files = _files(tmp_path, "old", OLD_TOPICS, OLD_TYPES)
    new_files = _files(tmp_path, "new", NEW_TOPICS, NEW_TYPES)
    model_uri = tmp_path / "model"
    (recency,) = [v for v in old.scorer.variables if v.name.startswith("pool_client_embed/position_logits")]
    recency.assign(np.linspace(2.0, -1.0, recency.shape[0]))  # yesterday's learned recency weights
    warm_start.save(str(model_uri), old.scorer, old_files, 1, span=4)
    before = {v.name: v.numpy().copy() for v in new.scorer.variables}
    old_values = {v.name: v.numpy() for v in old.scorer.variables}

    done = warm_start.load(str(model_uri / "Format-Serving"), new.scorer, new_files, 1)

    assert done["from"] == str(model_uri) and done["span"] == 4
    assert done["groups"] == {"topic_id": {"kept": 3, "new": 2, "dropped": 2},
                              "client_type": {"kept": 2, "new": 1, "dropped": 0},
                              "post_id": {"kept": 2, "new": 1, "dropped": 1}}
    after = {v.name: v.numpy() for v in new.scorer.variables}
    topics_old, topics_new = old_values["embed_topic_id/embeddings:0"], after["embed_topic_id/embeddings:0"]
    fresh = before["embed_topic_id/embeddings:0"]
    for token in (b"c", b"b", b"e"):  # learned rows follow the id
        np.testing.assert_array_equal(topics_new[NEW_TOPICS.index(token) + 1], topics_old[OLD_TOPICS.index(token) + 1])
    for token in (b"x", b"y"):  # new ids keep today's initialisation
        np.testing.assert_array_equal(topics_new[NEW_TOPICS.index(token) + 1], fresh[NEW_TOPICS.index(token) + 1])
    np.testing.assert_array_equal(topics_new[0], topics_old[0])    # padding
    np.testing.assert_array_equal(topics_new[-1], topics_old[-1])  # the OOV bucket
    types_old, types_new = old_values["embed_client_type/embeddings:0"], after["embed_client_type/embeddings:0"]
    np.testing.assert_array_equal(types_new[1], types_old[2])  # "2" was index 2, now 1
    np.testing.assert_array_equal(types_new[2], types_old[1])  # "1" was index 1, now 2
    np.testing.assert_array_equal(types_new[3], before["embed_client_type/embeddings:0"][3])  # "3" is new
    posts_old, posts_new = old_values["embed_post_id/embeddings:0"], after["embed_post_id/embeddings:0"]
    np.testing.assert_array_equal(posts_new[1], posts_old[3])  # p3 was index 3, now 1
    np.testing.assert_array_equal(posts_new[3], posts_old[1])  # p1 was index 1, now 3
    np.testing.assert_array_equal(posts_new[2], before["embed_post_id/embeddings:0"][2])  # p4 is new
    for name, value in after.items():
        if name.startswith(("user_dense", "item_dense", "pool_")):
            np.testing.assert_array_equal(value, old_values[name])  # the towers' layers, as trained
    np.testing.assert_allclose(after["pool_client_embed/position_logits:0"], np.linspace(2.0, -1.0, 50), rtol=1e-6)
    pretrained = [n for n in after if n.startswith("pretrained_items")]
    assert pretrained and all(np.array_equal(after[n], 2 * TABLE) for n in pretrained)  # today's, not yesterday's


def test_a_changed_tower_is_refused_and_nothing_is_assigned(spec, tmp_path):
    old = _towers(spec, OLD_TOPICS, OLD_TYPES, seed=1, units=(8, 4))
    new = _towers(spec, NEW_TOPICS, NEW_TYPES, seed=2, units=(16, 4))
    old_files = _files(tmp_path, "old", OLD_TOPICS, OLD_TYPES)
    new_files = _files(tmp_path, "new", NEW_TOPICS, NEW_TYPES)
    warm_start.save(str(tmp_path / "model"), old.scorer, old_files, 1, span=1)
    before = [v.numpy().copy() for v in new.scorer.variables]
    with pytest.raises(warm_start.WarmStartRefused, match="user_dense_0/kernel"):
        warm_start.load(str(tmp_path / "model" / "Format-Serving"), new.scorer, new_files, 1)
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, new.scorer.variables, strict=True))


def test_a_model_without_warm_start_files_is_refused(spec, tmp_path):
    new = _towers(spec, NEW_TOPICS, NEW_TYPES, seed=2)
    with pytest.raises(warm_start.WarmStartRefused, match="no warm_start/meta.json"):
        warm_start.load(str(tmp_path / "old-model" / "Format-Serving"), new.scorer,
                        _files(tmp_path, "new", NEW_TOPICS, NEW_TYPES), 1)


def test_tf_sees_the_assigned_rows(spec, tmp_path):
    """The assigned values are what the tower computes with (not a copy beside the variable)."""
    old = _towers(spec, OLD_TOPICS, OLD_TYPES, seed=1)
    new = _towers(spec, OLD_TOPICS, OLD_TYPES, seed=2)
    files = _files(tmp_path, "same", OLD_TOPICS, OLD_TYPES)
    warm_start.save(str(tmp_path / "m"), old.scorer, files, 1, span=1)
    warm_start.load(str(tmp_path / "m" / "Format-Serving"), new.scorer, files, 1)
    x = {name: tf.zeros([2] + list(t.shape[1:]), t.dtype) for name, t in old.user.input.items()}
    np.testing.assert_allclose(new.user(x).numpy(), old.user(x).numpy(), rtol=1e-6)


@pytest.mark.parametrize("damage", ["weights", "meta"])
def test_a_damaged_base_model_is_refused_with_the_file_named(spec, tmp_path, damage):
    old = _towers(spec, OLD_TOPICS, OLD_TYPES, seed=1)
    new = _towers(spec, NEW_TOPICS, NEW_TYPES, seed=2)
    files = _files(tmp_path, "same", OLD_TOPICS, OLD_TYPES)
    warm_start.save(str(tmp_path / "m"), old.scorer, files, 1, span=1)
    target = tmp_path / "m" / "warm_start" / ("weights.npz" if damage == "weights" else "meta.json")
    target.write_bytes(target.read_bytes()[:40])  # truncated
    before = [v.numpy().copy() for v in new.scorer.variables]
    with pytest.raises(warm_start.WarmStartRefused, match=f"{target.name} is unreadable"):
        warm_start.load(str(tmp_path / "m" / "Format-Serving"), new.scorer, files, 1)
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, new.scorer.variables, strict=True))


def test_the_resolver_takes_the_newest_pushed_model_of_an_earlier_span(spec, tmp_path):
    from tfx.types import standard_artifacts

    towers = _towers(spec, OLD_TOPICS, OLD_TYPES, seed=1)
    files = _files(tmp_path, "vocab", OLD_TOPICS, OLD_TYPES)
    models, pushed = [], []
    # id: (span, pushed): 4 is the newest of an earlier span but was not pushed; 5 is today's span
    for model_id, span, was_pushed in [(1, 1, True), (2, 2, True), (3, 1, True), (4, 2, False), (5, 3, True)]:
        uri = str(tmp_path / f"model{model_id}")
        warm_start.save(uri, towers.scorer, files, 1, span=span)
        m = standard_artifacts.Model()
        m.uri, m.id = uri, model_id
        models.append(m)
        p = standard_artifacts.PushedModel()
        p.set_int_custom_property("pushed", int(was_pushed))
        p.set_string_custom_property("model_uri", uri)
        pushed.append(p)
    strategy = LatestPushedModelBeforeSpan(before_span=3)
    got = strategy.resolve_artifacts(None, {"model": models, "pushed_model": pushed})
    assert [m.id for m in got["model"]] == [3]  # not 4 (never pushed), not 5 (span 3 itself)
    (tmp_path / "model3" / "warm_start" / "meta.json").write_text("{not json")
    got = strategy.resolve_artifacts(None, {"model": models, "pushed_model": pushed})
    assert [m.id for m in got["model"]] == [2]  # the damaged one is passed over
    assert LatestPushedModelBeforeSpan(before_span=1).resolve_artifacts(
        None, {"model": models, "pushed_model": pushed})["model"] == []
