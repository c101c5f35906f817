"""DINOHead vs the official DINOHead (golden fixture), parameter layout and init."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dinov2_jax.convert import load_torch_state_dict, params_to_torch_state_dict
from dinov2_jax.models.dino_head import DINOHead

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "dino_head.npz")


def _fixture():
    d = np.load(FIX)
    sd = {k[3:]: d[k].astype(np.float32) for k in d.files if k.startswith("sd/")}
    return sd, d["x"], d["y"], json.loads(str(d["arch_json"]))


def test_matches_official_head():
    sd, x, y, arch = _fixture()
    head = load_torch_state_dict(DINOHead(**arch, rngs=nnx.Rngs(0)), sd)
    np.testing.assert_allclose(np.asarray(head(jnp.asarray(x))), y, atol=1e-5, rtol=0)
    back = params_to_torch_state_dict(head)
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


def test_param_layout_and_init():
    head = DINOHead(8, 20, nlayers=3, hidden_dim=16, bottleneck_dim=4, rngs=nnx.Rngs(0))
    shapes = {"/".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(head, nnx.Param))}
    assert shapes == {"mlp/0/kernel": (8, 16), "mlp/0/bias": (16,), "mlp/1/kernel": (16, 16), "mlp/1/bias": (16,),
                      "mlp/2/kernel": (16, 4), "mlp/2/bias": (4,), "last_layer/weight_g": (20,),
                      "last_layer/weight_v": (4, 20)}
    np.testing.assert_array_equal(np.asarray(head.last_layer.weight_g[...]), 1.0)
    bound = 1 / np.sqrt(4)  # torch default Linear init for the weight-normed layer
    v = np.asarray(head.last_layer.weight_v[...])
    assert v.max() <= bound and v.min() >= -bound
    one = DINOHead(8, 20, nlayers=1, bottleneck_dim=4, rngs=nnx.Rngs(0))
    assert set(params_to_torch_state_dict(one)) == {"mlp.weight", "mlp.bias", "last_layer.weight_g",
                                                    "last_layer.weight_v"}
    assert one(jnp.ones((3, 8))).shape == (3, 20)


def test_weight_g_scales_output_and_is_trainable():
    head = DINOHead(8, 6, hidden_dim=16, bottleneck_dim=4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (5, 8))
    g = nnx.grad(lambda h: jnp.sum(h(x) ** 2))(head)
    assert np.abs(np.asarray(g["last_layer"]["weight_g"][...])).max() > 0


def test_batch_norm_head_is_refused():
    with pytest.raises(NotImplementedError):
        DINOHead(4, 4, use_bn=True, rngs=nnx.Rngs(0))
