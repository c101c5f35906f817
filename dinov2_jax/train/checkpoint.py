"""Orbax checkpoints of a training run: train state + data-iterator state + merged config.

Layout: `output_dir/ckpt/<step>/{state,data,config}` (`data`: one iterator state per process) where `step` is the number of completed
iterations, i.e. the iteration a resumed run starts at. Orbax writes each step into a temporary
directory (`<step>.orbax-checkpoint-tmp-*`) and renames it when complete, so a run killed mid-save
leaves no directory that `latest_step()` would pick up. Saves are asynchronous: device arrays are
copied to host before `save` returns, the files are written in a background thread.

Checksums: once Orbax has committed a step, process 0 writes `<step>/dinov2_checksums.json` (size and
SHA-256 of every file of the step, written atomically). `restore_latest_valid` checks them, restores
the state onto the expected structure and checks that every float value is finite; a checkpoint
failing any check (truncated or changed file, deleted `_METADATA`, ...) is moved aside to
`<dir>/damaged_<step>` with a warning naming it, and the previous checkpoint is tried. A checkpoint
without a checksum file (the run stopped between the commit and the checksums, or an older version of
this code wrote it) is used only when no checksummed one passes, with a warning saying what was checked.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

_BYTES = "__bytes_b64__"
CHECKSUMS = "dinov2_checksums.json"


class NoUsableCheckpointError(RuntimeError):
    """Checkpoints exist but none passes the checks."""


def as_path_string(path: str) -> str:
    """Absolute local path, or a remote URL (gs://, s3://, memory://...) kept as it is."""
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)


def _epath(path: str):
    from etils import epath

    return epath.Path(path)


