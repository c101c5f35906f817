"""Official DPT depth head (`_dd`): same key names and shapes as the official DPTHead, same depth maps as the
official hub DPT depther on the same backbone and head weights (golden fixture, fixtures/make_dpt_fixture.py),
state-dict round trip and strict loading."""
import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dinov2_jax import convert
from dinov2_jax.models.heads import dpt
from dinov2_jax.models.vision_transformer import DinoVisionTransformer

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
_spec = importlib.util.spec_from_file_location("make_dpt", os.path.join(FIX, "make_dpt_fixture.py"))
make_dpt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_dpt)


def _fixture():
    d = np.load(os.path.join(FIX, "dpt_depth_official.npz"))
    shapes = {k: tuple(int(n) for n in s.split(",")) for k, s in zip(d["keys"], d["shapes"])}
    return d, shapes


def test_param_names_and_shapes_are_the_official_ones():
    _, official = _fixture()
    assert dpt.param_shapes(32) == official


def test_depth_matches_official_hub_dpt_depther():
    d, shapes = _fixture()
    backbone = DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=32, depth=4, num_heads=2, init_values=1.0,
                                     rngs=nnx.Rngs(1))
    convert.load_torch_state_dict(backbone, {k[3:]: d[k] for k in d.files if k.startswith("sd/")})
    sd = {f"decode_head.{k}": v for k, v in make_dpt.head_weights(shapes).items()}
    sd["backbone.pos_embed"] = np.zeros(3, np.float32)  # keys outside decode_head are not the head's business
    head = dpt.head_from_state_dict({"state_dict": sd}, *dpt.DEPTH_RANGES["nyu"])
    out = dpt.predict_depth_dpt(backbone, head, jnp.asarray(d["x"]), (0, 1, 2, 3))
    assert out.shape == d["depth"].shape == (2, 50, 61)
    assert d["depth"].std() > 0.05  # the reference is not flat, so the comparison means something
    np.testing.assert_allclose(np.asarray(out), d["depth"], rtol=1e-5, atol=1e-5)
    back = dpt.head_to_state_dict(head)
    assert set(back) == {k for k in sd if k.startswith("decode_head.")}
    for k, v in back.items():
        np.testing.assert_array_equal(v, sd[k])


def test_strict_loading_lists_the_problems():
    _, shapes = _fixture()
    sd = {f"decode_head.{k}": v for k, v in make_dpt.head_weights(shapes).items()}
    del sd["decode_head.project.conv.bias"]
    sd["decode_head.fusion_blocks.0.res_conv_unit1.conv1.conv.weight"] = np.zeros((256, 256, 3, 3), np.float32)
    sd["decode_head.convs.2.conv.weight"] = np.zeros((256, 3, 3, 3), np.float32)
    with pytest.raises(ValueError) as e:
        dpt.head_from_state_dict(sd)
    msg = str(e.value)
    assert "missing (1): ['decode_head.project.conv.bias']" in msg
    assert "unexpected (1): ['decode_head.fusion_blocks.0.res_conv_unit1.conv1.conv.weight']" in msg
    assert "mis-shaped (1): ['decode_head.convs.2.conv.weight" in msg
    with pytest.raises(ValueError, match="not a DPT depth head"):
        dpt.head_from_state_dict({"decode_head.conv_depth.weight": np.zeros((256, 64, 1, 1))})


def test_random_init_head_runs_at_hub_width():
    head = dpt.DPTDepthHead(384, rngs=nnx.Rngs(0))  # ViT-S/14 width: post-process channels 48, 96, 192, 384
    feats = [(jnp.ones((1, 3, 4, 384)), jnp.ones((1, 384)))] * 4
    assert head(feats).shape == (1, 64, 64)
    assert head.weights["reassemble_blocks.projects.0.conv.weight"].shape == (48, 384, 1, 1)


def test_hub_dpt_depther_file_names_and_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    from dinov2_jax import hub_depthers

    assert hub_depthers.head_file_name("dinov2_vitg14_dd", "kitti") == "dinov2_vitg14_kitti_dpt_head.pth"
    assert "dinov2_vits14_dd" in hub_depthers.DEPTHER_NAMES  # all 8 names are checked against the official hub
    d, shapes = _fixture()
    path = str(tmp_path / "dinov2_vits14_kitti_dpt_head.pth")
    torch.save({"meta": {}, "state_dict": {f"decode_head.{k}": torch.from_numpy(v)
                                           for k, v in make_dpt.head_weights(shapes).items()}}, path)
    head = dpt.head_from_state_dict(hub_depthers.load_depth_checkpoint(path), *dpt.DEPTH_RANGES["kitti"])
    assert (head.min_depth, head.max_depth) == (0.001, 80.0)
    backbone = DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=32, depth=12, num_heads=2, rngs=nnx.Rngs(0))
    dep = hub_depthers.DPTDepther(backbone, head)
    assert dep.out_index == (2, 5, 8, 11)  # the official blocks of a 12-block backbone
    assert dep(jnp.asarray(d["x"][:1])).shape == (1, 50, 61)
    wide = DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=48, depth=12, num_heads=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="32-dim backbone"):
        hub_depthers.DPTDepther(wide, head)
