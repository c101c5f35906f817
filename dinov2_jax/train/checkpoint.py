"""Orbax checkpoints of a training run: train state + data-iterator state + merged config.

Layout: `output_dir/ckpt/<step>/{state,data,config}` (`data`: one iterator state per process) where `step` is the number of completed
iterations, i.e. the iteration a resumed run starts at. Orbax writes each step into a temporary
directory (`<step>.orbax-checkpoint-tmp-*`) and renames it when complete, so a run killed mid-save
leaves no directory that `latest_step()` would pick up. Saves are asynchronous: device arrays are
copied to host before `save` returns, the files are written in a background thread.
"""
from __future__ import annotations

import base64
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

_BYTES = "__bytes_b64__"


def _to_jsonable(x: Any) -> Any:
    """Iterator states may hold bytes / numpy scalars; JSON needs plain types."""
    if isinstance(x, bytes):
        return {_BYTES: base64.b64encode(x).decode("ascii")}
    if isinstance(x, dict):
        return {str(k): _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def _from_jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {_BYTES}:
            return base64.b64decode(x[_BYTES])
        return {k: _from_jsonable(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_from_jsonable(v) for v in x]
    return x


def _gather_per_process(obj: Any) -> list:
    """[obj of process 0, ..., obj of process P-1] on every process (JSON through a uint8 all-gather).

    Each process reads its own shard of the data, so each has its own iterator state; Orbax's JsonSave
    writes from the primary process only, so all states travel to it first."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([raw.size], np.int64)).reshape(-1)
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[:raw.size] = raw
    bufs = multihost_utils.process_allgather(buf).reshape(len(sizes), -1)
    return [json.loads(bytes(b[:n]).decode()) for b, n in zip(bufs, sizes)]


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
    """Typed PRNG keys cannot be serialised: store their raw uint32 data instead."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract(tree: Any) -> Any:
    def leaf(x):
        if _is_key(x):
            x = jax.random.key_data(x)
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(leaf, tree)


def _data_to_keys(restored: Any, like: Any) -> Any:
    return jax.tree.map(
        lambda r, t: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t)) if _is_key(t) else r, restored, like)


def _this_process(data: dict, step: int) -> Any:
    """This process's data-iterator state out of the saved per-process list."""
    states = data["per_process"]
    if len(states) != jax.process_count():
        raise ValueError(
            f"checkpoint {step} holds data-iterator states of {len(states)} processes, but this run has "
            f"{jax.process_count()}: resume with the same number of processes (each reads its own data shard)")
    return _from_jsonable(states[jax.process_index()])


class Checkpointer:
    """Keeps the last `max_to_keep` checkpoints of a run in `directory`."""

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """Newest complete checkpoint (unfinished temporary directories are never listed)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: Any, config_json: str) -> None:
        """Starts saving; returns once arrays are on host (the files are written asynchronously)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_keys_to_data(state)),
            data=ocp.args.JsonSave({"per_process": _gather_per_process(_to_jsonable(data_state))}),
            config=ocp.args.JsonSave(json.loads(config_json)),
        )
        self._manager.save(step, args=args, force=True)

    def restore(self, step: int, like_state: Any) -> tuple[Any, Any, dict]:
        """Restores `step` onto the shapes, dtypes and shardings of `like_state`.

        Returns `(state, data_state, config_dict)`.
        """
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(like_state)),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        )
        out = self._manager.restore(step, args=args)
        state = _data_to_keys(out.state, like_state)
        return state, _this_process(out.data, step), out.config

    def restore_raw(self, step: int) -> tuple[Any, Any, dict]:
        """Restores `step` without a target: the state as nested dicts of host numpy arrays
        (PRNG keys as their uint32 data). For inspection, tests and export tools."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(),
            data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore(),
        )
        out = self._manager.restore(step, args=args)
        return jax.tree.map(np.asarray, out.state), _this_process(out.data, step), out.config

    def wait(self) -> None:
        """Blocks until the last asynchronous save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
