"""Position-embedding resampling vs torch.nn.functional.interpolate (the op the official code calls)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import jax.numpy as jnp  # noqa: E402

from dinov2_jax.models.layers.pos_embed import (  # noqa: E402
    bicubic_aa_matrix, bicubic_matrix, interpolate_pos_embed, resample_matrices)

CASES = [(37, 16, 16), (16, 7, 7), (14, 6, 6), (16, 12, 20), (4, 9, 9), (5, 8, 13), (16, 16, 8)]


# Our float32 result is compared with torch run in float64 (the exact function): torch's own float32
# kernel carries up to ~5e-6 rounding error at 37->16 (its float32 coordinates/weights), ours ~2e-7.
def _torch_offset(pe_grid, oh, ow, offset, antialias=False):
    m = pe_grid.shape[0]
    t = torch.from_numpy(np.asarray(pe_grid, np.float64)).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(t, mode="bicubic", antialias=antialias,
                                          scale_factor=((oh + offset) / m, (ow + offset) / m))
    return out[0].permute(1, 2, 0).numpy()


def _torch_size(pe_grid, oh, ow, antialias):
    t = torch.from_numpy(np.asarray(pe_grid, np.float64)).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(t, mode="bicubic", antialias=antialias, size=(oh, ow))
    return out[0].permute(1, 2, 0).numpy()


def _pe(m, d=8, seed=0):
    # Unit-range values (trained pos-embeds are O(0.1-1)); fp32 rounding noise stays < 1e-6.
    return np.random.default_rng(seed).uniform(-1, 1, (1, 1 + m * m, d)).astype(np.float32)


def _apply64(mh, mw, grid):
    return np.einsum("hm,wn,mnd->hwd", mh, mw, grid)


@pytest.mark.parametrize("m,oh,ow", CASES)
@pytest.mark.parametrize("mode", ["offset", "size", "size_aa", "offset_aa"])
def test_weights_exact_against_torch_float64(m, oh, ow, mode):
    """torch float64 uses float64 coordinates and weights: our matrices must agree to rounding."""
    grid = np.random.default_rng(3).standard_normal((m, m, 5))
    antialias = mode.endswith("aa")
    offset = 0.1 if mode.startswith("offset") else 0.0
    if offset:
        ref = _torch_offset(grid, oh, ow, offset, antialias)
    else:
        ref = _torch_size(grid, oh, ow, antialias)
    mh, mw = resample_matrices(m, oh, ow, antialias=antialias, offset=offset)
    np.testing.assert_allclose(_apply64(mh, mw, grid), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("m,oh,ow", CASES)
def test_offset_mode_matches_torch_scale_factor(m, oh, ow):
    pe = _pe(m)
    ref = _torch_offset(pe[0, 1:].reshape(m, m, -1), oh, ow, 0.1)
    assert ref.shape[:2] == (oh, ow)
    got = np.asarray(interpolate_pos_embed(jnp.asarray(pe), oh, ow, antialias=False, offset=0.1))
    np.testing.assert_allclose(got[0, 1:].reshape(oh, ow, -1), ref, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(got[0, 0], pe[0, 0])  # cls slot untouched


@pytest.mark.parametrize("m,oh,ow", CASES)
@pytest.mark.parametrize("antialias", [True, False])
def test_size_mode_matches_torch(m, oh, ow, antialias):
    pe = _pe(m, seed=1)
    ref = _torch_size(pe[0, 1:].reshape(m, m, -1), oh, ow, antialias)
    got = np.asarray(interpolate_pos_embed(jnp.asarray(pe), oh, ow, antialias=antialias, offset=0.0))
    np.testing.assert_allclose(got[0, 1:].reshape(oh, ow, -1), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("m,oh,ow", [(37, 16, 16), (16, 12, 20), (6, 9, 9)])
def test_offset_mode_with_antialias_matches_torch(m, oh, ow):
    pe = _pe(m, seed=2)
    ref = _torch_offset(pe[0, 1:].reshape(m, m, -1), oh, ow, 0.1, antialias=True)
    got = np.asarray(interpolate_pos_embed(jnp.asarray(pe), oh, ow, antialias=True, offset=0.1))
    np.testing.assert_allclose(got[0, 1:].reshape(oh, ow, -1), ref, atol=1e-6, rtol=0)


def test_offset_mapping_differs_from_plain_resize():
    """The scale-factor coordinate map is not the in/out one: the two matrices must differ (37->16)."""
    assert np.abs(bicubic_matrix(37, 16, 16.1 / 37) - bicubic_matrix(37, 16)).max() > 1e-3


def test_rows_sum_to_one():
    for mat in (bicubic_matrix(37, 16, 16.1 / 37), bicubic_aa_matrix(37, 16), bicubic_aa_matrix(7, 16)):
        np.testing.assert_allclose(mat.sum(1), 1.0, atol=1e-12)


def test_same_grid_is_identity_and_bad_grid_raises():
    pe = jnp.asarray(_pe(5))
    assert interpolate_pos_embed(pe, 5, 5, antialias=False, offset=0.1) is pe
    with pytest.raises(ValueError, match="square"):
        interpolate_pos_embed(jnp.zeros((1, 1 + 6, 4)), 3, 3, antialias=False, offset=0.1)
    mh, mw = resample_matrices(5, 5, 7, antialias=False, offset=0.1)
    assert mh.shape == (5, 5) and mw.shape == (7, 5)


def test_float32_torch_within_its_rounding():
    """Against torch float32 itself (what the official model runs) the gap is torch's rounding, < 1e-5."""
    m, o = 37, 16
    pe = _pe(m, seed=4)
    t = torch.from_numpy(pe[0, 1:].reshape(m, m, -1)).permute(2, 0, 1)[None]
    ref = torch.nn.functional.interpolate(t, mode="bicubic", scale_factor=((o + 0.1) / m,) * 2)
    ref = ref[0].permute(1, 2, 0).numpy()
    got = np.asarray(interpolate_pos_embed(jnp.asarray(pe), o, o, antialias=False, offset=0.1))
    np.testing.assert_allclose(got[0, 1:].reshape(o, o, -1), ref, atol=1e-5, rtol=0)
