"""The pipeline's DAG as create_pipeline builds it, without running it: which component reads which
output, and the order constraints that are not data (Transform waits for the anomaly gate). The
expected wiring is the design's, written out here by hand."""
import json

from pipeline.config import load_config
from pipeline.pipeline import PipelineInputs, create_pipeline
from schema.spec import load_spec

# component -> {input key: (producer, output key)}
WIRING = {
    "TsvExampleGen": {},
    "StatisticsGen": {"examples": ("TsvExampleGen", "examples")},
    "ImportSchemaGen": {},
    "ExampleValidator": {"statistics": ("StatisticsGen", "statistics"), "schema": ("ImportSchemaGen", "schema")},
    "AnomalyGate": {"anomalies": ("ExampleValidator", "anomalies")},
    "item_vectors_importer": {},
    "Transform": {"examples": ("TsvExampleGen", "examples"), "schema": ("ImportSchemaGen", "schema")},
    "TransformedStatisticsGen": {"examples": ("Transform", "transformed_examples")},
    "Trainer": {"examples": ("Transform", "transformed_examples"), "transform_graph": ("Transform", "transform_graph"),
                "schema": ("ImportSchemaGen", "schema")},
    "RetrievalEvaluator": {"model": ("Trainer", "model"), "model_run": ("Trainer", "model_run"),
                           "examples": ("TsvExampleGen", "examples"),
                           "item_vectors": ("item_vectors_importer", "result")},
    "ServingInfraValidator": {"model": ("Trainer", "model"), "examples": ("TsvExampleGen", "examples"),
                              "item_vectors": ("item_vectors_importer", "result")},
    "TowerPusher": {"model": ("Trainer", "model"), "model_blessing": ("RetrievalEvaluator", "blessing"),
                    "infra_blessing": ("ServingInfraValidator", "blessing")},
    "ItemIndexer": {"model": ("Trainer", "model"), "model_blessing": ("RetrievalEvaluator", "blessing"),
                    "infra_blessing": ("ServingInfraValidator", "blessing"),
                    "pushed_model": ("TowerPusher", "pushed_model"), "examples": ("TsvExampleGen", "examples"),
                    "item_vectors": ("item_vectors_importer", "result")},
}


def _pipeline(**config_overrides):
    inputs = PipelineInputs(input_base="/in", train_pattern="train.tsv", eval_pattern="eval.tsv", input_pattern=None,
                            item_vectors_dir="/vectors", item_vectors_dim=32, item_vectors_count=10,
                            item_vectors_sha256="0" * 64, feature_spec_json=load_spec().to_json(),
                            code_fingerprint="f" * 16)
    return create_pipeline("/root", "/serving", inputs, load_config(overrides=config_overrides),
                           milvus_uri="/work/milvus.db")


def test_every_component_reads_the_outputs_the_design_says():
    components = {c.id: c for c in _pipeline().components}
    assert set(components) == set(WIRING)
    for cid, expected in WIRING.items():
        got = {key: (ch.producer_component_id, ch.output_key) for key, ch in components[cid].inputs.items()}
        assert got == expected, cid


def test_transform_waits_for_the_anomaly_gate_and_settings_reach_their_components():
    components = {c.id: c for c in _pipeline(keep_pushed_versions=5, evaluation={"bless_k": 10}).components}
    assert "AnomalyGate" in {n.id for n in components["Transform"].upstream_nodes}
    assert json.loads(components["RetrievalEvaluator"].exec_properties["evaluation_config"])["bless_k"] == 10
    assert '"keep_versions": 5' in components["TowerPusher"].exec_properties["custom_config"]
    indexer = components["ItemIndexer"].exec_properties
    assert '"uri": "/work/milvus.db"' in indexer["index_config"] and indexer["code_fingerprint"] == "f" * 16
    assert components["TsvExampleGen"].exec_properties["code_fingerprint"] == "f" * 16


def _span_pipeline(span, no_warm_start_because=None, **config_overrides):
    inputs = PipelineInputs(input_base="/in", train_pattern="day-{SPAN}/train.tsv", eval_pattern="day-{SPAN}/eval.tsv",
                            input_pattern=None, item_vectors_dir="/vectors", item_vectors_dim=32,
                            item_vectors_count=10, item_vectors_sha256="0" * 64,
                            feature_spec_json=load_spec().to_json(), span=span)
    return {c.id: c for c in create_pipeline("/root", "/serving", inputs, load_config(overrides=config_overrides),
                                             milvus_uri="/work/milvus.db",
                                             no_warm_start_because=no_warm_start_because).components}


def test_a_span_run_warm_starts_from_the_resolver_of_earlier_spans():
    import json

    from components.warm_start_resolver import LatestPushedModelBeforeSpan

    components = _span_pipeline(3)
    resolver = components["warm_start_resolver"]
    assert resolver.exec_properties["resolver_class"] is LatestPushedModelBeforeSpan
    assert resolver.exec_properties["source_uri"] == {"before_span": 3}  # TFX keeps the strategy's config there
    base = components["Trainer"].inputs["base_model"]
    assert (base.producer_component_id, base.output_key) == ("warm_start_resolver", "model")
    custom = json.loads(components["Trainer"].exec_properties["custom_config"])
    assert custom["span"] == 3 and custom["warm_start"] is True


def test_no_resolver_without_spans_when_switched_off_or_on_kubeflow():
    import json

    assert "warm_start_resolver" not in {c.id for c in _pipeline().components}
    assert "warm_start_resolver" not in _span_pipeline(3, continuous={"warm_start": False})

    components = _span_pipeline(3, no_warm_start_because="Kubeflow runs do not warm start")
    assert "warm_start_resolver" not in components and "base_model" not in components["Trainer"].inputs
    custom = json.loads(components["Trainer"].exec_properties["custom_config"])
    assert custom["warm_start"] is False and custom["no_warm_start_because"] == "Kubeflow runs do not warm start"
