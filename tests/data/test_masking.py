"""Block masking + collate: statistics, spec-definition reference, and a golden official comparison."""
import os
import random

import numpy as np
import pytest

from dinov2_jax.data.masking import MaskingGenerator, collate, mask_upperbound, _torch_linspace_f32

GOLDEN = os.path.join(os.path.dirname(__file__), "fixtures", "masking_golden.npz")


def _samples(B, S=2, s=1, n_local=2):
    return [{"global_crops": np.stack([np.full((S, S, 3), 10 * b + c, np.float32) for c in range(2)]),
             "local_crops": np.stack([np.full((s, s, 3), 100 + 10 * b + c, np.float32) for c in range(n_local)])}
            for b in range(B)]


def _rect_components(mask):
    """4-connected components of a bool grid -> list of cell lists."""
    seen = np.zeros_like(mask)
    comps = []
    for i, j in zip(*np.nonzero(mask)):
        if seen[i, j]:
            continue
        stack, comp = [(i, j)], []
        seen[i, j] = True
        while stack:
            a, b = stack.pop()
            comp.append((a, b))
            for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                x, y = a + da, b + db
                if 0 <= x < mask.shape[0] and 0 <= y < mask.shape[1] and mask[x, y] and not seen[x, y]:
                    seen[x, y] = True
                    stack.append((x, y))
        comps.append(comp)
    return comps


