"""Reading a YAML file that must hold a mapping (the pipeline config, the feature spec): the same three
errors, worded the same, raised as the caller's own error type."""
from __future__ import annotations


def read_yaml_mapping(path: str, what: str, error: type[Exception], empty_is_ok: bool = False) -> dict:
    """The mapping at the top of the file; `error` naming the path for a file that cannot be read, is
    not YAML, or holds something else (an empty file is {} when empty_is_ok)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise error(f"{path}: cannot read {what} ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {e}") from None
    if data is None and empty_is_ok:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping at the top level")
    return data