def _file_digests(step_dir) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of every file under `step_dir` (but the checksum file)."""
    out = {}
    stack = [step_dir]
    while stack:
        d = stack.pop()
        for child in d.iterdir():
            if child.is_dir():
                stack.append(child)
                continue
            rel = os.path.relpath(os.fspath(child), os.fspath(step_dir))
            if rel == CHECKSUMS:
                continue
            h = hashlib.sha256()
            n = 0
            with child.open("rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                    n += len(chunk)
            out[rel] = {"size": n, "sha256": h.hexdigest()}
    return out


def write_checksums(step_dir) -> None:
    """Writes `step_dir/dinov2_checksums.json` (through a temporary file and a rename)."""
    step_dir = _epath(os.fspath(step_dir))
    body = json.dumps({"files": _file_digests(step_dir)}, sort_keys=True)
    tmp = step_dir / f".{CHECKSUMS}.tmp"
    tmp.write_text(body)
    tmp.rename(step_dir / CHECKSUMS)


def verify_checksums(step_dir) -> str | None:
    """None if every file listed in the checksum file is there with its size and SHA-256; else what is
    wrong. 'no checksum file' when there is none."""
    step_dir = _epath(os.fspath(step_dir))
    listing = step_dir / CHECKSUMS
    if not listing.exists():
        return "no checksum file"
    try:
        want = json.loads(listing.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"unreadable checksum file ({e})"
    got = _file_digests(step_dir)
    for rel, w in sorted(want.items()):
        g = got.get(rel)
        if g is None:
            return f"file {rel} is missing"
        if g["size"] != w["size"]:
            return f"file {rel} has {g['size']} bytes, {w['size']} when saved (truncated?)"
        if g["sha256"] != w["sha256"]:
            return f"file {rel} changed since it was saved (checksum mismatch)"
    return None


def tree_all_finite(tree: Any) -> bool:
    """Every float leaf finite (global arrays: all processes must call it)."""
    import jax.numpy as jnp

    leaves = [x for x in jax.tree.leaves(tree)
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)]
    return bool(all(bool(jnp.all(jnp.isfinite(x))) for x in leaves))


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
        self.directory = as_path_string(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._checksum_threads: list[threading.Thread] = []
        self.checksum_errors: list[str] = []

    def step_dir(self, step: int):
        return _epath(self.directory) / str(step)

    def _checksum_when_committed(self, step: int) -> None:
        """Background thread of process 0: waits for Orbax's commit of `step`, then writes its checksums."""
        d = self.step_dir(step)
        try:
            # Orbax's last act of a save is `commit_success.txt` in the final directory (written before
            # the rename of the temporary directory on local disks, after all files on object stores)
            while not (d / "commit_success.txt").exists():
                if not self._manager.is_saving_in_progress():
                    break  # finished: committed (an Orbax without that file) or failed
                time.sleep(0.02)
            if not d.exists():
                return  # the save failed (Orbax reports it); nothing to checksum
            write_checksums(d)
        except Exception as e:  # noqa: BLE001 - reported by wait()/close()
            self.checksum_errors.append(f"checksums of {d}: {e!r}")

    def _join_checksums(self) -> None:
        for t in self._checksum_threads:
            t.join()
        self._checksum_threads = []
        for err in self.checksum_errors:
            logging.getLogger(__name__).warning(
                "could not write a checkpoint's checksums (a resume checks it for structure and finite values "
                "only): %s", err)
        self.checksum_errors = []

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
        self._join_checksums()
        self._manager.save(step, args=args, force=True)
        if jax.process_index() == 0:
            t = threading.Thread(target=self._checksum_when_committed, args=(step,), daemon=True)
            t.start()
            self._checksum_threads.append(t)

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

    def restore_latest_valid(self, like_state: Any, warn: Callable[[str], None],
                             all_true: Callable[[bool], bool] = bool) -> tuple[int | None, Any, Any, dict | None]:
        """The newest checkpoint that passes the checks (see module doc), restored onto `like_state`:
        `(step, state, data_state, config)`, or `(None, like_state, None, None)` when there is none.
        Damaged checkpoints are moved to `damaged_<step>` with a warning. `all_true` combines each
        process's verdict (a collective with several processes) so that all restore the same step.
        Raises NoUsableCheckpointError when checkpoints exist but none can be used."""
        steps = sorted(self.all_steps(), reverse=True)
        unverified = []  # steps without a checksum file, tried last
        for step in steps:
            # process 0 reads the files (once, not once per process); every process learns its verdict
            reason = verify_checksums(self.step_dir(step)) if jax.process_index() == 0 else None
            if not all_true(reason != "no checksum file"):
                unverified.append(step)
                continue
            if not all_true(reason is None):
                self._set_aside(step, reason or "checksum mismatch (found by process 0)", warn)
                continue
            restored = self._try_restore(step, like_state, warn, all_true)
            if restored is not None:
                return (step, *restored)
        for step in unverified:
            restored = self._try_restore(step, like_state, warn, all_true)
            if restored is not None:
                warn(f"WARNING: checkpoint {self.directory}/{step} has no checksum file (the run stopped "
                     f"before it was written, or an older version wrote it): it was checked for structure and "
                     f"finite values only")
                return (step, *restored)
        if steps:
            raise NoUsableCheckpointError(
                f"none of the checkpoints {steps} in {self.directory} can be restored (see the warnings "
                f"above; they were moved to damaged_<step>). Move {self.directory} away to start afresh, "
                f"or point train.output_dir elsewhere.")
        return None, like_state, None, None

    def _try_restore(self, step, like_state, warn, all_true) -> tuple | None:
        """(state, data, config) of `step` if it restores onto `like_state` with finite values on every
        process; else None (and the step is set aside)."""
        reason = None
        try:
            restored = self.restore(step, like_state)
        except Exception as e:  # noqa: BLE001 - any failure to read it means it cannot be used
            text = str(e).strip()
            reason = f"cannot be restored: {type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"
        if not all_true(reason is None):
            self._set_aside(step, reason or "cannot be restored on another process", warn)
            return None
        # after the agreement: with sharded arrays the finiteness check is itself a collective
        if not all_true(tree_all_finite(restored[0])):
            self._set_aside(step, "holds NaN/inf values", warn)
            return None
        return restored

    def _set_aside(self, step: int, reason: str, warn: Callable[[str], None]) -> None:
        aside = _epath(self.directory) / f"damaged_{step}"
        if jax.process_index() == 0:
            if aside.exists():
                aside = _epath(self.directory) / f"damaged_{step}_{int(time.time())}"
            self.step_dir(step).rename(aside)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"dinov2_set_aside_{step}")
        warn(f"WARNING: checkpoint {self.directory}/{step} is damaged ({reason}); moved it to {aside} and "
             f"trying the previous checkpoint")
        self._manager.reload()

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
        """Blocks until the last asynchronous save is on disk with its checksums."""
        self._manager.wait_until_finished()
        self._join_checksums()

    def close(self) -> None:
        try:
            self._manager.wait_until_finished()
        finally:
            self._join_checksums()
            self._manager.close()
