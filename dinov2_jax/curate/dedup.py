"""Near-duplicate removal on unit embeddings: within the pool and against a protected set.

Pool-internal (`dedup_pool`): each image's k nearest pool neighbours (exact, `curate.search.knn`) give
the edges whose cosine similarity is >= `threshold`; the connected components of that graph are
groups of copies of each other (transitively), and one image per component is kept (the lowest row,
so the result is deterministic). An image can have more than k near-duplicates; the k-th neighbour
being still above the threshold is counted (`saturated`) so the report can say when k was too small
(the component is still connected through the others' lists unless a whole group is larger than k).

Protected set (`near_protected`): every pool image whose nearest protected image (e.g. an evaluation
image) has similarity >= `threshold` is removed, so the curated set cannot contain copies of the
test images.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dinov2_jax.curate.search import knn


def components(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Connected-component label [n] of the undirected graph with edges (src[i], dst[i])."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(src), np.int8), (np.asarray(src), np.asarray(dst))), shape=(n, n))
    return connected_components(g, directed=False)[1]


def keep_one_per_component(labels: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """Sorted rows that are the first (lowest) row of their component, among `candidates` (default all)."""
    rows = np.arange(len(labels)) if candidates is None else np.sort(np.asarray(candidates))
    _, first = np.unique(labels[rows], return_index=True)
    return np.sort(rows[first])


@dataclasses.dataclass
class DedupResult:
    keep: np.ndarray  # sorted pool rows kept
    component: np.ndarray  # [N] component label of every pool row (after protected removal: among survivors)
    edges: int  # near-duplicate pairs found (directed, self excluded)
    saturated: int  # rows whose k-th neighbour was still above the threshold (k may be too small)


def duplicate_edges(sims: np.ndarray, ids: np.ndarray, threshold: float, rows: np.ndarray | None = None):
    """(src, dst) of the neighbour lists sims / ids [Q, k] with similarity >= threshold, self excluded.
    `rows` [Q]: the pool row of each query (default 0..Q-1)."""
    q = np.arange(len(ids)) if rows is None else np.asarray(rows)
    mask = (sims >= threshold) & (ids != q[:, None]) & (ids >= 0)
    src = np.broadcast_to(q[:, None], ids.shape)[mask]
    return src, ids[mask]


def dedup_pool(x: np.ndarray, threshold: float, *, k: int = 64, drop: np.ndarray | None = None,
               neighbours=None, **search_kw) -> DedupResult:
    """Pool rows to keep after removing near-duplicates (cosine >= threshold) of x [N, D] (unit rows).
    `drop`: rows removed beforehand (e.g. near a protected set): they neither stay nor link others.
    `neighbours`: precomputed (sims, ids) [N, k'] of the pool against itself (else searched here)."""
    n = len(x)
    k = min(k, n)
    sims, ids = neighbours if neighbours is not None else knn(x, x, k, **search_kw)
    src, dst = duplicate_edges(sims, ids, threshold)
    alive = np.ones(n, bool)
    if drop is not None:
        alive[np.asarray(drop, np.int64)] = False
        ok = alive[src] & alive[dst]
        src, dst = src[ok], dst[ok]
    labels = components(n, src, dst)
    keep = keep_one_per_component(labels, np.flatnonzero(alive))
    saturated = int(np.sum(sims[:, -1] >= threshold)) if sims.shape[1] else 0
    return DedupResult(keep, labels, len(src), saturated)


def near_protected(x: np.ndarray, protected: np.ndarray, threshold: float, **search_kw):
    """Pool rows whose nearest protected row has cosine >= threshold -> (rows sorted, their similarity,
    the protected row each is closest to)."""
    sims, ids = knn(x, protected, 1, **search_kw)
    hit = np.flatnonzero(sims[:, 0] >= threshold)
    return hit, sims[hit, 0], ids[hit, 0]
