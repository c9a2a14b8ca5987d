"""Loaded model versions and their lifecycle, as TF Serving's manager keeps them.

A version is a directory <base_path>/<integer>/ holding saved_model.pb. The manager polls each base
path, loads the versions that the model's version policy wants (running the warmup requests in
assets.extra/ first, as TF Serving does), and only then unloads the versions that are no longer
wanted: a request resolved to a version keeps a reference to it, so a swap never fails a request
in flight. Request fields never become paths: a model name or version is only a key into what was
loaded from the configured base paths, and a config (file or reload request) is refused unless every
base path lies under the operator's roots (model_config.check_under_roots).

A version is loaded only once it is complete on disk (saved_model.pb, the variables index and every
data shard it names), so a copy in progress is not tried. A version whose load fails stays in END
with the error while the versions already loaded keep serving: a version is unloaded only once every
version the policy wants in its place is AVAILABLE, so a failed load never takes the serving one down,
whatever happens to the failed version's files during or after the load. A failed version is tried
again when its files have changed and then stayed the same for settle_seconds, no sooner than its
backoff (retry_seconds, doubled after each failure, at most MAX_RETRY_SECONDS).

Nothing outside the roots is opened: before a version loads, its directory and every file and
directory under it are resolved (symbolic links followed) and must lie under a root, and a base path
is resolved again at every poll (one planted as a link after the reload is refused, and said so in
the model's status).
"""
from __future__ import annotations

import gc
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from serving.memory import return_freed_memory
from serving.model_config import ConfigError, ModelConfig, check_under_roots
from serving.request_cost import Contract
from serving.status import ServingError, invalid_argument, not_found

log = logging.getLogger("serving")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
SERVE_TAG = "serve"
MAX_RETRY_SECONDS = 300.0


@dataclass
class VersionState:
    state: str
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""
    files: tuple = ()  # a failed version's files (name, size, mtime) when it failed: retried once they change
    failures: int = 0      # failed loads in a row (the backoff doubles with each)
    retry_at: float = 0.0  # time.monotonic() before which a failed version is not tried again

    @property
    def failed(self) -> bool:
        return self.state == END and self.error_code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED)


class Servable:
    """One loaded version: its SignatureDefs (for validation and metadata) and callable signatures."""

    def __init__(self, name: str, version: int, path: str):
        self.name, self.version, self.path = name, version, path
        self.signature_defs = read_signature_defs(path)
        self.contract = Contract.read(path)  # what a request may cost and hold (serving/request_cost.py)
        self._model = tf.saved_model.load(path, tags=[SERVE_TAG])
        self._functions = {k: _FlatCall(fn) for k, fn in self._model.signatures.items()}
        # per signature: {alias: tf dtype} of its inputs, looked up on every request
        self._input_dtypes = {k: {a: tf.dtypes.as_dtype(t.dtype) for a, t in self.signature_defs[k].inputs.items()}
                              for k in self._functions}

    def callable_signature(self, name: str) -> bool:
        """Metadata lists every SignatureDef (with __saved_model_init_op, as TF Serving does); only
        these can be run."""
        return name in self._functions

    def run(self, signature_name: str, arrays: dict[str, np.ndarray], output_keys: list[str]) -> dict:
        """Runs a signature on validated inputs; TensorFlow errors keep their status code."""
        sig = self.signature_defs[signature_name]
        for alias, a in arrays.items():
            _check_shape(alias, a.shape, sig.inputs[alias].tensor_shape)
        dtypes = self._input_dtypes[signature_name]
        call = self._functions[signature_name]
        try:
            out = call([tf.constant(arrays[alias], dtype=dtypes[alias]) for alias in call.input_names])
        except tf.errors.OpError as e:
            raise ServingError(grpc.StatusCode(_grpc_code(e.error_code)), e.message) from None
        except (TypeError, ValueError) as e:  # shapes that do not fit the signature
            raise invalid_argument(str(e).splitlines()[0]) from None
        return {k: out[k].numpy() for k in output_keys}


class _FlatCall:
    """A signature traced into one graph function that takes its inputs as a list, in input_names
    order. The same computation, minus per-request Python work: the restored signature binds its
    arguments and maps each of its captured variables on every call, and a traced function binds
    again and checks for gradient tapes. Together about 0.2 ms of a 0.6 ms batch-1 call."""

    def __init__(self, signature):
        specs = signature.structured_input_signature[1]
        self.input_names = sorted(specs)
        names = self.input_names
        self._traced = tf.function(lambda *args: signature(**dict(zip(names, args, strict=True)))
                                   ).get_concrete_function(*(specs[n] for n in names))
        # TensorFlow's own call path when no gradient tape records (ConcreteFunction._call_flat):
        # the atomic function on the inputs plus the captured variables. Private in TF 2.16, so
        # another TensorFlow falls back to the public call.
        self._atomic = getattr(self._traced, "_inference_function", None)
        self._captured = list(self._traced.captured_inputs)

    def __call__(self, tensors: list) -> dict:
        if self._atomic is None:
            return self._traced(*tensors)
        return self._traced.function_type.pack_output(self._atomic.call_flat(*tensors, *self._captured))