def test_generator_single_block_is_rectangle_with_bounded_aspect():
    gen = MaskingGenerator((14, 14), max_num_patches=98)
    rng = random.Random(0)
    for _ in range(200):
        target = rng.randint(4, 30)
        # one call of _add_block on an empty grid = one rectangle
        m = np.zeros((14, 14), bool)
        added = gen._add_block(m, target, rng)
        if added == 0:
            continue
        rows, cols = np.nonzero(m)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert m[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # solid rectangle
        assert added == h * w <= target and h < 14 and w < 14
        assert added >= 1


def test_generator_count_bounds_and_blocks():
    gen = MaskingGenerator((14, 14), max_num_patches=98)
    rng = random.Random(1)
    for target in [0, 5, 19, 40, 78, 98]:
        for _ in range(20):
            m = gen(target, rng)
            assert m.dtype == bool and m.shape == (14, 14)
            assert m.sum() <= target
            if target == 0:
                assert not m.any()
            # every connected component is a union of rectangles of >= 1 cells; with min area 4 most are >= 2
            for comp in _rect_components(m):
                assert len(comp) >= 1
    # generator reaches close to large targets on average (BEiT behaviour)
    fills = [gen(60, rng).sum() / 60 for _ in range(50)]
    assert np.mean(fills) > 0.8


def test_generator_requires_explicit_rng():
    with pytest.raises(ValueError, match="rng"):
        MaskingGenerator((4, 4))(3)


def test_torch_linspace_f32_matches_torch_golden():
    g = np.load(GOLDEN)
    for n in list(range(2, 200)) + [257, 513]:
        np.testing.assert_array_equal(_torch_linspace_f32(0.1, 0.5, n), g[f"linspace_{n}"])


def test_upperbound_values():
    # the official collate's upper bound (dinov2/data/collate.py) at B=64, N=196 is ~3771; at B=32, N=256 ~2496
    assert abs(mask_upperbound(64, 196) - 3771) <= 2
    assert abs(mask_upperbound(32, 256) - 2496) <= 2
    # definition (float64 reference; equal unless a product lands on an integer boundary)
    for B, N in [(4, 196), (3, 49), (16, 256)]:
        n = int(2 * B * 0.5)
        probs = np.linspace(0.1, 0.5, n + 1)
        ref = sum(int(N * probs[i + 1]) for i in range(n))
        assert abs(mask_upperbound(B, N) - ref) <= 1


def _reference_collate(samples, rng, gen, N):
    """The official `collate_data_and_cast` (dinov2/data/collate.py) written out independently (float32 ratio arithmetic as torch scalars)."""
    B = len(samples)
    G = np.concatenate([np.stack([s["global_crops"][c] for s in samples]) for c in range(2)])
    nL = samples[0]["local_crops"].shape[0]
    L = np.concatenate([np.stack([s["local_crops"][c] for s in samples]) for c in range(nL)])
    n_masked = int(2 * B * 0.5)
    probs = _torch_linspace_f32(0.1, 0.5, n_masked + 1)  # exact torch rounding (tested against torch)
    ms, ub = [], 0
    for i in range(n_masked):
        u = rng.random()
        ratio = np.float32(probs[i] + np.float32(probs[i + 1] - probs[i]) * np.float32(u))
        ms.append(gen(int(np.float32(N) * ratio), rng))
        ub += int(np.float32(N) * probs[i + 1])
    ms += [gen(0, rng) for _ in range(2 * B - n_masked)]
    rng.shuffle(ms)
    M = np.stack(ms).reshape(2 * B, N)
    idx = np.nonzero(M.reshape(-1))[0]
    w = np.array([1.0 / M[k // N].sum() for k in idx], np.float32)
    return G, L, M, idx, w, ub


@pytest.mark.parametrize("B,g", [(4, 14), (3, 7), (8, 16)])
def test_collate_matches_spec_reference_and_invariants(B, g):
    N = g * g
    gen = MaskingGenerator((g, g), max_num_patches=0.5 * N)
    samples = _samples(B)
    for seed in range(5):
        out = collate(samples, mask_generator=gen, rng=random.Random(seed))
        G, L, M, idx, w, ub = _reference_collate(samples, random.Random(seed), gen, N)
        assert out["n_masked_patches"].shape == (1,) and out["n_masked_patches"].dtype == np.int32
        assert out["mask_indices_list"].shape == (1, ub) and out["mask_indices_list"].dtype == np.int32
        assert out["masks_weight"].shape == (1, ub) and out["masks_weight"].dtype == np.float32
        out = dict(out, n_masked_patches=out["n_masked_patches"][0], mask_indices_list=out["mask_indices_list"][0],
                   masks_weight=out["masks_weight"][0])  # one group: the official single-GPU collate
        n = int(out["n_masked_patches"])
        assert ub == mask_upperbound(B, N) >= n
        np.testing.assert_array_equal(out["collated_global_crops"], G)
        np.testing.assert_array_equal(out["collated_local_crops"], L)
        np.testing.assert_array_equal(out["collated_masks"], M)
        np.testing.assert_array_equal(out["mask_indices_list"][:n], idx)
        np.testing.assert_array_equal(out["mask_indices_list"][n:], 0)
        np.testing.assert_allclose(out["masks_weight"][:n], w, rtol=1e-7)
        np.testing.assert_array_equal(out["masks_weight"][n:], 0)
        # invariants
        assert out["collated_global_crops"].shape == (2 * B, 2, 2, 3)
        assert (out["collated_global_crops"][B:, 0, 0, 0] == 10 * np.arange(B) + 1).all()  # crop-major
        per = M.sum(1)
        assert (per > 0).sum() == B  # exactly half of the 2B global crops are masked
        assert np.all(np.diff(out["mask_indices_list"][:n]) > 0)
        # weights sum to 1 per masked crop
        sums = np.bincount(idx // N, weights=out["masks_weight"][:n], minlength=2 * B)
        np.testing.assert_allclose(sums[per > 0], 1.0, rtol=1e-5)


def test_mask_ratio_stratification():
    """Sorted masked ratios of one batch fall in the stratified bins [probs[i], probs[i+1]] (<= upper)."""
    B, g = 8, 14
    N = g * g
    gen = MaskingGenerator((g, g), max_num_patches=0.5 * N)
    probs = np.linspace(0.1, 0.5, B + 1)
    for seed in range(10):
        out = collate(_samples(B), mask_generator=gen, rng=random.Random(seed))
        ratios = np.sort(out["collated_masks"].sum(1) / N)
        assert (ratios[:B] == 0).all()  # 2B crops, B unmasked
        masked = ratios[B:]
        assert (masked <= probs[1:] + 1e-9).all()  # generator never exceeds its target
        assert masked.max() >= 0.3 and masked.mean() > 0.2


def test_golden_official_collate():
    g = np.load(GOLDEN)
    keys = sorted({k.split("/")[0] for k in g.files if "/" in k})
    assert len(keys) == 6
    for key in keys:
        B, grid, n_local, seed = g[f"{key}/meta"]
        N = grid * grid
        gen = MaskingGenerator((int(grid), int(grid)), max_num_patches=0.5 * N)
        samples = [{"global_crops": np.stack([np.full((2, 2, 3), 10 * b + c, np.float32) for c in range(2)]),
                    "local_crops": np.stack([np.full((1, 1, 3), 100 + 10 * b + c, np.float32)
                                             for c in range(n_local)])} for b in range(B)]
        out = collate(samples, mask_generator=gen, rng=random.Random(int(seed)))
        out = dict(out, mask_indices_list=out["mask_indices_list"][0], masks_weight=out["masks_weight"][0])
        n = int(g[f"{key}/n_masked"][0])
        assert out["n_masked_patches"].tolist() == [n]
        assert out["mask_indices_list"].shape[0] == int(g[f"{key}/upperbound"]) == mask_upperbound(int(B), int(N))
        np.testing.assert_array_equal(out["collated_global_crops"], g[f"{key}/global"].transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(out["collated_local_crops"], g[f"{key}/local"].transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(out["collated_masks"], g[f"{key}/masks"])
        np.testing.assert_array_equal(out["mask_indices_list"][:n], g[f"{key}/indices"])
        np.testing.assert_array_equal(out["masks_weight"][:n], g[f"{key}/weights"])


def test_golden_official_generator_non_square():
    g = np.load(GOLDEN)
    gen = MaskingGenerator((6, 9), max_num_patches=20)
    for seed, target in [(3, 10), (4, 25), (7, 40)]:
        np.testing.assert_array_equal(gen(target, random.Random(seed)), g[f"gen_h6w9_s{seed}_t{target}"])


def test_collate_rejects_small_buffer():
    gen = MaskingGenerator((14, 14), max_num_patches=98)
    with pytest.raises(RuntimeError, match="mask_upperbound"):
        collate(_samples(4), mask_generator=gen, rng=random.Random(0), upperbound=3)


def test_groups_are_independent_per_device_collates():
    """groups=G: the batch is G official single-GPU collates one after the other (group-major), each with
    its own masks, buffer of mask_upperbound(B/G) rows and group-local indices; masks drawn in group order
    from the one rng."""
    B, G, g = 6, 3, 7
    N = g * g
    gen = MaskingGenerator((g, g), max_num_patches=0.5 * N)
    samples = _samples(B)
    out = collate(samples, mask_generator=gen, rng=random.Random(5), groups=G)
    ub = mask_upperbound(B // G, N)
    assert out["mask_indices_list"].shape == (G, ub) and out["n_masked_patches"].shape == (G,)
    rng = random.Random(5)
    b = B // G
    for k in range(G):
        ref = collate(samples[k * b:(k + 1) * b], mask_generator=gen, rng=rng)  # continues the same rng
        for key in ("collated_global_crops", "collated_masks"):
            np.testing.assert_array_equal(out[key][k * 2 * b:(k + 1) * 2 * b], ref[key], err_msg=key)
        np.testing.assert_array_equal(out["collated_local_crops"][k * 2 * b:(k + 1) * 2 * b],
                                      ref["collated_local_crops"])  # 2 local crops per image here
        for key in ("mask_indices_list", "masks_weight", "n_masked_patches"):
            np.testing.assert_array_equal(out[key][k], ref[key][0], err_msg=key)
        # exactly half of each group's crops are masked (official per-GPU stratification)
        assert (out["collated_masks"][k * 2 * b:(k + 1) * 2 * b].sum(1) > 0).sum() == b
    with pytest.raises(ValueError, match="equal groups"):
        collate(samples, mask_generator=gen, rng=random.Random(0), groups=4)
