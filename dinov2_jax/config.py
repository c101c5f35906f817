"""Config files, command-line overrides, the LR scaling rules and the saved merged config.

A config file is a Python file with `get_config() -> ml_collections.ConfigDict` (see `configs/`).
Overrides are dotted `key=value` strings (`optim.base_lr=0.002`), the same text that follows
`--config.` on the command line. Every key must already exist in the config: an unknown key is an
error naming the key and the closest existing keys.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import math
import os
from typing import Any, Iterable, Sequence

import ml_collections


class ConfigKeyError(KeyError):
    """An override names a key the config does not have."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Imports `path` and returns its `get_config()`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist (expected e.g. configs/quickstart.py)")
    name = "_dinov2_jax_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path!r} defines no get_config()")
    return module.get_config()


def flat_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """All leaf keys of `cfg` as dotted paths, e.g. `optim.base_lr`."""
    keys = []
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(flat_keys(v, path + "."))
        else:
            keys.append(path)
    return keys


# Keys of the official ssl_default_config.yaml that no official code reads; our configs leave them out and
# an override of one says why instead of suggesting look-alike keys.
UNREAD_OFFICIAL_KEYS = {
    "train.saveckp_freq": "checkpoints are written every train.checkpoint_period iterations",
    "train.cache_dataset": "images are always read from train.dataset_path as they are needed",
}


def check_key(cfg: ml_collections.ConfigDict, key: str) -> None:
    """Raises ConfigKeyError naming `key` and its closest matches if `cfg` has no leaf `key`."""
    keys = flat_keys(cfg)
    if key in keys:
        return
    if key in UNREAD_OFFICIAL_KEYS:
        raise ConfigKeyError(f"config key {key!r} is in the official ssl_default_config.yaml, but the official "
                             f"code never reads it, so dinov2_jax has no such key: {UNREAD_OFFICIAL_KEYS[key]}.")
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if not close:  # also try matching the last component alone (e.g. `optim.baselr` -> `base_lr`)
        last = key.split(".")[-1]
        close = [k for k in keys if difflib.get_close_matches(last, [k.split(".")[-1]], cutoff=0.7)][:3]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigKeyError(f"unknown config key {key!r}.{hint} (all keys: configs/ssl_default.py)")


def _parse_value(text: str, current: Any) -> Any:
    """Parses an override value with Python literal syntax; a bare word stays a string."""
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        if text.lower() in ("inf", "+inf", "-inf", "nan"):
            return float(text)
        return text
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    return value


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
    """Returns a copy of `cfg` with `key=value` overrides applied (types are checked by ml_collections)."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())  # a copy, type-safe like the original
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value, e.g. optim.base_lr=0.002")
        key, text = item.split("=", 1)
        key = key.strip()
        if key.startswith("--config."):
            key = key[len("--config."):]
        check_key(cfg, key)
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        value = _parse_value(text, node[leaf])
        try:
            node[leaf] = value
        except TypeError as e:
            raise TypeError(f"config key {key!r}: cannot set {value!r} ({e})") from None
    return cfg


def check_argv_overrides(cfg: ml_collections.ConfigDict, argv: Sequence[str], flag: str = "config") -> None:
    """Validates every `--config.KEY[=v]` in `argv` against `cfg` before absl parses them."""
    prefix = f"--{flag}."
    for arg in argv:
        if arg.startswith(prefix):
            check_key(cfg, arg[len(prefix):].split("=", 1)[0])


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`get_config()` of `path` with `overrides` applied (not yet finalized)."""
    return apply_overrides(load_config_file(path), overrides)


SCALING_RULES = {
    # DINOv2 (dinov2/train/ssl_meta_arch.py apply_scaling_rules_to_cfg): base_lr is for a batch of 1024
    "sqrt_wrt_1024": lambda base_lr, batch: base_lr * math.sqrt(batch / 1024.0),
    # DINO v1 (main_dino.py, "linear scaling rule"): base_lr is for a batch of 256
    "linear_wrt_256": lambda base_lr, batch: base_lr * batch / 256.0,
}


def scaled_lr(cfg: ml_collections.ConfigDict, world_size: int) -> float:
    """Peak lr from `optim.base_lr` and the global batch (batch_size_per_gpu * world_size) by
    `optim.scaling_rule`: 'sqrt_wrt_1024' (DINOv2) or 'linear_wrt_256' (DINO v1)."""
    rule = SCALING_RULES.get(cfg.optim.scaling_rule)
    if rule is None:
        raise NotImplementedError(
            f"optim.scaling_rule={cfg.optim.scaling_rule!r}; use one of {sorted(SCALING_RULES)}")
    global_batch = cfg.train.batch_size_per_gpu * world_size
    return float(rule(float(cfg.optim.base_lr), global_batch))


def finalize_config(cfg: ml_collections.ConfigDict, world_size: int) -> ml_collections.ConfigDict:
    """Returns a copy with `optim.lr` set by the scaling rule.

    The value is computed from `base_lr` (never from a previous `lr`), so finalizing twice, e.g. on a
    resumed run, gives the same lr: the rule is applied exactly once.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.optim.lr = scaled_lr(cfg, world_size)
    return cfg


def config_to_json(cfg: ml_collections.ConfigDict) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=list)


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """Inverse of `config_to_json` (tuples come back as lists, then are restored as tuples)."""
    def fix(d):
        return {k: fix(v) if isinstance(v, dict) else (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    return ml_collections.ConfigDict(fix(json.loads(text)))


def save_config(cfg: ml_collections.ConfigDict, output_dir: str) -> None:
    """Writes the merged config as `config.json` and `config.yaml` (official name) in `output_dir`."""
    import yaml

    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "config.json"), "w") as f:
        f.write(config_to_json(cfg) + "\n")
    plain = json.loads(config_to_json(cfg))
    with open(os.path.join(output_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(plain, f, sort_keys=True)


def config_diff(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> list[str]:
    """Dotted keys whose values differ between `a` and `b` (keys missing on one side included)."""
    fa = json.loads(config_to_json(a))
    fb = json.loads(config_to_json(b))

    def flat(d, p=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{p}{k}."))
            else:
                out[f"{p}{k}"] = v
        return out

    xa, xb = flat(fa), flat(fb)
    return sorted(k for k in set(xa) | set(xb) if xa.get(k, object()) != xb.get(k, object()))


def load_sibling_module(config_file: str, name: str):
    """Imports `name.py` from the directory of `config_file` (configs build on `ssl_default.py`)."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name + ".py")
    spec = importlib.util.spec_from_file_location(f"_dinov2_jax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