def _check_shape(alias: str, shape: tuple, expected) -> None:
    """Restored signatures do not check shapes themselves; a tensor of another rank is refused here."""
    if expected.unknown_rank:
        return
    dims = [d.size for d in expected.dim]
    if len(dims) != len(shape) or any(d >= 0 and d != s for d, s in zip(dims, shape, strict=True)):
        raise invalid_argument(f"input {alias}: shape {list(shape)} does not match the signature's shape "
                               f"{[d if d >= 0 else None for d in dims]}")


def _grpc_code(tf_code: int):
    """The grpc.StatusCode value tuple for a TensorFlow error code (the numbers are the same)."""
    for code in grpc.StatusCode:
        if code.value[0] == tf_code:
            return code.value
    return grpc.StatusCode.UNKNOWN.value


MAX_SAVED_MODEL_PB_BYTES = 1 << 30  # protobuf's own limit is 2 GiB; a graph this size is not a tower


def read_signature_defs(path: str) -> dict:
    """The serve MetaGraph's SignatureDefs; a saved_model.pb over MAX_SAVED_MODEL_PB_BYTES is refused
    from its size, before it is read (a 3 GiB sparse file cost 3 GB)."""
    pb = os.path.join(path, "saved_model.pb")
    size = os.path.getsize(pb)
    if size > MAX_SAVED_MODEL_PB_BYTES:
        raise ValueError(f"{pb}: {size:,} bytes, more than {MAX_SAVED_MODEL_PB_BYTES:,}: not read")
    proto = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        proto.ParseFromString(f.read())
    for meta_graph in proto.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{path}: no MetaGraph with tag '{SERVE_TAG}'")


_SHARD = re.compile(r"variables\.data-([0-9]{5})-of-([0-9]{5})")


def missing_part(path: str) -> str | None:
    """What a version directory lacks to be a complete SavedModel (None: complete): saved_model.pb,
    variables/variables.index and every data shard the shard names count (variables.data-0000k-of-
    0000N, k < N). tf.saved_model.save always writes variables/, so a version without it is a copy
    that has not got there yet."""
    variables = os.path.join(path, "variables")
    for needed in (os.path.join(path, "saved_model.pb"), os.path.join(variables, "variables.index")):
        if not os.path.isfile(needed):
            return os.path.relpath(needed, path)
    try:
        shards = [m.groups() for m in map(_SHARD.fullmatch, os.listdir(variables)) if m]
    except OSError:
        return "variables/"
    counts = {int(n) for _, n in shards}
    if len(counts) != 1:
        return "variables/variables.data-* (no shard, or shards of different counts)"
    (n,) = counts
    missing = sorted(set(range(n)) - {int(k) for k, _ in shards})
    return f"variables/variables.data-{missing[0]:05d}-of-{n:05d}" if missing else None


def version_is_complete(path: str) -> bool:
    return missing_part(path) is None


def version_files(path: str) -> tuple:
    """(relative name, size, mtime_ns) of every file under a version directory: what a retry compares."""
    out = []
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            try:
                st = os.stat(full)
            except OSError:
                continue
            out.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def under_roots(path: str, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in map(os.path.realpath, roots))


def outside_roots(path: str, roots: list[str]) -> str | None:
    """The first of a version directory, or of the directories and files under it, that resolves to
    a place outside the roots (None: all lie under them). Links are followed only once checked."""
    if not under_roots(path, roots):
        return path
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            if not under_roots(full, roots):
                return full
    return None


def versions_on_disk(base_path: str) -> dict[int, str]:
    """{version: path} of the complete versions under base_path (see version_is_complete)."""
    found = {}
    try:
        entries = os.listdir(base_path)
    except OSError:
        return found
    for entry in entries:
        path = os.path.join(base_path, entry)
        if entry.isdigit() and version_is_complete(path):
            found[int(entry)] = path  # "00000123" is version 123
    return found


DEFAULT_MAX_MODELS = 32  # the most models one config may name (each loaded model holds its graph in memory)


