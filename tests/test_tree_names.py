import jax
import numpy as np
import optax
import pytest
from flax import nnx

from dinov2_jax.tree_names import path_to_name


def _names(tree):
    return [path_to_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_nested_dicts_and_lists():
    tree = {"blocks": [{"attn": {"qkv": {"kernel": 1}}}], "cls_token": 2}
    assert _names(tree) == ["blocks.0.attn.qkv.kernel", "cls_token"]


def test_drops_trailing_nnx_value_only():
    m = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    assert sorted(_names(nnx.state(m))) == ["bias", "kernel"]
    # a parameter that is itself called "value" keeps its name when it is not the NNX payload
    assert _names({"value": {"kernel": 1}}) == ["value.kernel"]


def test_optimizer_state_attributes():
    opt = optax.adamw(1e-3).init({"w": np.zeros(2)})
    names = _names(opt)
    assert "0.mu.w" in names and "0.nu.w" in names and "0.count" in names


def test_unknown_key_type_is_an_error():
    with pytest.raises(TypeError, match="unknown pytree key"):
        path_to_name(("blocks",))
