"""Retrieval of pool images near seed images (`dinov2_jax/curate/retrieve.py`)."""
import numpy as np

from curate_synthetic import skewed_clusters, unit
from dinov2_jax.curate.retrieve import retrieve_by_cluster, retrieve_knn


def test_knn_retrieval_returns_the_planted_neighbours():
    rng = np.random.default_rng(0)
    pool = unit(rng.normal(size=(2000, 32)))
    seeds = unit(rng.normal(size=(20, 32)))
    # plant 4 neighbours of every seed (cosine ~0.95); everything else is random (cosine < ~0.7)
    planted = rng.choice(2000, (20, 4), replace=False)
    for s in range(20):
        pool[planted[s]] = unit(seeds[s] + 0.06 * rng.normal(size=(4, 32)))
    rows, sims, ids = retrieve_knn(seeds, pool, 4, db_block=512)
    np.testing.assert_array_equal(np.sort(ids, axis=1), np.sort(planted, axis=1))
    np.testing.assert_array_equal(rows, np.sort(planted.ravel()))
    # the union is deduplicated and the similarity floor applies
    rows2, _, _ = retrieve_knn(np.concatenate([seeds, seeds[:3]]), pool, 6, min_similarity=0.8)
    np.testing.assert_array_equal(rows2, np.sort(planted.ravel()))


def test_cluster_retrieval_samples_the_seeds_clusters():
    x, lab = skewed_clusters([300, 300, 300, 300], dim=16, spread=0.1, seed=1)
    # the pool's clustering: its planted clusters (k-means itself is tested in test_kmeans.py)
    centroids = np.stack([x[lab == c].mean(0) for c in range(4)])
    # two seeds near planted cluster 2, one near cluster 0
    rng = np.random.default_rng(5)
    centre = lambda c: unit(x[lab == c].mean(0, keepdims=True))  # noqa: E731
    seeds = unit(np.concatenate([centre(2), centre(2), centre(0)]) + 0.01 * rng.normal(size=(3, 16)))
    rows, hit = retrieve_by_cluster(seeds, centroids, lab, 50, seed=0)
    assert len(hit) == 2 and len(rows) == 100
    assert set(np.unique(lab[rows]).tolist()) == {0, 2}
    assert np.all(np.bincount(lab[rows], minlength=4)[[0, 2]] == 50)
    rows_all, _ = retrieve_by_cluster(seeds, centroids, lab, 1000, seed=0)  # smaller clusters: all of them
    np.testing.assert_array_equal(rows_all, np.flatnonzero(np.isin(lab, [0, 2])))
