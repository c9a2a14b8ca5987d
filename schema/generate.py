"""Derive the TFDV schema of ExampleGen's tf.Examples from the feature spec.

    python -m schema.generate [--spec schema/feature_spec.yaml] [--out schema/schema.pbtxt]

The committed schema/schema.pbtxt is this output for the default spec (a test checks it); edit the
spec, then regenerate. ImportSchemaGen feeds it to ExampleValidator and Transform.
"""
from __future__ import annotations

import argparse

from schema.spec import DEFAULT_SCHEMA_PATH, DEFAULT_SPEC_PATH, FeatureSpec, load_spec


def schema_from_spec(spec: FeatureSpec):
    from tensorflow_metadata.proto.v0 import schema_pb2  # noqa: F401  (proto types)
    from tensorflow_transform.tf_metadata import schema_utils

    schema = schema_utils.schema_from_feature_spec(spec.raw_feature_spec(include_label=True))
    ranges = {spec.label: [0, 1]}
    ranges.update({f.column: f.int_range for f in spec.features if f.int_range})
    for feature in schema.feature:
        if feature.name in ranges:
            feature.int_domain.min, feature.int_domain.max = ranges[feature.name]
    return schema


def schema_text(spec: FeatureSpec) -> str:
    from google.protobuf import text_format

    header = "# Generated from schema/feature_spec.yaml by `python -m schema.generate`; do not edit by hand.\n"
    return header + text_format.MessageToString(schema_from_spec(spec))


def read_schema(path: str):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    with open(path, encoding="utf-8") as f:
        return text_format.Parse(f.read(), schema_pb2.Schema())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=DEFAULT_SPEC_PATH)
    p.add_argument("--out", default=DEFAULT_SCHEMA_PATH)
    args = p.parse_args(argv)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(schema_text(load_spec(args.spec)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
