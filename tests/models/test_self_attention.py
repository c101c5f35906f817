"""Self-attention maps (`get_self_attention`, `get_cls_attention_maps`): equal to the softmax weights
timm's non-fused Attention computes (live, random weights, registers included), consistent with the
block's own (fused-path) output, and the cls maps are the cls row of the full matrix."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dinov2_jax.convert import load_torch_state_dict
from dinov2_jax.models.layers.attention import Attention
from dinov2_jax.models.vision_transformer import DinoVisionTransformer
from test_vision_transformer import _randomise_torch, _timm_to_official  # tests/models is on sys.path

TOL = 1e-5


def _timm_and_jax(name, n_reg, depth=3, dim=64, heads=4, **tkw):
    timm = pytest.importorskip("timm")
    tm = timm.create_model(name, pretrained=False, img_size=56, embed_dim=dim, depth=depth, num_heads=heads,
                           num_classes=0, **tkw).eval()
    _randomise_torch(tm, seed=3)
    kw = dict(img_size=56, patch_size=14, embed_dim=dim, depth=depth, num_heads=heads, init_values=1.0,
              num_register_tokens=n_reg)
    if tkw.get("dynamic_img_size"):
        kw.update(interpolate_antialias=True, interpolate_offset=0.0)
    model = load_torch_state_dict(DinoVisionTransformer(**kw, rngs=nnx.Rngs(0)),
                                  _timm_to_official(tm.state_dict(), n_reg))
    return tm, model


def _timm_attention(tm, x, block):
    """Softmax weights of timm block `block` with fused attention off: the input of its `attn_drop`
    (identity in eval) is `softmax(q k^T * scale)`, captured by a forward hook."""
    import torch

    attn = tm.blocks[block].attn
    attn.fused_attn = False
    got = []
    handle = attn.attn_drop.register_forward_hook(lambda m, inp, out: got.append(inp[0].detach().numpy()))
    with torch.no_grad():
        tm.forward_features(x)
    handle.remove()
    assert len(got) == 1
    return got[0]


@pytest.mark.parametrize("case", ["plain_last", "plain_block0", "reg4_last_rect"])
def test_attention_weights_match_timm_non_fused(case):
    torch = pytest.importorskip("torch")
    n_reg = 4 if "reg4" in case else 0
    name = "vit_small_patch14_reg4_dinov2" if n_reg else "vit_small_patch14_dinov2"
    tm, model = _timm_and_jax(name, n_reg, **(dict(dynamic_img_size=True) if n_reg else {}))
    block = 0 if "block0" in case else -1
    h, w = (70, 42) if "rect" in case else (56, 56)
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    ref = _timm_attention(tm, x, block)  # [B, heads, T, T]
    xj = jnp.asarray(x.permute(0, 2, 3, 1).numpy())
    got = np.asarray(model.get_self_attention(xj, block=block))
    t = 1 + n_reg + (h // 14) * (w // 14)
    assert got.shape == ref.shape == (2, 4, t, t)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    maps = model.get_cls_attention_maps(xj, block=block)
    assert maps["patches"].shape == (2, 4, h // 14, w // 14) and maps["registers"].shape == (2, 4, n_reg)
    np.testing.assert_allclose(np.asarray(maps["patches"]), ref[:, :, 0, 1 + n_reg:].reshape(2, 4, h // 14, w // 14),
                               atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(maps["registers"]), ref[:, :, 0, 1:1 + n_reg], atol=TOL, rtol=0)
    total = maps["patches"].sum((2, 3)) + maps["registers"].sum(-1) + maps["cls"]
    np.testing.assert_allclose(np.asarray(total), 1.0, atol=1e-6)


def test_weights_reproduce_the_fused_attention_output():
    """proj(weights @ v) equals the module's own forward (xla backend): the explicit path is the same math."""
    attn = Attention(32, 4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 11, 32))
    w = attn.attention_weights(x)
    v = attn.qkv(x).reshape(2, 11, 3, 4, 8)[:, :, 2]
    out = attn.proj(jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(2, 11, 32))
    np.testing.assert_allclose(np.asarray(out), np.asarray(attn(x)), atol=1e-5, rtol=0)


def test_block_index_checked_scan_blocks_and_bf16_same_maps():
    kw = dict(img_size=28, patch_size=14, embed_dim=32, depth=3, num_heads=2, init_values=1.0)
    m = DinoVisionTransformer(**kw, rngs=nnx.Rngs(0))
    ms = DinoVisionTransformer(**kw, scan_blocks=True, rngs=nnx.Rngs(0))
    mb = DinoVisionTransformer(**kw, dtype="bfloat16", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (1, 28, 28, 3))
    ref = np.asarray(m.get_self_attention(x, -1))
    np.testing.assert_allclose(np.asarray(ms.get_self_attention(x, 2)), ref, atol=1e-6)
    bf = mb.get_self_attention(x, -1)
    assert bf.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(bf), ref, atol=2e-2)  # bf16 activations, float32 softmax
    with pytest.raises(ValueError, match="block=3 out of range for depth 3"):
        m.get_self_attention(x, 3)


@pytest.mark.gpu  # skipped without a GPU (tests/conftest.py says why); not yet run on one
def test_cudnn_model_gives_the_same_maps_as_xla():
    """A bf16 model whose blocks run cuDNN flash attention still returns maps (explicit softmax for the
    chosen block) that match the same weights with the XLA backend."""
    kw = dict(img_size=56, patch_size=14, embed_dim=128, depth=2, num_heads=2, init_values=1.0,
              num_register_tokens=4, dtype="bfloat16")
    m_cudnn = DinoVisionTransformer(**kw, attn_impl="cudnn", rngs=nnx.Rngs(0))
    m_xla = DinoVisionTransformer(**kw, attn_impl="xla", rngs=nnx.Rngs(0))
    assert m_cudnn.blocks[0].attn.attn_impl == "cudnn"
    x = jax.random.normal(jax.random.key(0), (2, 56, 56, 3))
    a, b = m_cudnn.get_cls_attention_maps(x), m_xla.get_cls_attention_maps(x)
    for k in ("patches", "registers", "cls"):
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), atol=2e-2)
