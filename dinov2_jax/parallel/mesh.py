"""Device mesh with the named axes ('data', 'fsdp', 'tensor').

`make_mesh(cfg.mesh)` turns the config sizes into a `jax.sharding.Mesh`:

- 'data'  : pure data parallelism (parameters replicated along it, batch split).
- 'fsdp'  : data parallelism whose parameters / optimizer state are also split (ZeRO-3 / FSDP).
- 'tensor': tensor (Megatron-style) model parallelism inside the ViT blocks.

The batch is split over ('data', 'fsdp'); see `dinov2_jax/parallel/sharding.py`.

Axis types: all three axes are `AxisType.Auto`. In jax 0.10 `jax.make_mesh` defaults to `Explicit`
axes ("sharding in types"), under which every op must have an unambiguous output sharding and many
ops (reshapes that merge a sharded dim, gathers with global indices, `jnp.nonzero(size=...)`) raise
instead of being resolved. The DINOv2 step is written as a single-device program whose inputs carry
`NamedSharding`s; with `Auto` axes GSPMD propagates shardings through it and inserts the collectives
(all-gather of FSDP weights, reduce-scatter of gradients), so the same train step runs on 1 device or
a mesh without changes. That is the behaviour we want, hence `Auto`, chosen explicitly.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

log = logging.getLogger(__name__)

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
# Axes the batch (leading dim of every per-example array) is split over.
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")


def _get(cfg: Any, name: str, default: int = 1) -> int:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return int(cfg.get(name, default))
    return int(getattr(cfg, name, default))


def resolve_mesh_shape(mesh_cfg: Any, num_devices: int) -> tuple[int, int, int]:
    """Sizes of ('data', 'fsdp', 'tensor') for `num_devices` devices.

    `mesh_cfg` has integer fields `data`, `fsdp`, `tensor` (ConfigDict, dict or object; missing
    fields count as 1, `None` means all devices on 'data'). At most one of them may be -1: it takes
    all remaining devices. The product must equal `num_devices`.
    """
    if mesh_cfg is None:
        sizes = [-1, 1, 1]
    else:
        sizes = [_get(mesh_cfg, "data", -1), _get(mesh_cfg, "fsdp", 1), _get(mesh_cfg, "tensor", 1)]
    named = dict(zip(MESH_AXES, sizes))
    for name, s in named.items():
        if s == 0 or s < -1:
            raise ValueError(f"mesh.{name}={s} is invalid: use a positive size or -1 (= all remaining devices).")
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1:
        raise ValueError(
            f"mesh {named}: only one axis may be -1 (all remaining devices); set the others explicitly."
        )
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % fixed != 0:
            raise ValueError(
                f"mesh {named}: the fixed axes multiply to {fixed}, which does not divide the "
                f"{num_devices} available devices; choose sizes whose product divides {num_devices}."
            )
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices but {num_devices} are "
            f"available (jax.device_count()); make data*fsdp*tensor == {num_devices}, or set one axis "
            f"to -1 to fill the rest."
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_cfg: Any = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh with axes ('data', 'fsdp', 'tensor') of the sizes in `mesh_cfg` (see `resolve_mesh_shape`).

    `devices` defaults to all global devices (`jax.devices()`, every process). The device order
    comes from `jax.make_mesh`, which lays the axes out on the physical topology (ICI/NVLink inner,
    hosts outer): the last axes ('tensor', then 'fsdp') get the fastest links.
    """
    devs = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_cfg, len(devs))
    auto = (AxisType.Auto,) * len(MESH_AXES)
    try:
        mesh = jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devs)
    except (ValueError, NotImplementedError, AssertionError) as e:
        # Topology-aware layout can refuse shapes that do not tile the physical torus (TPU);
        # a plain row-major layout is still correct, only possibly slower.
        log.warning("jax.make_mesh(%s) failed (%s); using devices in jax.devices() order.", shape, e)
        mesh = Mesh(np.asarray(devs, dtype=object).reshape(shape), MESH_AXES, axis_types=auto)
    log.info("mesh %s over %d devices (%s)", dict(zip(MESH_AXES, shape)), len(devs), devs[0].platform)
    return mesh


def batch_axis_size(mesh: Mesh) -> int:
    """Number of batch shards: product of the 'data' and 'fsdp' axis sizes."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)
