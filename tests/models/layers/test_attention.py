"""Attention backends: selection logic and numerics of every backend runnable on CPU vs a numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dinov2_jax.models.layers import attention as attn_mod
from dinov2_jax.models.layers.attention import Attention, dot_product_attention, resolve_attn_impl


def _np_attention(q, k, v):
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", p, v)


def _qkv(b, n, h, hd, seed=0):
    ks = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(k, (b, n, h, hd), jnp.float32) for k in ks]


def test_auto_picks_xla_on_cpu_and_cudnn_raises():
    assert jax.default_backend() == "cpu"
    assert resolve_attn_impl("auto") == "xla"
    assert resolve_attn_impl("xla") == "xla"
    assert resolve_attn_impl("pallas") == "pallas"
    with pytest.raises(ValueError, match="cudnn.*needs a GPU"):
        resolve_attn_impl("cudnn")
    with pytest.raises(ValueError, match="Unknown attention backend"):
        resolve_attn_impl("flash")


def test_auto_picks_cudnn_when_gpu_present(monkeypatch):
    monkeypatch.setattr(attn_mod, "_has_gpu", lambda: True)
    assert resolve_attn_impl("auto") == "cudnn"
    assert resolve_attn_impl("auto", jnp.bfloat16) == "cudnn"
    assert resolve_attn_impl("cudnn", "bfloat16") == "cudnn"
    # cuDNN fused attention has no float32 kernel: auto uses xla, an explicit request is an error
    assert resolve_attn_impl("auto", jnp.float32) == "xla"
    with pytest.raises(ValueError, match="bfloat16/float16 only"):
        resolve_attn_impl("cudnn", jnp.float32)


@pytest.mark.parametrize("n", [5, 21])
def test_xla_matches_reference(n):
    q, k, v = _qkv(2, n, 3, 8)
    out = dot_product_attention(q, k, v, "xla")
    np.testing.assert_allclose(np.asarray(out), _np_attention(q, k, v), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [16, 21, 150])  # exact block, padded to 32, padded to 256 (two 128 blocks)
def test_pallas_interpret_matches_xla(n):
    q, k, v = _qkv(1, n, 2, 16, seed=n)
    ref = dot_product_attention(q, k, v, "xla")
    out = dot_product_attention(q, k, v, "pallas")
    assert out.shape == q.shape
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)


def test_bf16_softmax_in_float32():
    q, k, v = _qkv(1, 7, 2, 8, seed=3)
    out = dot_product_attention(*(t.astype(jnp.bfloat16) for t in (q, k, v)), "xla")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), _np_attention(q, k, v), atol=3e-2)


def test_attention_module_layout_matches_torch_reshape():
    """qkv rows are [q | k | v] with heads contiguous: check against an explicit numpy computation."""
    d, h = 12, 3
    m = Attention(d, h, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, d))
    w, b = np.asarray(m.qkv.kernel[...]), np.asarray(m.qkv.bias[...])
    qkv = np.asarray(x) @ w + b
    q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(2, 5, h, d // h) for i in range(3))
    o = _np_attention(q, k, v).reshape(2, 5, d) @ np.asarray(m.proj.kernel[...]) + np.asarray(m.proj.bias[...])
    np.testing.assert_allclose(np.asarray(m(x)), o, atol=1e-5, rtol=0)


def test_head_divisibility_error():
    with pytest.raises(ValueError, match="not divisible"):
        Attention(10, 3, rngs=nnx.Rngs(0))
