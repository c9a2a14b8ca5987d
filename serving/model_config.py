"""Which models to serve: TF Serving's --model_config_file (text ModelServerConfig) or one
--model_name/--model_base_path, turned into plain ModelConfig objects."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2


class ConfigError(ValueError):
    """The model config cannot be used; the server refuses to start (or keeps the old config)."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    policy: str = "latest"          # "latest" | "all" | "specific"
    num_versions: int = 1           # latest only
    versions: tuple[int, ...] = ()  # specific only
    labels: dict[str, int] = field(default_factory=dict)

    def aspired(self, on_disk: list[int]) -> list[int]:
        """The versions this policy wants loaded, out of those complete on disk."""
        if self.policy == "all":
            return sorted(on_disk)
        if self.policy == "specific":
            return sorted(v for v in on_disk if v in self.versions)
        return sorted(on_disk)[-self.num_versions:]


def check_under_roots(configs: list[ModelConfig], roots: list[str], allow_empty: bool = False) -> None:
    """ConfigError unless every base path lies under one of the operator's roots (symbolic links
    resolved, so a link inside a root cannot point out of it) and, unless allowed, the config names
    at least one model. Checked on the path's text alone: nothing under a refused path is read."""
    if not configs and not allow_empty:
        raise ConfigError("the config names no model: it would unload every model served "
                          "(start the server with --allow_empty_config to permit that)")
    real_roots = [os.path.realpath(r) for r in roots]
    for c in configs:
        if "\x00" in c.base_path:
            raise ConfigError(f"model {c.name}: base_path holds a NUL byte")
        real = os.path.realpath(c.base_path)
        if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in real_roots):
            raise ConfigError(f"model {c.name}: base_path {c.base_path} is not under the model base path roots "
                              f"{roots} (--model_base_path_roots)")


def default_roots(config_file: str | None, base_path: str | None) -> list[str]:
    """Where models may be loaded from when the operator names no roots: the config file's directory,
    or --model_base_path itself."""
    if config_file:
        return [os.path.dirname(os.path.abspath(config_file))]
    return [os.path.abspath(base_path)] if base_path else []


def single_model(name: str, base_path: str) -> list[ModelConfig]:
    if not name:
        raise ConfigError("--model_name must not be empty")
    return [ModelConfig(name=name, base_path=os.path.abspath(base_path))]


def parse_config_text(text: str) -> list[ModelConfig]:
    proto = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as e:
        raise ConfigError(f"Error parsing text-format tensorflow.serving.ModelServerConfig: {e}") from None
    return from_proto(proto)


def from_proto(proto) -> list[ModelConfig]:
    if proto.WhichOneof("config") == "custom_model_config":
        raise ConfigError("custom_model_config is not supported; use model_config_list")
    configs, seen = [], set()
    for c in proto.model_config_list.config:
        if not c.name:
            raise ConfigError("a model config has no name")
        if c.name in seen:
            raise ConfigError(f"model {c.name} is configured twice")
        if c.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"model {c.name}: model_platform {c.model_platform!r} is not supported (tensorflow)")
        if not c.base_path:
            raise ConfigError(f"model {c.name} has no base_path")
        seen.add(c.name)
        policy = c.model_version_policy.WhichOneof("policy_choice") or "latest"
        num = c.model_version_policy.latest.num_versions or 1
        versions = tuple(c.model_version_policy.specific.versions)
        if policy == "specific" and not versions:
            raise ConfigError(f"model {c.name}: specific version policy lists no version")
        labels = dict(c.version_labels)
        configs.append(ModelConfig(name=c.name, base_path=os.path.abspath(c.base_path), policy=policy,
                                   num_versions=num, versions=versions, labels=labels))
    return configs


def read_config_file(path: str) -> list[ModelConfig]:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read model config file {path}: {e}") from None
    return parse_config_text(text)


def config_text(configs: dict[str, str], num_versions: int = 1) -> str:
    """A ModelServerConfig text for {name: base_path} (what TF Serving's --model_config_file reads),
    serving the latest num_versions versions of each."""
    proto = model_server_config_pb2.ModelServerConfig()
    for name, base in configs.items():
        c = proto.model_config_list.config.add()
        c.name, c.base_path, c.model_platform = name, os.path.abspath(base), "tensorflow"
        if num_versions != 1:
            c.model_version_policy.latest.num_versions = num_versions
    return text_format.MessageToString(proto)
