"""Precision policy (`cfg.compute_precision`), in the spirit of the official `compute_precision`.

What runs in which dtype:
- parameters, Adam moments, the EMA teacher, the centers: float32, always;
- softmax, centering, Sinkhorn-Knopp, every loss: float32, always;
- the forward and backward of the backbone and the heads (matmuls, activations): `compute_dtype`;
- the cross-device gradient reduction of the matmul kernels: `grad_reduce_dtype`.

`compute_dtype`:
- "auto" (the ImageNet configs): bfloat16 on GPU and TPU, float32 on CPU. On a GPU, bfloat16 is also
  what makes `student.attn_impl="auto"` pick cuDNN flash attention (it has no float32 kernel);
- "float32" | "bfloat16": as named, on every platform;
- "float16" is refused: the official code trains in fp16 with a dynamic gradient scaler, which this
  port does not implement; bfloat16 has float32's exponent range and needs no scaling.

`grad_reduce_dtype`:
- "float32" (default): gradients are reduced across devices in float32;
- "bfloat16" (only with a bfloat16 compute dtype): the matmul kernels (`*.kernel`, the bulk of the
  parameters) enter the forward already cast to bfloat16, as the layers would cast them anyway, so their
  gradients are formed and all-reduced in bfloat16 (half the bytes) before the float32 optimizer
  update. Norms, biases, tokens and the weight-normed last layer keep float32 gradients.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from dinov2_jax.models.layers.attention import resolve_attn_impl

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
GRAD_REDUCE_DTYPES = ("float32", "bfloat16")
_NAMED = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _platform(platform: str | None) -> str:
    return jax.default_backend() if platform is None else platform


def resolve_compute_dtype(name: str, platform: str | None = None):
    """`compute_precision.compute_dtype` -> the jnp dtype the forward runs in on `platform`
    ("cpu" | "gpu" | "tpu"; default: JAX's default backend)."""
    name = str(name)
    if name == "float16":
        raise ValueError("compute_precision.compute_dtype='float16' needs dynamic loss scaling (the official "
                         "grad_scaler), which dinov2_jax does not implement; use 'bfloat16' (same speed on "
                         "A100/H100/TPU, float32 exponent range, no scaling) or 'auto'.")
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_precision.compute_dtype={name!r}; use one of {COMPUTE_DTYPES}")
    if name == "auto":
        return jnp.float32 if _platform(platform) == "cpu" else jnp.bfloat16
    return _NAMED[name]


@dataclasses.dataclass(frozen=True)
class Precision:
    compute_dtype: Any
    grad_reduce_dtype: Any
    attn_impl: str

    def describe(self) -> str:
        return (f"compute {jnp.dtype(self.compute_dtype).name}, attention {self.attn_impl}, gradient "
                f"reduction {jnp.dtype(self.grad_reduce_dtype).name}; parameters, optimizer state, EMA, "
                "centers and losses float32")


def resolve_precision(cfg, platform: str | None = None) -> Precision:
    """The dtypes and attention backend the train step will use for `cfg` on `platform`."""
    cp = cfg.compute_precision
    compute = resolve_compute_dtype(cp.compute_dtype, platform)
    reduce_name = str(cp.get("grad_reduce_dtype", "float32"))
    if reduce_name not in GRAD_REDUCE_DTYPES:
        raise ValueError(f"compute_precision.grad_reduce_dtype={reduce_name!r}; use one of {GRAD_REDUCE_DTYPES}")
    if reduce_name == "bfloat16" and jnp.dtype(compute) != jnp.bfloat16:
        raise ValueError("compute_precision.grad_reduce_dtype='bfloat16' needs a bfloat16 compute dtype (the "
                         f"kernels would otherwise change precision in the forward); compute is "
                         f"{jnp.dtype(compute).name} here")
    attn = resolve_attn_impl(cfg.student.attn_impl, compute, platform=_platform(platform))
    return Precision(compute, _NAMED[reduce_name], attn)


def cast_kernels_for_reduction(params, dtype):
    """Matmul kernels (leaves named `kernel`) cast to `dtype`; other leaves unchanged (see module doc)."""
    if jnp.dtype(dtype) == jnp.float32:
        return params

    def one(path, x):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return x.astype(dtype) if name == "kernel" else x

    return jax.tree_util.tree_map_with_path(one, params)
