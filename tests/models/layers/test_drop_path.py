"""Stochastic depth: batch-subset residual (official drop_add_residual_stochastic_depth) and DropPath."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinov2_jax.models.layers.drop_path import drop_add_residual_subset, drop_path, subset_size


@pytest.mark.parametrize("b,r,expected", [(8, 0.4, 4), (10, 0.1, 9), (3, 0.9, 1), (1, 0.5, 1), (16, 0.0, 16)])
def test_subset_size_official_rule(b, r, expected):
    assert subset_size(b, r) == expected  # max(int(B * (1 - r)), 1)


def test_subset_residual_semantics():
    b, r = 10, 0.4
    x = jax.random.normal(jax.random.key(0), (b, 3, 4))
    calls = []

    def residual(y):
        calls.append(y.shape)
        return 2.0 * y + 1.0

    out = np.asarray(drop_add_residual_subset(x, residual, r, jax.random.key(1)))
    keep = subset_size(b, r)
    assert calls == [(keep, 3, 4)]  # residual computed on the subset only (static shape)
    x = np.asarray(x)
    changed = [i for i in range(b) if not np.array_equal(out[i], x[i])]
    assert len(changed) == keep
    for i in changed:  # kept samples get the residual scaled by B / subset
        np.testing.assert_allclose(out[i], x[i] + (b / keep) * (2 * x[i] + 1), rtol=1e-6, atol=1e-6)
    # the subset is a uniform random draw: different keys pick different samples
    other = np.asarray(drop_add_residual_subset(jnp.asarray(x), residual, r, jax.random.key(2)))
    assert {i for i in range(b) if not np.array_equal(other[i], x[i])} != set(changed)


def test_subset_is_unbiased_in_expectation():
    b, r = 8, 0.5
    x = jnp.ones((b, 1, 1))
    keys = jax.random.split(jax.random.key(0), 4000)
    outs = jax.vmap(lambda k: drop_add_residual_subset(x, lambda y: y, r, k))(keys)
    np.testing.assert_allclose(np.asarray(outs).mean(0), 2.0, atol=0.05)


def test_drop_path_per_sample():
    x = jnp.ones((2000, 3))
    y = np.asarray(drop_path(x, 0.25, jax.random.key(0)))
    kept = y[:, 0] != 0
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)  # whole rows kept and rescaled
    assert np.all(y[~kept] == 0)
    assert abs((y[:, 0] == 0).mean() - 0.25) < 0.05
    np.testing.assert_array_equal(np.asarray(drop_path(x, 0.0, jax.random.key(0))), np.asarray(x))


def test_grouped_subset_is_per_group():
    """groups=G: each group of B/G contiguous rows keeps max(int(B/G * (1 - r)), 1) of ITS OWN rows (the
    official per-GPU draw), scaled by (B/G) / kept; equal to running each group alone with its key."""
    from dinov2_jax.models.layers.drop_path import drop_add_residual_subset, subset_size

    G, bg, rate = 4, 6, 0.4
    x = jax.random.normal(jax.random.key(0), (G * bg, 3, 5))
    key = jax.random.key(7)
    got = drop_add_residual_subset(x, lambda y: 2.0 * y + 1.0, rate, key, groups=G)
    keys = jax.random.split(key, G)
    keep = subset_size(bg, rate)
    for g in range(G):
        rows = x[g * bg:(g + 1) * bg]
        idx = jax.random.permutation(keys[g], bg)[:keep]
        want = rows.at[idx].add((2.0 * rows[idx] + 1.0) * (bg / keep))
        np.testing.assert_allclose(got[g * bg:(g + 1) * bg], want, rtol=1e-6)
        changed = np.any(np.asarray(got[g * bg:(g + 1) * bg] != rows), axis=(1, 2))
        assert changed.sum() == keep == 3
    with pytest.raises(ValueError, match="equal groups"):
        drop_add_residual_subset(x, lambda y: y, rate, key, groups=5)
