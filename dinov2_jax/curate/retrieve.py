"""Retrieval of pool images close to curated seed images (DINOv2's LVD-142M construction).

- `retrieve_knn` (large seed sets): the k nearest pool images of every seed embedding (exact search),
  optionally only those with cosine >= `min_similarity`; the union of all lists, each image once.
- `retrieve_by_cluster` (small seed sets, where k neighbours per seed would give too few images): the
  pool is clustered by k-means; each seed falls in the cluster of its nearest centroid and `per_cluster`
  pool images are drawn at random from each such cluster (all of it when smaller); the union.
"""
from __future__ import annotations

import numpy as np

from dinov2_jax.curate.search import knn


def retrieve_knn(seeds: np.ndarray, pool: np.ndarray, k: int, *, min_similarity: float | None = None,
                 **search_kw):
    """-> (sorted unique pool rows, sims [S, k], ids [S, k]) for unit seeds [S, D] and pool [N, D]."""
    sims, ids = knn(seeds, pool, min(k, len(pool)), **search_kw)
    ok = np.ones(ids.shape, bool) if min_similarity is None else sims >= min_similarity
    return np.unique(ids[ok]), sims, ids


def retrieve_by_cluster(seeds: np.ndarray, centroids: np.ndarray, pool_assign: np.ndarray, per_cluster: int,
                        *, seed: int = 0, **search_kw):
    """-> (sorted unique pool rows, the clusters hit [C] sorted). centroids [K, D] of the pool's
    k-means, pool_assign [N] the cluster of every pool row. Seeds are matched to the nearest centroid by
    squared L2 (the k-means criterion): the inner product with centroids shifted by -|c|^2 / 2."""
    if per_cluster < 1:
        raise ValueError(f"per_cluster must be >= 1, got {per_cluster}")
    c = np.asarray(centroids, np.float32)
    # argmin |s - c|^2 = argmax (s.c - |c|^2 / 2): append the bias as one more coordinate
    cb = np.concatenate([c, -0.5 * (c * c).sum(1, keepdims=True)], axis=1)
    sb = np.concatenate([np.asarray(seeds, np.float32), np.ones((len(seeds), 1), np.float32)], axis=1)
    _, ids = knn(sb, cb, 1, **search_kw)
    hit = np.unique(ids[:, 0])
    rng = np.random.default_rng(seed)
    out = []
    for cl in hit:
        members = np.flatnonzero(pool_assign == cl)
        out.append(members if len(members) <= per_cluster else rng.choice(members, per_cluster, replace=False))
    return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64), hit
