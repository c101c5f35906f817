"""Multi-head self-attention and THE single place where the attention backend is chosen.

Backends (all on `[B, N, H, hd]`, scale `hd**-0.5`, no mask):
- "xla":    `jax.nn.dot_product_attention(implementation="xla")`, runs everywhere (softmax in float32).
- "cudnn":  `jax.nn.dot_product_attention(implementation="cudnn")`, GPU only (fused flash attention).
- "pallas": `jax.experimental.pallas.ops.gpu.attention.mha` (Triton kernel on GPU; on CPU it runs in
            interpret mode, slow, meant for tests only).
- "auto":   "cudnn" when a GPU backend is present and the compute dtype is bf16/fp16 (cuDNN fused
            attention has no float32 kernel), else "xla".
"""
import logging

import jax
import jax.numpy as jnp
from flax import nnx

from dinov2_jax.models.layers.linear import Linear
from dinov2_jax.padding import valid_rows

logger = logging.getLogger(__name__)

ATTN_IMPLS = ("auto", "xla", "cudnn", "pallas")
_logged: set = set()


def _has_gpu() -> bool:
    try:
        return len(jax.devices("gpu")) > 0
    except RuntimeError:  # no GPU backend initialised
        return False


_HALF = ("bfloat16", "float16")


def resolve_attn_impl(name: str, dtype=None, platform: str | None = None) -> str:
    """Map a requested backend ("auto"|"xla"|"cudnn"|"pallas") to the one that will run.

    `dtype`: compute dtype of q/k/v if known. `platform`: "cpu" | "gpu" | "tpu" to resolve for (default:
    whether JAX sees a GPU). Raises ValueError for unknown names, for "cudnn" without a GPU and for
    "cudnn" with a float32 compute dtype (no silent fallback).
    """
    if name not in ATTN_IMPLS:
        raise ValueError(f"Unknown attention backend {name!r}; choose one of {ATTN_IMPLS}.")
    half = dtype is None or jnp.dtype(dtype).name in _HALF
    gpu = _has_gpu() if platform is None else platform in ("gpu", "cuda", "rocm")
    if name == "auto":
        return "cudnn" if gpu and half else "xla"
    if name == "cudnn":
        if not gpu:
            raise ValueError(
                "attn_impl='cudnn' needs a GPU backend, but JAX sees none "
                f"(default backend: {jax.default_backend()!r}). Use attn_impl='xla' (or 'auto') on CPU/TPU.")
        if not half:
            raise ValueError(f"attn_impl='cudnn' supports bfloat16/float16 only, got dtype {jnp.dtype(dtype).name}; "
                             "use dtype='bfloat16' or attn_impl='xla' (or 'auto').")
    return name


def _log_once(impl: str, shape) -> None:
    if impl not in _logged:
        _logged.add(impl)
        logger.info("attention backend: %s (first call with q shape %s)", impl, tuple(shape))


def _pallas_mha(q, k, v):
    from jax.experimental.pallas.ops.gpu.attention import BlockSizes, mha

    b, n, h, hd = q.shape
    # The kernel needs the sequence length to be a multiple of a power-of-two block; pad the tokens
    # and keep padded keys out of every real query's softmax with segment ids (real=1, pad=0).
    block = min(128, max(16, 1 << (n - 1).bit_length()))
    n_pad = -(-n // block) * block
    small = min(32, block)
    sizes = BlockSizes(block_q=block, block_k=block, block_q_dkv=small, block_kv_dkv=small,
                       block_q_dq=small, block_kv_dq=small)
    if n_pad != n:
        pad = ((0, 0), (0, n_pad - n), (0, 0), (0, 0))
        q, k, v = (jnp.pad(t, pad) for t in (q, k, v))
        seg = jnp.broadcast_to(valid_rows(n_pad, n).astype(jnp.int32), (b, n_pad))
    else:
        seg = None
    interpret = jax.default_backend() == "cpu"
    out = mha(q, k, v, seg, sm_scale=hd ** -0.5, block_sizes=sizes, interpret=interpret)
    return out[:, :n]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str) -> jax.Array:
    """Softmax attention with scale `hd**-0.5`: q, k, v `[B, N, H, hd]` -> `[B, N, H, hd]`.

    `impl` is a resolved backend name ("xla" | "cudnn" | "pallas"); pass names through
    `resolve_attn_impl` first ("auto" is accepted and resolved here too).
    """
    if impl == "auto":
        impl = resolve_attn_impl(impl, q.dtype)
    _log_once(impl, q.shape)
    if impl in ("xla", "cudnn"):
        return jax.nn.dot_product_attention(q, k, v, implementation=impl)
    if impl == "pallas":
        return _pallas_mha(q, k, v)
    raise ValueError(f"Unknown attention backend {impl!r}; choose one of {ATTN_IMPLS}.")


def attention_weights(q: jax.Array, k: jax.Array) -> jax.Array:
    """Explicit softmax attention weights: q `[B, Q, H, hd]`, k `[B, N, H, hd]` -> `[B, H, Q, N]` float32
    (rows sum to 1).

    The fused backends never materialise this matrix, so attention maps (visualisation) come from this
    path; `softmax(q k^T * hd**-0.5)` in float32 (q and k are upcast first), the same math as
    `dot_product_attention` before the product with v.
    """
    hd = q.shape[-1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) * hd ** -0.5
    return jax.nn.softmax(logits, axis=-1)


class Attention(nnx.Module):
    """Official `Attention`: qkv Linear(D, 3D) with rows [q | k | v] (heads contiguous), proj Linear(D, D).

    [B, N, D] -> [B, N, D]. Params `qkv.{kernel [D,3D], bias}`, `proj.{kernel, bias}`.
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, proj_bias: bool = True,
                 attn_impl: str = "xla", dtype=jnp.float32, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.attn_impl = resolve_attn_impl(attn_impl, dtype)
        self.qkv = Linear(dim, 3 * dim, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
        self.proj = Linear(dim, dim, use_bias=proj_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        out = dot_product_attention(q, k, v, self.attn_impl)
        return self.proj(out.reshape(b, n, d))

    def attention_weights(self, x: jax.Array, num_queries: int | None = None) -> jax.Array:
        """[B, N, D] (the block's normalised input) -> softmax weights `[B, H, Q, N]` float32, for the
        first Q = `num_queries` query tokens (default all N; 1 = the cls row only, O(N) memory).

        Always the explicit-softmax path (`attention_weights`), whatever `attn_impl` is: the fused
        backends (cuDNN flash attention, the Pallas kernel) do not return the weights.
        """
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        return attention_weights(qkv[:, :num_queries, 0], qkv[:, :, 1])
