"""Near-duplicate removal (`dinov2_jax/curate/dedup.py`) on planted augmented copies."""
import numpy as np

from curate_synthetic import skewed_clusters, unit, with_near_duplicates
from dinov2_jax.curate.dedup import components, dedup_pool, keep_one_per_component, near_protected


def removal_scores(keep, group):
    """(precision, recall) of the removed rows: a planted group of m rows should lose exactly m - 1
    (any m - 1), every row without a copy should stay."""
    removed = np.setdiff1d(np.arange(len(group)), keep)
    should = sum(int(np.sum(group == g)) - 1 for g in np.unique(group[group >= 0]))
    correct = 0
    for g in np.unique(group[group >= 0]):
        members = np.flatnonzero(group == g)
        correct += min(int(np.isin(members, removed).sum()), len(members) - 1)
    return correct / max(len(removed), 1), correct / should


def test_planted_copies_found_with_precision_and_recall_above_095():
    # hard negatives: clusters whose members are close (cosine up to ~0.75) but are not copies
    base, _ = skewed_clusters([400, 200, 100, 50, 25, 25], dim=32, spread=0.35, seed=0)
    x, group = with_near_duplicates(base, 150, max_copies=3, noise=0.08, seed=1)
    res = dedup_pool(x, 0.85, k=16, db_block=256)
    precision, recall = removal_scores(res.keep, group)
    # pairs view: rows sharing a component vs rows sharing a planted group
    same_pred = res.component[:, None] == res.component[None, :]
    same_true = (group[:, None] == group[None, :]) & (group[:, None] >= 0)
    off = ~np.eye(len(x), dtype=bool)
    pair_p = (same_pred & same_true & off).sum() / max((same_pred & off).sum(), 1)
    pair_r = (same_pred & same_true & off).sum() / (same_true & off).sum()
    print(f"removal precision {precision:.3f} recall {recall:.3f}; pair precision {pair_p:.3f} recall {pair_r:.3f}")
    assert precision >= 0.95 and recall >= 0.95
    assert pair_p >= 0.95 and pair_r >= 0.95
    assert res.saturated == 0


def test_components_and_keep_lowest_row():
    lab = components(6, np.array([0, 1, 4]), np.array([1, 2, 5]))
    assert lab[0] == lab[1] == lab[2] and lab[4] == lab[5] and len(set(lab.tolist())) == 3
    np.testing.assert_array_equal(keep_one_per_component(lab), [0, 3, 4])
    np.testing.assert_array_equal(keep_one_per_component(lab, [1, 2, 5, 3]), [1, 3, 5])


def test_protected_copies_are_removed_and_do_not_link_others():
    rng = np.random.default_rng(2)
    pool = unit(rng.normal(size=(300, 32)))
    protected = unit(pool[[5, 17, 200]] + 0.05 * rng.normal(size=(3, 32)))
    rows, sims, which = near_protected(pool, protected, 0.9)
    np.testing.assert_array_equal(rows, [5, 17, 200])
    np.testing.assert_array_equal(which, [0, 1, 2])
    assert np.all(sims >= 0.9)
    # row 5 has a pool copy (row 300): 5 is dropped for the protected set, its copy is a copy of an
    # eval image too but only reachable through 5 -> it stays unless near the protected set itself
    x = np.concatenate([pool, unit(pool[[5]] + 0.01 * rng.normal(size=(1, 32)))])
    drop, _, _ = near_protected(x, protected, 0.9)
    assert set(drop.tolist()) == {5, 17, 200, 300}  # the copy is close to the eval image as well
    res = dedup_pool(x, 0.9, k=8, drop=drop)
    assert not set(res.keep.tolist()) & {5, 17, 200, 300} and len(res.keep) == 297
