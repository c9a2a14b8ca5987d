"""Binding a gRPC server's port, with one line when it cannot be bound (grpc raises a RuntimeError that
asks for GRPC_VERBOSITY). TensorFlow-free: the recall service binds with it too."""
from __future__ import annotations

import grpc


def grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def bind_grpc(server: grpc.Server, host: str, port: int) -> int:
    """The bound port (port 0 picks a free one); OSError naming the address when it cannot be bound."""
    try:
        bound = server.add_insecure_port(f"{grpc_host(host)}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} (gRPC): the port is in use or the address is not this "
                      "machine's; pick another with --port")
    return bound


def port_in_use(host: str, port: int) -> bool:
    """Whether another socket listens on host:port (checked as a server binds: SO_REUSEADDR, so a port
    left in TIME_WAIT counts as free). Lets a server say so in one line before it loads anything."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False
