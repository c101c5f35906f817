"""DinoVisionTransformer: parity with the official DINOv2 code (golden fixtures) and with timm (live),
plus the behaviour the official code defines (token layout, masks, errors, stochastic depth, remat)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dinov2_jax.convert import load_torch_state_dict
from dinov2_jax.models.vision_transformer import (DinoVisionTransformer, build_backbone, vit_base, vit_giant2,
                                                  vit_large, vit_small)

TOL = 1e-5
OUT_KEYS = ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens")


@nnx.jit
def _jit_forward(model, x, masks):
    return model.forward_features(x, masks)


def _model_from_case(case, **extra):
    model = DinoVisionTransformer(**case["kw"], **extra, rngs=nnx.Rngs(0))
    return load_torch_state_dict(model, case["sd"])


def _check_outputs(model, inp):
    masks = None if inp["masks"] is None else jnp.asarray(inp["masks"])
    out = _jit_forward(model, jnp.asarray(inp["x"]), masks)
    for k in OUT_KEYS:
        ref = inp["out"][k]
        assert out[k].shape == ref.shape, k
        np.testing.assert_allclose(np.asarray(out[k]), ref, atol=TOL, rtol=0, err_msg=k)
    # x_prenorm carries cls, registers and patches in the official order
    r = model.num_register_tokens
    assert out["x_prenorm"].shape == (ref.shape[0], 1 + r + ref.shape[1], ref.shape[2])
    return out


@pytest.mark.parametrize("name", ["vits14", "vits14_reg4", "swiglu_nobias"])
def test_forward_features_matches_official(official_case, name):
    case = official_case(name)
    model = _model_from_case(case)
    assert set(case["inputs"]) >= {""}
    for prefix, inp in case["inputs"].items():  # incl. non-square 168x280 and resampled grids
        _check_outputs(model, inp)


def test_official_nonsquare_168x280_is_interpolated(official_case):
    case = official_case("vits14")
    inp = case["inputs"]["nonsquare/"]
    assert inp["x"].shape == (1, 168, 280, 3) and inp["out"]["x_norm_patchtokens"].shape[1] == 12 * 20
    _check_outputs(_model_from_case(case), inp)


def test_masks_change_output_as_official(official_case):
    """Sanity: the fixture masks matter (without them the output differs), so the mask path is tested."""
    case = official_case("vits14")
    model = _model_from_case(case)
    inp = case["inputs"][""]
    assert inp["masks"] is not None and inp["masks"].any()
    out = model.forward_features(jnp.asarray(inp["x"]))
    assert np.abs(np.asarray(out["x_norm_patchtokens"]) - inp["out"]["x_norm_patchtokens"]).max() > 1e-2


@pytest.mark.parametrize("name", ["vits14", "vits14_reg4", "swiglu_nobias"])
def test_get_intermediate_layers_matches_official(official_case, name):
    case = official_case(name)
    model = _model_from_case(case)
    x = jnp.asarray(case["inputs"][""]["x"])
    depth = case["kw"]["depth"]
    res = model.get_intermediate_layers(x, n=2, reshape=True, return_class_token=True, norm=True)
    assert len(res) == 2
    for i, (p, c) in enumerate(res):
        np.testing.assert_allclose(np.asarray(p), case["gil"][f"last2_reshape_cls/{i}/patch"], atol=TOL, rtol=0)
        np.testing.assert_allclose(np.asarray(c), case["gil"][f"last2_reshape_cls/{i}/cls"], atol=TOL, rtol=0)
    res = model.get_intermediate_layers(x, n=[0, depth - 1], reshape=False, norm=False)
    for i, p in enumerate(res):
        np.testing.assert_allclose(np.asarray(p), case["gil"][f"idx_nonorm/{i}"], atol=TOL, rtol=0)


def test_list_input_matches_separate_calls(official_case):
    case = official_case("vits14")
    model = _model_from_case(case)
    a, b = case["inputs"][""], case["inputs"]["small/"]
    outs = model.forward_features([jnp.asarray(a["x"]), jnp.asarray(b["x"])], [jnp.asarray(a["masks"]), None])
    np.testing.assert_allclose(np.asarray(outs[0]["x_norm_patchtokens"]), a["out"]["x_norm_patchtokens"], atol=TOL)
    assert outs[1]["masks"] is None and outs[1]["x_norm_patchtokens"].shape[1] == 15
    with pytest.raises(ValueError, match="masks entries"):
        model.forward_features([jnp.asarray(a["x"])], [None, None])


def test_call_returns_cls_and_dict_when_training(official_case):
    case = official_case("vits14_reg4")
    model = _model_from_case(case)
    inp = case["inputs"]["down/"]
    x = jnp.asarray(inp["x"])
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(model.forward_features(x)["x_norm_clstoken"]))
    assert set(model(x, is_training=True)) == {*OUT_KEYS, "x_prenorm", "masks"}


def test_jit_and_bf16_close_to_fp32(official_case):
    case = official_case("vits14")
    inp = case["inputs"][""]
    model = _model_from_case(case, dtype="bfloat16")
    out = nnx.jit(lambda m, x: m.forward_features(x))(model, jnp.asarray(inp["x"]))
    # the residual stream stays float32 (official autocast): only the block matmuls are bf16
    assert out["x_norm_patchtokens"].dtype == jnp.float32
    ref = _model_from_case(case).forward_features(jnp.asarray(inp["x"]))["x_norm_patchtokens"]
    err = np.abs(np.asarray(out["x_norm_patchtokens"], np.float32) - np.asarray(ref))
    assert err.mean() < 0.02 and err.max() < 0.25, (err.mean(), err.max())


# ---------------------------------------------------------------------------------------------------
def _tiny(**kw):
    base = dict(img_size=28, patch_size=14, embed_dim=16, depth=2, num_heads=2, rngs=nnx.Rngs(0))
    base.update(kw)
    return DinoVisionTransformer(**base)


def test_non_multiple_image_size_raises_with_nearest_sizes():
    model = _tiny()
    with pytest.raises(ValueError, match=r"30x28 is not a multiple of the patch size 14.*height 30 \(nearest "
                                         r"valid: 28 or 42\)"):
        model(jnp.zeros((1, 30, 28, 3)))
    with pytest.raises(ValueError, match="NHWC"):
        model(jnp.zeros((3, 28, 28)))


def test_token_layout_registers_and_mask_token():
    model = _tiny(num_register_tokens=3, init_values=0.5)
    x = jax.random.normal(jax.random.key(0), (2, 28, 42, 3))
    t = model.prepare_tokens_with_masks(x)
    assert t.shape == (2, 1 + 3 + 6, 16)
    # registers sit right after cls and carry no position embedding
    np.testing.assert_array_equal(np.asarray(t[:, 1:4]), np.broadcast_to(np.asarray(model.register_tokens[...]),
                                                                       (2, 3, 16)))
    masks = jnp.zeros((2, 6), bool).at[0, 2].set(True)
    tm = model.prepare_tokens_with_masks(x, masks)
    pos = model.interpolate_pos_encoding(28, 42)
    # masked patch = mask_token + its position embedding (substituted before the pos add)
    np.testing.assert_allclose(np.asarray(tm[0, 4 + 2]), np.asarray(model.mask_token[0] + pos[0, 1 + 2]), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(tm[1]), np.asarray(t[1]))
    with pytest.raises(ValueError, match="masks must be"):
        model.prepare_tokens_with_masks(x, jnp.zeros((2, 5), bool))


def test_layerscale_none_has_no_gamma_and_param_names():
    names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(_tiny(), nnx.Param))}
    assert not any("ls1" in n or "register" in n for n in names)
    assert {"cls_token", "pos_embed", "mask_token", "patch_embed/proj/kernel", "blocks/0/attn/qkv/kernel",
            "blocks/1/mlp/fc2/bias", "norm/scale"} <= names


def test_init_statistics_follow_official():
    model = DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=2,
                                  num_register_tokens=2, init_values=1e-5, rngs=nnx.Rngs(1))
    assert np.all(np.asarray(model.mask_token[...]) == 0)
    assert np.abs(np.asarray(model.cls_token[...])).max() < 1e-5
    assert np.abs(np.asarray(model.register_tokens[...])).max() < 1e-5
    qkv = np.asarray(model.blocks[0].attn.qkv.kernel[...])
    assert abs(qkv.std() - 0.02) < 0.002 and np.all(model.blocks[0].attn.qkv.bias[...] == 0)
    assert abs(np.asarray(model.pos_embed[...]).std() - 0.02) < 0.003
    conv = np.asarray(model.patch_embed.proj.kernel[...])
    bound = 1 / np.sqrt(3 * 14 * 14)  # torch default kaiming_uniform(a=sqrt(5))
    assert conv.max() <= bound and conv.min() >= -bound and conv.max() > 0.9 * bound
    np.testing.assert_array_equal(np.asarray(model.blocks[1].ls2.gamma[...]), np.float32(1e-5))


def test_factories_and_param_counts():
    # exact counts from the spec (p=14, img 518, no registers); built abstractly (no memory)
    expected = {"vit_small": 22_056_576, "vit_base": 86_580_480, "vit_large": 304_368_640,
                "vit_giant2": 1_136_480_768}
    for arch, n in expected.items():
        kw = dict(patch_size=14, img_size=518, init_values=1.0)
        if arch == "vit_giant2":
            kw["ffn_layer"] = "swiglufused"
        model = nnx.eval_shape(lambda: build_backbone(arch, **kw, rngs=nnx.Rngs(0)))
        count = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
        assert count == n, arch
    assert vit_small is not None and vit_base and vit_large and vit_giant2
    with pytest.raises(ValueError, match="Unknown arch"):
        build_backbone("vit_huge")


def test_drop_path_rates_and_stochastic_depth():
    model = _tiny(depth=3, drop_path_rate=0.5, init_values=1.0)
    np.testing.assert_allclose(model.drop_path_rates, [0.0, 0.25, 0.5])
    assert _tiny(depth=3, drop_path_rate=0.4, drop_path_uniform=True).drop_path_rates == [0.4] * 3
    x = jax.random.normal(jax.random.key(0), (8, 28, 28, 3))
    det = model.forward_features(x)["x_prenorm"]
    a = model.forward_features(x, key=jax.random.key(1))["x_prenorm"]
    b = model.forward_features(x, key=jax.random.key(1))["x_prenorm"]
    c = model.forward_features(x, key=jax.random.key(2))["x_prenorm"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # same key, same result
    assert np.abs(np.asarray(a) - np.asarray(det)).max() > 1e-3
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3
    # rate 0 -> key has no effect
    m0 = _tiny(depth=2)
    np.testing.assert_array_equal(np.asarray(m0(x, key=jax.random.key(3))), np.asarray(m0(x)))


def test_remat_same_values_and_grads():
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 3))
    key = jax.random.key(5)

    def grads(m):
        def loss(m):
            return jnp.sum(m.forward_features(x, key=key)["x_norm_patchtokens"] ** 2)
        return nnx.jit(nnx.value_and_grad(loss))(m)

    v0, g0 = grads(_tiny(drop_path_rate=0.3, init_values=0.1))
    for remat in ("full", "dots"):
        v1, g1 = grads(_tiny(drop_path_rate=0.3, init_values=0.1, remat=remat))
        np.testing.assert_allclose(float(v0), float(v1), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="remat"):
        _tiny(remat="some")


@pytest.mark.parametrize("kw", [
    dict(drop_path_rate=0.3, drop_path_uniform=True, init_values=0.1),  # one scan over all 4 blocks
    dict(drop_path_rate=0.3, init_values=0.1, remat="dots"),  # linspace rates: runs of length 1
    dict(drop_path_rate=0.0, num_register_tokens=2, ffn_layer="swiglufused", remat="full"),
])
def test_scan_blocks_same_values_and_grads_as_loop(kw):
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 3))
    masks = jax.random.bernoulli(jax.random.key(1), 0.4, (4, 4))

    def run(scan):
        model = _tiny(depth=4, scan_blocks=scan, **kw)

        def loss(m):
            out = m.forward_features(x, masks, key=jax.random.key(5))
            return jnp.sum(out["x_norm_patchtokens"] ** 2) + jnp.sum(out["x_norm_clstoken"])
        value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
        inter = model.get_intermediate_layers(x, n=[0, 2, 3], return_class_token=True)
        return value, grads, inter

    v0, g0, i0 = run(False)
    v1, g1, i1 = run(True)
    np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
    assert jax.tree.structure(g1) == jax.tree.structure(g0)  # parameter tree unchanged: blocks.{i}
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(i0), jax.tree.leaves(i1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-5)


def test_scan_blocks_traces_one_block_per_run():
    """A uniform-rate model scans all blocks: the jaxpr holds one scan and no per-block copies."""
    x = jnp.ones((2, 28, 28, 3))
    jaxpr = str(jax.make_jaxpr(lambda m: m(x))(_tiny(depth=6, scan_blocks=True)))
    assert jaxpr.count("scan[") == 1
    assert str(jax.make_jaxpr(lambda m: m(x))(_tiny(depth=6))).count("scan[") == 0


def test_get_intermediate_layers_errors_and_layout():
    model = _tiny(depth=3, num_register_tokens=2)
    x = jnp.ones((1, 28, 42, 3))
    (p,) = model.get_intermediate_layers(x, n=1, reshape=True)
    assert p.shape == (1, 16, 2, 3)  # [B, D, H/p, W/p], official layout
    with pytest.raises(ValueError, match="out of range"):
        model.get_intermediate_layers(x, n=[3])
    with pytest.raises(ValueError, match="between 1 and depth"):
        model.get_intermediate_layers(x, n=4)


# ---- live parity against timm's DINOv2 ViT (independent PyTorch implementation) ---------------------
def _randomise_torch(model, seed):
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("gamma"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * r)
            elif name.endswith("bias"):
                p.copy_(0.1 * r)
            elif p.ndim >= 2 and not name.endswith("token") and name != "pos_embed":
                p.copy_(r / np.sqrt(np.prod(p.shape[1:])))
            else:
                p.copy_(0.5 * r)


TIMM_CASES = {
    "plain": ("vit_small_patch14_dinov2", dict(), dict(), (56, 56)),
    "reg4_resampled": ("vit_small_patch14_reg4_dinov2", dict(dynamic_img_size=True),
                       dict(num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0), (70, 42)),
    "swiglu": ("vit_small_patch14_dinov2", None, dict(ffn_layer="swiglufused"), (56, 56)),
    "no_ls_no_qkv_bias": ("vit_small_patch14_dinov2", dict(init_values=0.0, qkv_bias=False),  # timm drops None kwargs
                          dict(init_values=None, qkv_bias=False), (56, 56)),
}


@pytest.mark.parametrize("case", list(TIMM_CASES))
def test_matches_timm(case):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from timm.layers import SwiGLUPacked

    from dinov2_jax.weights.layouts import timm_to_official  # inverse of timm's _convert_dinov2

    name, tkw, jkw, (h, w) = TIMM_CASES[case]
    dim, heads, depth = 64, 4, 2
    if tkw is None:  # ViT-g style packed SwiGLU: timm hidden = 2 * official rounded hidden
        tkw = dict(mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU, mlp_ratio=2 * 176 / dim)
    n_reg = jkw.get("num_register_tokens", 0)
    tm = timm.create_model(name, pretrained=False, img_size=56, embed_dim=dim, depth=depth, num_heads=heads,
                           num_classes=0, **tkw).eval()
    _randomise_torch(tm, seed=len(case))
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    kw = dict(img_size=56, patch_size=14, embed_dim=dim, depth=depth, num_heads=heads, init_values=1.0)
    kw.update(jkw)
    model = load_torch_state_dict(DinoVisionTransformer(**kw, rngs=nnx.Rngs(0)), timm_to_official(sd))
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = tm.forward_features(x).numpy()
    out = model.forward_features(jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
    np.testing.assert_allclose(np.asarray(out["x_norm_clstoken"]), ref[:, 0], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(out["x_norm_regtokens"]), ref[:, 1:1 + n_reg], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(out["x_norm_patchtokens"]), ref[:, 1 + n_reg:], atol=TOL, rtol=0)


def test_pallas_backend_model_matches_xla():
    """The backend choice reaches every block: same params, pallas (interpret on CPU) == xla."""
    m_xla = _tiny(depth=1, num_register_tokens=2)
    m_pl = _tiny(depth=1, num_register_tokens=2, attn_impl="pallas")
    assert m_pl.blocks[0].attn.attn_impl == "pallas" and m_xla.blocks[0].attn.attn_impl == "xla"
    x = jax.random.normal(jax.random.key(0), (2, 28, 42, 3))
    np.testing.assert_allclose(np.asarray(m_pl(x)), np.asarray(m_xla(x)), atol=1e-5, rtol=0)
