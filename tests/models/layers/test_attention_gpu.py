"""GPU attention backends (cuDNN flash attention, Pallas/Triton) against XLA on the same GPU.

Marked `gpu`: skipped where JAX has no GPU backend (tests/conftest.py sets JAX_PLATFORMS=cpu unless the
variable is already set). Run on a GPU machine with

    JAX_PLATFORMS=cuda,cpu python -m pytest -q -m gpu

Shapes are the DINOv2 ones: 16 heads of 64, global crops 224/14 -> 257 tokens (+4 registers -> 261),
local crops 98/14 -> 50 tokens. Tolerances are relative to the error of XLA itself in the same dtype,
against a float64 reference on the same (rounded) inputs: a fused kernel must be as accurate as XLA.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dinov2_jax.models.layers.attention import dot_product_attention, resolve_attn_impl
from dinov2_jax.models.vision_transformer import build_backbone

pytestmark = pytest.mark.gpu

SHAPES = [(4, 257, 16, 64), (4, 261, 16, 64), (16, 50, 16, 64)]


def _qkv(shape, dtype, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q, k, v, ct = (jax.random.normal(kk, shape, jnp.float32) for kk in ks)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), ct


def _reference(q, k, v, ct):
    """float64 numpy attention and its vjp with cotangent `ct` (all on the given, rounded inputs)."""
    q, k, v, ct = (np.asarray(t, np.float64) for t in (q, k, v, ct))
    scale = q.shape[-1] ** -0.5
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", p, v)
    d_out = np.transpose(ct, (0, 2, 1, 3))  # [B, H, Q, hd]
    dv = np.einsum("bhqk,bhqd->bkhd", p, d_out)
    dp = np.einsum("bhqd,bkhd->bhqk", d_out, v)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = np.einsum("bhqk,bkhd->bqhd", ds, k) * scale
    dk = np.einsum("bhqk,bqhd->bkhd", ds, q) * scale
    return out, (dq, dk, dv)


def _run(impl, q, k, v, ct):
    def f(q, k, v):
        return dot_product_attention(q, k, v, impl)
    out, vjp = jax.vjp(jax.jit(f), q, k, v)
    grads = vjp(ct.astype(out.dtype))
    return np.asarray(out, np.float64), [np.asarray(g, np.float64) for g in grads]


def _max_err(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max())


def test_auto_resolves_to_cudnn_on_this_gpu():
    assert jax.default_backend() == "gpu"
    assert resolve_attn_impl("auto", jnp.bfloat16) == "cudnn"
    assert resolve_attn_impl("auto", jnp.float32) == "xla"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_cudnn_matches_xla_forward_and_backward(shape, dtype):
    q, k, v, ct = _qkv(shape, dtype)
    ref_out, ref_grads = _reference(q, k, v, ct)
    x_out, x_grads = _run("xla", q, k, v, ct)
    c_out, c_grads = _run("cudnn", q, k, v, ct)
    assert c_out.shape == ref_out.shape
    # forward: cuDNN no worse than XLA (+ one half-precision ulp of an O(1) value)
    ulp = float(jnp.finfo(dtype).eps)
    assert _max_err(c_out, ref_out) <= 1.5 * _max_err(x_out, ref_out) + ulp
    for name, c, x, r in zip("qkv", c_grads, x_grads, ref_grads):
        scale = np.abs(r).max()
        assert _max_err(c, r) <= 1.5 * _max_err(x, r) + ulp * scale, f"d{name}"


@pytest.mark.parametrize("shape", [(2, 257, 16, 64), (8, 50, 16, 64)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pallas_gpu_matches_reference(shape, dtype):
    q, k, v, ct = _qkv(shape, dtype, seed=1)
    ref_out, ref_grads = _reference(q, k, v, ct)
    x_out, x_grads = _run("xla", q, k, v, ct)
    p_out, p_grads = _run("pallas", q, k, v, ct)
    floor = 1e-5 if dtype == jnp.float32 else float(jnp.finfo(dtype).eps)
    assert _max_err(p_out, ref_out) <= 1.5 * _max_err(x_out, ref_out) + floor
    for name, p, x, r in zip("qkv", p_grads, x_grads, ref_grads):
        assert _max_err(p, r) <= 1.5 * _max_err(x, r) + floor * np.abs(r).max(), f"d{name}"


def test_vit_bf16_cudnn_matches_xla_end_to_end():
    """ViT-S/14 with registers, bf16: features and parameter gradients of the two backends agree to bf16
    noise (12 blocks of accumulated rounding, so compared by relative norm and cosine)."""
    x = jax.random.normal(jax.random.key(0), (4, 224, 224, 3))

    def feats_and_grads(impl):
        model = build_backbone("vit_small", patch_size=14, num_register_tokens=4, init_values=1.0,
                               attn_impl=impl, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
        graph, params = nnx.split(model, nnx.Param)

        def loss(p):
            out = nnx.merge(graph, p).forward_features(x)
            return jnp.mean(jnp.square(out["x_norm_clstoken"].astype(jnp.float32))), out["x_norm_patchtokens"]
        (_, patches), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        flat = np.concatenate([np.asarray(g, np.float32).ravel() for g in jax.tree.leaves(grads)])
        return np.asarray(patches, np.float32), flat

    px, gx = feats_and_grads("xla")
    pc, gc = feats_and_grads("cudnn")
    assert np.linalg.norm(pc - px) / np.linalg.norm(px) < 2e-2
    cos = float(gx @ gc / (np.linalg.norm(gx) * np.linalg.norm(gc)))
    assert cos > 0.999, cos
