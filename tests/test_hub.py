"""Hub loader: architecture table vs the official hubconf, loading .pth / converted dirs, clear errors."""
import functools
import logging
import os

import jax
import numpy as np
import pytest
from flax import nnx

from dinov2_jax import hub

OFFICIAL = os.environ.get("DINOV2_OFFICIAL_PATH", "/work/ref/dinov2")

# official hubconf architectures (dinov2/hub/backbones.py): (embed_dim, depth, heads, ffn, number of official state-dict keys)
EXPECTED = {"s": (384, 12, 6, "mlp", 175), "b": (768, 12, 12, "mlp", 175), "l": (1024, 24, 16, "mlp", 343),
            "g": (1536, 40, 24, "swiglufused", 567)}


@functools.lru_cache(maxsize=None)
def abstract_param_shapes(name):
    """Shapes of the hub model's parameters, built abstractly (no memory, no init)."""
    state = nnx.state(nnx.eval_shape(lambda: hub.create_model(name)), nnx.Param)
    return [tuple(v.shape) for v in jax.tree.leaves(state)]


@pytest.mark.parametrize("name", hub.HUB_NAMES)
def test_arch_table(name):
    a = hub.hub_arch(name)
    dim, depth, heads, ffn, n_keys = EXPECTED[name[len("dinov2_vit")]]
    reg = name.endswith("_reg")
    assert (a["embed_dim"], a["depth"], a["num_heads"], a["ffn_layer"]) == (dim, depth, heads, ffn)
    assert (a["img_size"], a["patch_size"], a["init_values"], a["mlp_ratio"]) == (518, 14, 1.0, 4.0)
    assert (a["num_register_tokens"], a["interpolate_antialias"], a["interpolate_offset"]) == \
        ((4, True, 0.0) if reg else (0, False, 0.1))
    # one parameter tensor per official state-dict key (official state-dict counts, +1 for register_tokens)
    assert len(abstract_param_shapes(name)) == n_keys + int(reg)


@pytest.mark.skipif(not os.path.isdir(os.path.join(OFFICIAL, "dinov2")), reason="official dinov2 code not found")
@pytest.mark.parametrize("name", hub.HUB_NAMES)
def test_arch_table_matches_official_hubconf(name):
    torch = pytest.importorskip("torch")
    import sys

    sys.path.insert(0, OFFICIAL)
    from dinov2.hub import backbones

    with torch.device("meta"):  # no memory, no init
        ref = getattr(backbones, name)(pretrained=False)
    a = hub.hub_arch(name)
    blk = ref.blocks[0]
    assert a["embed_dim"] == ref.embed_dim and a["depth"] == len(ref.blocks) and a["num_heads"] == ref.num_heads
    assert a["patch_size"] == ref.patch_size and a["num_register_tokens"] == ref.num_register_tokens
    assert a["interpolate_antialias"] == ref.interpolate_antialias
    assert a["interpolate_offset"] == ref.interpolate_offset
    assert ref.pos_embed.shape[1] == 1 + (a["img_size"] // a["patch_size"]) ** 2
    assert (type(blk.mlp).__name__ == "SwiGLUFFNFused") == (a["ffn_layer"] == "swiglufused")
    assert blk.ls1.init_values == a["init_values"]
    # same number of parameters (catches hidden-width rounding, biases, tokens)
    ours = sum(int(np.prod(s)) for s in abstract_param_shapes(name))
    assert ours == sum(p.numel() for p in ref.parameters())


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: dinov2_vits14, dinov2_vits14_reg"):
        hub.load("dinov2_vits16")


def test_bad_weights_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        hub.load("dinov2_vits14", str(tmp_path / "nope.pth"))
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        hub.load("dinov2_vits14", str(tmp_path / "w.npz"))
    with pytest.raises(ValueError, match="no arch.json .* config.json"):
        hub.load("dinov2_vits14", str(tmp_path))


def test_load_official_pth_and_converted_dir(tmp_path, caplog):
    torch = pytest.importorskip("torch")
    from dinov2_jax import convert

    with caplog.at_level(logging.WARNING, logger="dinov2_jax.hub"):
        src = hub.load("dinov2_vits14_reg")  # no weights: random init, loudly
    assert "RANDOM INITIALISATION" in caplog.text
    assert src.arch["num_register_tokens"] == 4 and src.embed_dim == 384
    sd = {k: torch.from_numpy(v.copy()) for k, v in convert.params_to_torch_state_dict(src).items()}
    assert len(sd) == 176 and sd["register_tokens"].shape == (1, 4, 384)
    pth = str(tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    torch.save(sd, pth)
    x = np.random.default_rng(0).normal(size=(2, 28, 42, 3)).astype(np.float32)
    ref = np.asarray(src(x))

    m1 = hub.load("dinov2_vits14_reg", pth)
    np.testing.assert_array_equal(np.asarray(m1.pos_embed[...]), np.asarray(src.pos_embed[...]))
    np.testing.assert_allclose(np.asarray(m1(x)), ref, atol=1e-6)
    assert m1.interpolate_antialias and m1.interpolate_offset == 0.0

    conv = str(tmp_path / "conv")
    convert.save_converted(m1, conv)
    for name in ("dinov2_vits14_reg", None):  # named, or architecture taken from arch.json
        np.testing.assert_allclose(np.asarray(hub.load(name, conv)(x)), ref, atol=1e-6)

    # the wrong name: a clear error listing the difference and naming the model the file holds
    with pytest.raises(ValueError, match=r"num_register_tokens: expected 0, weights have 4.*") as e:
        hub.load("dinov2_vits14", pth)
    assert "look like 'dinov2_vits14_reg'" in str(e.value)
    with pytest.raises(ValueError, match="embed_dim: expected 768"):
        hub.load("dinov2_vitb14_reg", conv)
