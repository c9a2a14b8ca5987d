"""The recall service (python -m retrieval.service): core.py the handlers, grpc_api.py and rest.py the front ends."""
