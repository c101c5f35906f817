"""Sharding rules: which mesh axes each parameter / optimizer-state / batch array is split over.

Parameters (student, teacher, and the optimizer's mirrors of them such as Adam `mu`/`nu`) get a
`PartitionSpec` from their path and shape only, so every mirror of a parameter gets the same spec:

1. Tensor rules (only when the 'tensor' axis is > 1): regexes on the dotted path, Megatron style -
   `attn.qkv` and `mlp.fc1`/`mlp.w12` kernels split their output dim, `attn.proj` and
   `mlp.fc2`/`mlp.w3` kernels their input dim (biases of the column-split layers follow).
2. FSDP (only when the 'fsdp' axis is > 1): arrays with at least `min_size` elements are split over
   'fsdp' along their largest dim that is divisible by the fsdp size and not used by rule 1 (ties:
   the earliest dim). Smaller or non-divisible arrays are replicated.
3. Everything else (scalars, step counters, RNG keys, centers, small vectors) is replicated.

With fsdp == tensor == 1 every array is replicated (plain data parallelism).

The batch is split along its leading dim over ('data', 'fsdp'). Under `jit` with `Auto` mesh axes,
GSPMD inserts the all-gathers / reduce-scatters these shardings imply; the train step itself is
written for one device.

Paths are dotted strings built from pytree keys (`opt_state.0.mu.blocks.3.attn.qkv.kernel`); the
`.value` attribute of NNX variables is dropped.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dinov2_jax.parallel.mesh import BATCH_AXES, batch_axis_size
from dinov2_jax.tree_names import path_to_name

log = logging.getLogger(__name__)

# Arrays smaller than this many elements stay replicated under FSDP: sharding them saves little memory
# and costs one collective each (biases, norms, LayerScale gammas, centers).
DEFAULT_MIN_SIZE = 2**14

# (regex searched in the dotted path, spec template of the same rank). Column-parallel layers split the
# output features, row-parallel ones the input features, so one block needs a single reduction per MLP
# and per attention (GSPMD inserts it).
TENSOR_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"(^|\.)attn\.qkv\.kernel$", (None, "tensor")),
    (r"(^|\.)attn\.qkv\.bias$", ("tensor",)),
    (r"(^|\.)attn\.proj\.kernel$", ("tensor", None)),
    (r"(^|\.)mlp\.(fc1|w12)\.kernel$", (None, "tensor")),
    (r"(^|\.)mlp\.(fc1|w12)\.bias$", ("tensor",)),
    (r"(^|\.)mlp\.(fc2|w3)\.kernel$", ("tensor", None)),
    # DINO / iBOT heads: first layer column-, second row-parallel; the weight-normed last layer splits
    # its prototypes (the logits' K axis), so the heads' big matmuls are split too.
    (r"(^|\.)(dino|ibot)_head\.mlp\.0\.kernel$", (None, "tensor")),
    (r"(^|\.)(dino|ibot)_head\.mlp\.0\.bias$", ("tensor",)),
    (r"(^|\.)(dino|ibot)_head\.mlp\.1\.kernel$", ("tensor", None)),
    (r"(^|\.)(dino|ibot)_head\.last_layer\.weight_v$", (None, "tensor")),
    (r"(^|\.)(dino|ibot)_head\.last_layer\.weight_g$", ("tensor",)),
)


def _axis_size(mesh: Mesh | Mapping[str, int], name: str) -> int:
    shape = mesh.shape if isinstance(mesh, Mesh) else mesh
    return int(shape.get(name, 1))


def param_spec(
    path: str,
    shape: Sequence[int],
    mesh: Mesh | Mapping[str, int],
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    rules: Sequence[tuple[str, tuple[str | None, ...]]] = TENSOR_RULES,
) -> P:
    """PartitionSpec of one array named `path` with `shape` (rules in the module docstring).

    `mesh` is a Mesh or a dict of axis sizes (so rules can be checked without devices).
    """
    shape = tuple(int(s) for s in shape)
    spec: list[Any] = [None] * len(shape)
    tensor = _axis_size(mesh, "tensor")
    fsdp = _axis_size(mesh, "fsdp")
    if tensor > 1:
        for pattern, template in rules:
            if re.search(pattern, path) and len(template) == len(shape):
                ok = all(t is None or shape[i] % tensor == 0 for i, t in enumerate(template))
                if ok:
                    spec = list(template)
                else:
                    log.debug("%s %s: not divisible by tensor=%d, replicated over 'tensor'", path, shape, tensor)
                break
    if fsdp > 1 and math.prod(shape) >= min_size:
        free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % fsdp == 0]
        if free:
            best = max(free, key=lambda i: (shape[i], -i))  # largest; earliest on ties
            spec[best] = "fsdp"
        else:
            log.debug("%s %s: no dim divisible by fsdp=%d, replicated", path, shape, fsdp)
    while spec and spec[-1] is None:  # canonical form: P() for replicated
        spec.pop()
    return P(*spec)


def param_specs(tree: Any, mesh: Mesh | Mapping[str, int], **kw) -> Any:
    """PartitionSpec for every leaf of `tree` (arrays, ShapeDtypeStructs, NNX state, optax state)."""

    def one(path, leaf):
        return param_spec(path_to_name(path), np.shape(leaf), mesh, **kw)

    return jax.tree_util.tree_map_with_path(one, tree)


def param_shardings(tree: Any, mesh: Mesh, **kw) -> Any:
    """NamedSharding for every leaf of `tree` on `mesh` (same structure as `tree`).

    Works on concrete arrays and on `jax.eval_shape` outputs, so it can be used as `out_shardings`
    to create a state that never exists unsharded. Keyword args go to `param_spec`.
    """
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(tree, mesh, **kw),
                        is_leaf=lambda x: isinstance(x, P))


def shard_state(state: Any, mesh: Mesh, **kw) -> Any:
    """`state` placed on `mesh` with `param_shardings`. Every process must pass identical values.

    Multi-process: local values (numpy or single-process jax arrays) are cut into this process's
    shards (`jax.make_array_from_callback`); `jax.device_put` cannot target non-addressable devices.
    """
    return jax.tree.map(put_global, state, param_shardings(state, mesh, **kw))


def put_global(x: Any, sharding: NamedSharding) -> jax.Array:
    """One array onto a (possibly multi-process) sharding; `x` holds the full value on every process."""
    if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = put_global(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def init_sharded(init_fn: Callable[..., Any], mesh: Mesh, *args, **kw) -> Any:
    """Run `init_fn(*args)` under jit with sharded outputs: large states are born sharded.

    `init_fn` must be jit-able and return a pytree of arrays (e.g. `lambda k: create_train_state(cfg, k)`).
    Keyword args go to `param_spec`.
    """
    shapes = jax.eval_shape(init_fn, *args)
    return jax.jit(init_fn, out_shardings=param_shardings(shapes, mesh, **kw))(*args)


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) dim split over ('data', 'fsdp'); other dims whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def batch_shardings(batch: Mapping[str, Any], mesh: Mesh, replicated_keys: Sequence[str] = ()) -> dict:
    """Per-key shardings for a batch dict: arrays of rank >= 1 split on the leading dim (which must be
    divisible by the number of batch shards); scalars and `replicated_keys` replicated."""
    n = batch_axis_size(mesh)
    out = {}
    for k, v in batch.items():
        shape = np.shape(v)
        if k in replicated_keys or len(shape) == 0:
            out[k] = replicated(mesh)
            continue
        if shape[0] % n != 0:
            raise ValueError(
                f"batch['{k}'] has leading dim {shape[0]}, not divisible by the {n} batch shards "
                f"(mesh data*fsdp); use a per-device batch size so that it is, or list '{k}' in replicated_keys."
            )
        out[k] = batch_sharding(mesh)
    return out


def _assert_same_on_all_processes(key: str, v: np.ndarray) -> None:
    """A replicated array made from per-process values must be the same everywhere (JAX does not check:
    each device would silently keep its own process's value)."""
    from jax.experimental import multihost_utils

    every = np.asarray(multihost_utils.process_allgather(v, tiled=False))
    if not all(np.array_equal(every[0], e) for e in every[1:]):
        raise ValueError(
            f"batch['{key}'] differs between processes but was asked to be replicated; per-process values "
            f"cannot form one global array. For DINOv2 batches use make_global_dinov2_batch, which rebuilds "
            f"the masked-token lists for the global batch.")


def make_global_batch(local_batch: Mapping[str, Any], mesh: Mesh, replicated_keys: Sequence[str] = ()) -> dict:
    """Host-local batch (numpy) -> global `jax.Array`s sharded with `batch_shardings`.

    Each process passes its own slice of the batch (leading dim = global / process_count); the global
    array is the concatenation of the processes' slices in process order. Scalars and
    `replicated_keys` must be identical on every process (they are used as the global value).
    Single process: equivalent to `jax.device_put(batch, batch_shardings(batch, mesh))`.
    """
    nproc = jax.process_count()
    out = {}
    for k, v in local_batch.items():
        v = np.asarray(v)
        if k in replicated_keys or v.ndim == 0:
            if nproc > 1:
                _assert_same_on_all_processes(k, v)
            sh = replicated(mesh)
            out[k] = jax.make_array_from_process_local_data(sh, v, v.shape)
            continue
        sh = batch_sharding(mesh)
        global_shape = (v.shape[0] * nproc,) + v.shape[1:]
        n = batch_axis_size(mesh)
        if global_shape[0] % n != 0:
            raise ValueError(
                f"batch['{k}']: global leading dim {global_shape[0]} ({v.shape[0]} per process x {nproc}) "
                f"is not divisible by the {n} batch shards (mesh data*fsdp)."
            )
        out[k] = jax.make_array_from_process_local_data(sh, v, global_shape)
    return out


# DINOv2 batch (docs/design.md): group-major, one group of crops, masks and masked-token lists per device.
DINOV2_CROP_KEYS = ("collated_global_crops", "collated_local_crops", "collated_masks")
DINOV2_MASK_KEYS = ("mask_indices_list", "masks_weight", "n_masked_patches")


def make_global_dinov2_batch(local_batch: Mapping[str, Any], mesh: Mesh) -> dict:
    """Per-process DINOv2 batch (numpy, group-major over this process's devices) -> global batch.

    Every array's leading dim is per group (crop rows grouped per device batch, `[G, U]` masked-token
    lists with group-local indices, `[G]` counts), so the global batch is the processes' batches one
    after the other, split over ('data', 'fsdp') like any batch: each device gets whole groups and
    nothing is recomputed or reordered. Each process's rows must be one contiguous block of the mesh
    (`parallel.mesh.make_mesh` puts processes outermost).
    """
    missing = [k for k in DINOV2_CROP_KEYS + DINOV2_MASK_KEYS if k not in local_batch]
    if missing:
        raise KeyError(f"DINOv2 batch is missing {missing}; expected the keys of docs/design.md (Batch)")
    if np.ndim(local_batch["n_masked_patches"]) != 1:
        raise ValueError("n_masked_patches must be [G] (one count per device batch); collate with "
                         "dinov2_jax.data.masking.collate(..., groups=local devices)")
    if jax.process_count() > 1:
        for k, v in local_batch.items():
            _check_process_contiguous(mesh, (np.shape(v)[0] * jax.process_count(),) + np.shape(v)[1:], k)
    return make_global_batch(local_batch, mesh)


def _check_process_contiguous(mesh: Mesh, global_shape: tuple[int, ...], key: str) -> None:
    """Each process's batch rows must be one contiguous block for the process-major layout."""
    rows: dict[int, set[tuple[int, int]]] = {}
    for dev, idx in batch_sharding(mesh).devices_indices_map(global_shape).items():
        sl = idx[0]
        rows.setdefault(dev.process_index, set()).add((sl.start or 0, global_shape[0] if sl.stop is None else sl.stop))
    per = global_shape[0] // len(rows)
    for p, blocks in rows.items():
        lo, hi = min(b[0] for b in blocks), max(b[1] for b in blocks)
        covered = sum(b - a for a, b in blocks)
        if hi - lo != per or covered != per:
            raise ValueError(
                f"{key}: process {p} holds batch rows {sorted(blocks)}, not one contiguous block of {per}; "
                f"build the mesh with dinov2_jax.parallel.mesh.make_mesh (processes outermost on 'data').")


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes each device holds for the (sharded) arrays in `tree`: {device: bytes}."""
    out: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        if not isinstance(leaf, jax.Array):
            continue
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        for s in leaf.addressable_shards:
            out[s.device] = out.get(s.device, 0) + s.data.size * s.data.dtype.itemsize
    return out


def describe(tree: Any, mesh: Mesh | Mapping[str, int], **kw) -> list[tuple[str, tuple[int, ...], P]]:
    """(path, shape, spec) for every leaf: to print / log the sharding plan."""
    rows = []

    def one(path, leaf):
        name = path_to_name(path)
        rows.append((name, tuple(np.shape(leaf)), param_spec(name, np.shape(leaf), mesh, **kw)))

    jax.tree_util.tree_map_with_path(one, tree)
    return rows