class ServableManager:
    def __init__(self, configs: list[ModelConfig], poll_seconds: float = 1.0,
                 config_file: str | None = None, config_poll_seconds: float = 0,
                 warmup: Callable[[Servable], None] | None = None, roots: list[str] | None = None,
                 allow_empty_config: bool = False, max_models: int = DEFAULT_MAX_MODELS, settle_seconds: float = 1.0,
                 retry_seconds: float = 1.0):
        """roots: the only directories base paths (and every file a version is loaded from) may lie
        under (default: the first configs' base paths themselves); max_models: the most models one
        config may name (0: no limit); settle_seconds: how long a failed version's changed files must
        stay the same before it is tried again; retry_seconds: its first backoff."""
        self._settle_seconds, self._retry_seconds = settle_seconds, retry_seconds
        self._seen: dict[tuple[str, int], tuple[tuple, float]] = {}  # a failed version's files, and since when
        self._model_errors: dict[str, str] = {}  # why a model has no versions (a base path out of the roots)
        self._warmup = warmup  # replays a version's warmup requests before it serves (serving/predict.py)
        self.roots = list(roots) if roots is not None else [c.base_path for c in configs]
        self._allow_empty, self._max_models = allow_empty_config, max_models
        self.check(configs)
        self._configs = {c.name: c for c in configs}
        self._poll_seconds = poll_seconds
        self._config_file = config_file
        self._config_poll_seconds = config_poll_seconds
        self._lock = threading.Lock()       # guards the maps below
        self._poll_lock = threading.Lock()  # one poll (load / unload pass) at a time
        self._available: dict[str, dict[int, Servable]] = {}
        self._states: dict[str, dict[int, VersionState]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- lifecycle ----
    def start(self) -> None:
        """Loads what is on disk now, then keeps polling in the background (poll_seconds > 0)."""
        self.poll_once()
        if self._poll_seconds > 0:
            self._threads.append(self._every(self._poll_seconds, self.poll_once))
        if self._config_file and self._config_poll_seconds > 0:
            self._threads.append(self._every(self._config_poll_seconds, self._reload_config_file))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _every(self, seconds: float, fn) -> threading.Thread:
        def loop():
            while not self._stop.wait(seconds):
                try:
                    fn()
                except Exception:  # a poll that fails must not stop polling
                    log.exception("poll failed")

        t = threading.Thread(target=loop, daemon=True, name=f"poll-{fn.__name__}")
        t.start()
        return t

    def _reload_config_file(self) -> None:
        from serving.model_config import read_config_file

        try:
            self.reload(read_config_file(self._config_file))
        except ConfigError as e:
            log.error("keeping the current models: %s", e)

    def check(self, configs: list[ModelConfig]) -> None:
        """ConfigError for a config this server must not take: a base path outside the roots, no model
        (unless allowed), more models than max_models."""
        check_under_roots(configs, self.roots, self._allow_empty)
        if self._max_models and len(configs) > self._max_models:
            raise ConfigError(f"the config names {len(configs)} models, more than --max_models {self._max_models}")

    def reload(self, configs: list[ModelConfig]) -> None:
        """Serves exactly these models from now on (HandleReloadConfigRequest, config file polling);
        ConfigError, with nothing changed, for a config that check() refuses."""
        self.check(configs)
        with self._lock:
            removed = set(self._configs) - {c.name for c in configs}
            self._configs = {c.name: c for c in configs}
            for name in removed:
                for version in list(self._available.get(name, {})):
                    self._unload(name, version)
                self._states.pop(name, None)
        if removed:
            _release()
        self.poll_once()

    def poll_once(self) -> None:
        with self._poll_lock:
            with self._lock:
                configs = list(self._configs.values())
            for config in configs:
                self._sync_model(config)

    def _sync_model(self, config: ModelConfig) -> None:
        with self._lock:
            states = self._states.setdefault(config.name, {})
        if not under_roots(config.base_path, self.roots):  # e.g. planted as a link after the reload
            message = (f"base path {config.base_path} resolves to {os.path.realpath(config.base_path)}, outside the "
                       f"model base path roots {self.roots}: nothing is read from it")
            with self._lock:
                self._model_errors[config.name] = message
            log.error("model %s: %s", config.name, message)
            on_disk = {}
        else:
            with self._lock:
                self._model_errors.pop(config.name, None)
            on_disk = self._within_roots(config.name, states, versions_on_disk(config.base_path))
        for version in config.aspired(self._loadable(config.name, states, on_disk)):
            known = states.get(version)
            if known and known.state in (AVAILABLE, LOADING):
                continue
            self._load(config, version, on_disk[version])
        # The policy again, now over the versions that did not just fail.
        aspired = config.aspired(self._loadable(config.name, states, on_disk))
        unloaded = False
        with self._lock:
            if self._configs.get(config.name) is not config:
                return  # reconfigured meanwhile
            available = self._available.get(config.name, {})
            # Availability first: the old versions stay until every wanted one serves. A wanted
            # version that failed (or whose files changed after it failed) never unloads one that serves.
            if any(v not in available for v in aspired):
                return
            for version in list(available):
                if version not in aspired:
                    self._unload(config.name, version)
                    unloaded = True
        if unloaded:
            _release()

    def _within_roots(self, name: str, states: dict[int, VersionState], on_disk: dict[int, str]) -> dict[int, str]:
        """on_disk less the versions whose directory or files resolve outside the roots: END, with why."""
        kept = {}
        for version, path in on_disk.items():
            outside = outside_roots(path, self.roots)
            if outside is None:
                kept[version] = path
                continue
            message = (f"{outside} resolves to {os.path.realpath(outside)}, outside the model base path roots "
                       f"{self.roots}: the version is not loaded")
            with self._lock:
                known = states.get(version)
                if known is None or known.error_message != message:
                    log.error("model %s version %d: %s", name, version, message)
                states[version] = VersionState(END, grpc.StatusCode.PERMISSION_DENIED, message)
        return kept

    def _loadable(self, name: str, states: dict[int, VersionState], on_disk: dict[int, str]) -> list[int]:
        """The versions on disk, but a failed one only once its files changed since it failed, have
        stayed the same for settle_seconds, and its backoff has passed."""
        with self._lock:
            failed = {v: s for v, s in states.items() if s.failed}
        now, out = time.monotonic(), []
        for version, path in on_disk.items():
            state = failed.get(version)
            if state is None:
                out.append(version)
                continue
            files = version_files(path)
            seen, since = self._seen.get((name, version), ((), now))
            if files != seen:
                self._seen[(name, version)] = (files, now)
                since = now
            if files != state.files and now - since >= self._settle_seconds and now >= state.retry_at:
                out.append(version)
        return out

    def _load(self, config: ModelConfig, version: int, path: str) -> None:
        """Loads outside the lock (seconds); adds the version only if the config that asked for it is
        still the one served. A reload that dropped (or changed) the model while it loaded wins: the
        version is discarded, never added after the reload's unloads have run."""
        name = config.name
        with self._lock:
            states = self._states.setdefault(name, {})
            failures = states[version].failures if version in states and states[version].failed else 0
            states[version] = VersionState(LOADING)
        log.info("loading %s version %d from %s", name, version, path)
        files = version_files(path)
        try:
            outside = outside_roots(path, self.roots)  # again, just before the files are opened
            if outside is not None:
                raise PermissionError(f"{outside} resolves to {os.path.realpath(outside)}, outside the model "
                                      f"base path roots {self.roots}")
            servable = Servable(name, version, path)
            if self._warmup is not None:
                self._warmup(servable)
        except Exception as e:  # a broken version is reported in its status; the others keep serving
            backoff = min(self._retry_seconds * 2 ** failures, MAX_RETRY_SECONDS)
            log.error("failed to load %s version %d (tried again %g s after its files change and settle): %s",
                      name, version, backoff, e)
            with self._lock:
                states[version] = VersionState(END, grpc.StatusCode.UNKNOWN, f"{type(e).__name__}: {e}", files,
                                               failures + 1, time.monotonic() + backoff)
                self._seen[(name, version)] = (files, time.monotonic())
            return
        with self._lock:
            if self._configs.get(name) != config:
                states[version] = VersionState(END, grpc.StatusCode.CANCELLED,
                                               "the model config changed while this version loaded")
                log.info("discarded %s version %d: the model config changed while it loaded", name, version)
                return
            self._available.setdefault(name, {})[version] = servable
            states[version] = VersionState(AVAILABLE)
        log.info("serving %s version %d", name, version)

    def _unload(self, name: str, version: int) -> None:
        """Under the lock: new requests stop resolving to it; requests in flight keep their reference."""
        self._states[name][version] = VersionState(UNLOADING)
        del self._available[name][version]
        self._states[name][version] = VersionState(END)
        log.info("unloaded %s version %d", name, version)

    # ---- queries ----
    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        with self._lock:
            config = self._configs.get(name)
            if label:
                if config is None or label not in config.labels:
                    raise invalid_argument(f"Unrecognized servable version label: {label}")
                version = config.labels[label]
            available = self._available.get(name, {})
            if version is None:
                if not available:
                    raise not_found(f"Servable not found for request: Latest({name})")
                return available[max(available)]
            if version not in available:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            return available[version]

    def version_states(self, name: str, version: int | None = None) -> list[tuple[int, VersionState]]:
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        with self._lock:
            states = dict(self._states.get(name, {})) if name in self._configs else {}
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            return [(version, states[version])]
        if not states:
            why = self._model_errors.get(name)
            raise not_found(f"Could not find any versions of model {name}" + (f": {why}" if why else ""))
        return sorted(states.items(), reverse=True)

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._configs)


def _release() -> None:
    """After unloads: the unloaded versions' objects are collected (a loaded SavedModel holds
    reference cycles) and the freed heap goes back to the system."""
    gc.collect()
    return_freed_memory()
