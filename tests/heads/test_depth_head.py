"""Official linear depth head: same depth maps as the hub depther wiring (golden fixture from the official
code, fixtures/make_depth_fixture.py), state-dict round trip, centred padding, bins."""
import importlib.util
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dinov2_jax import convert
from dinov2_jax.models.heads import depth as dh
from dinov2_jax.models.heads import spatial
from dinov2_jax.models.vision_transformer import DinoVisionTransformer

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
_spec = importlib.util.spec_from_file_location("make_depth", os.path.join(FIX, "make_depth_fixture.py"))
make_depth = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_depth)


@pytest.mark.parametrize("layers,out_index", [(1, (3,)), (4, (0, 1, 2, 3))])
def test_depth_matches_official_hub_depther(layers, out_index):
    d = np.load(os.path.join(FIX, "linear_depth_official.npz"))
    backbone = DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=32, depth=4, num_heads=2, init_values=1.0,
                                     rngs=nnx.Rngs(1))
    convert.load_torch_state_dict(backbone, {k[3:]: d[k] for k in d.files if k.startswith("sd/")})
    w, b = make_depth.conv_weights(layers)
    head = dh.head_from_state_dict({"state_dict": {"decode_head.conv_depth.weight": w,
                                                   "decode_head.conv_depth.bias": b, "backbone.x": w}})
    assert head.in_channels == 64 * layers and (head.min_depth, head.max_depth) == dh.HUB_DEPTH_RANGE
    out = dh.predict_depth(backbone, head, jnp.asarray(d["x"]), out_index)
    assert out.shape == d[f"depth{layers}"].shape == (2, 50, 61)
    np.testing.assert_allclose(np.asarray(out), d[f"depth{layers}"], rtol=1e-5, atol=1e-4)
    back = dh.head_to_state_dict(head)
    np.testing.assert_array_equal(back["decode_head.conv_depth.weight"], w)
    np.testing.assert_array_equal(back["decode_head.conv_depth.bias"], b)


def test_center_pad_and_out_index():
    x = jnp.ones((1, 50, 61, 1))
    p = np.asarray(spatial.center_pad(x, 14))[0, :, :, 0]
    assert p.shape == (56, 70)
    # 6 rows: 3 above / 3 below; 9 cols: 4 left / 5 right (torch CenterPadding: left = floor)
    assert p[:3].sum() == 0 and p[53:].sum() == 0 and p[3:53, 4:65].min() == 1
    assert p[:, :4].sum() == 0 and p[:, 65:].sum() == 0
    assert dh.official_out_index(12) == (2, 5, 8, 11) and dh.official_out_index(40, 1) == (39,)
    with pytest.raises(ValueError, match="out_index explicitly"):
        dh.official_out_index(4)


def test_bins_to_depth_linear_norm():
    logits = jnp.array([[-5.0, 0.0, 1.9, -1.0]])
    # relu + 0.1 -> [0.1, 0.1, 2.0, 0.1], bins linspace(0, 3, 4) = [0, 1, 2, 3]
    np.testing.assert_allclose(np.asarray(dh.bins_to_depth(logits, 0.0, 3.0)), [(0.1 + 4.0 + 0.3) / 2.3], rtol=1e-6)


def test_hub_depther_names_and_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    from dinov2_jax import hub_depthers

    assert hub_depthers.head_file_name("dinov2_vitl14_ld", "kitti", 1) == "dinov2_vitl14_kitti_linear_head.pth"
    assert hub_depthers.head_file_name("dinov2_vits14_ld") == "dinov2_vits14_nyu_linear4_head.pth"
    import sys

    official = os.environ.get("DINOV2_OFFICIAL_PATH", "/work/ref/dinov2")
    if os.path.isdir(os.path.join(official, "dinov2")):
        sys.path.insert(0, official)
        from dinov2.hub import depthers

        for name in hub_depthers.DEPTHER_NAMES:
            assert callable(getattr(depthers, name))
    # an mmcv-style checkpoint file -> the same head; a head of the wrong width is refused
    w, b = make_depth.conv_weights(4)
    path = str(tmp_path / "h.pth")
    torch.save({"meta": {"iter": 1}, "state_dict": {"decode_head.conv_depth.weight": torch.from_numpy(w),
                                                    "decode_head.conv_depth.bias": torch.from_numpy(b)}}, path)
    head = dh.head_from_state_dict(hub_depthers.load_depth_checkpoint(path))
    np.testing.assert_array_equal(dh.head_to_state_dict(head)["decode_head.conv_depth.weight"], w)
    backbone = DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=48, depth=4, num_heads=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input channels"):
        hub_depthers.LinearDepther(backbone, head, (0, 1, 2, 3))
