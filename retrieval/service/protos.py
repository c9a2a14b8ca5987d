"""The recall service's gRPC stubs, generated from recall_service.proto at setup (as TF Serving ships
its APIs): `python -m retrieval.service.protos` writes recall_service_pb2.py and
recall_service_pb2_grpc.py beside the .proto (scripts/setup_venv.sh runs it; they are not committed).
`load()` imports them, and says how to make them when they are missing or older than the .proto."""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "recall_service.proto")
GENERATED = [os.path.join(HERE, "recall_service_pb2.py"), os.path.join(HERE, "recall_service_pb2_grpc.py")]
ROOT = os.path.dirname(os.path.dirname(HERE))  # the import root: the modules import retrieval.service.*


def generate() -> None:
    import warnings

    with warnings.catch_warnings():  # grpc_tools imports pkg_resources, which warns that it is deprecated
        warnings.simplefilter("ignore")
        from grpc_tools import protoc

    rc = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={ROOT}", f"--grpc_python_out={ROOT}",
                      os.path.relpath(PROTO, ROOT)])
    if rc != 0:
        raise SystemExit(f"error: protoc failed on {PROTO} (exit code {rc})")


def stale() -> str | None:
    """Why the generated modules cannot be used (None: they can)."""
    missing = [p for p in GENERATED if not os.path.exists(p)]
    if missing:
        return f"{os.path.basename(missing[0])} is missing"
    if any(os.path.getmtime(p) < os.path.getmtime(PROTO) for p in GENERATED):
        return f"{os.path.basename(PROTO)} changed since its stubs were generated"
    return None


def load():
    """(recall_service_pb2, recall_service_pb2_grpc)."""
    problem = stale()
    if problem:
        raise SystemExit(f"error: the recall service's gRPC stubs are generated at setup and {problem}: "
                         f"run `make setup` (or .venv/bin/python -m retrieval.service.protos)")
    from retrieval.service import recall_service_pb2, recall_service_pb2_grpc

    return recall_service_pb2, recall_service_pb2_grpc


if __name__ == "__main__":
    generate()
    print(f"generated {', '.join(os.path.relpath(p) for p in GENERATED)}", file=sys.stderr)
