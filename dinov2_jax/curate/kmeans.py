"""k-means on the device mesh, hierarchical k-means with resampling, and balanced sampling.

Flat k-means (`kmeans`): squared-L2 Lloyd iterations. The points are split by rows over every device
of the mesh; each iteration one compiled program assigns the device's points block by block to their
nearest centroid and sums them per cluster (`segment_sum`), then the sums, counts and objective are
added over the mesh (`psum`). The new centroids (k x D, small) are computed on the host, where empty
clusters are handled: an empty cluster takes over half of the currently largest cluster (its centroid
is copied and the two copies are pushed apart by a tiny random offset), as faiss does.
Initialisation: k random distinct points ("random", faiss' default) or k-means++ (each next centroid
is drawn with probability proportional to the squared distance to the nearest centroid so far; the
draw is a Gumbel-max over the whole mesh, so it is one parallel pass per centroid).

Hierarchical k-means (`hierarchical_kmeans`, after Vo et al. 2024, "Automatic data curation for
self-supervised learning: a clustering-based approach"): level 1 clusters the points, level t + 1
clusters the centroids of level t, so every level has fewer, coarser clusters. Plain k-means puts many
centroids into dense regions (what is frequent in a web pool) and few into the long tail; running it
again on the centroids evens that out level by level. Optionally each level is refined by
resampling: several times, the `resample_size` points closest to each centroid are taken, k-means is
re-run on that subset (warm started), and every point is re-assigned. Taking as many points from each
cluster weighs every cluster alike, so the centroids spread out further. (This is our reading of the
method; the resampling size and counts are knobs, see docs/curation.md.)

Balanced sampling (`balanced_sample`): to pick n points, split n as evenly as possible over the
top-level clusters (a cluster smaller than its share gives everything it has, the rest is re-split
over the others), then recursively split each cluster's share over its child clusters, down to the
points of the finest clusters, which are drawn at random. Frequent concepts are thereby capped and
rare ones kept whole.
"""
from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from dinov2_jax.curate.search import default_mesh, put_rows, to_host

logger = logging.getLogger(__name__)

INITS = ("kmeans++", "random")


@dataclasses.dataclass
class Points:
    """Points on the mesh: `x` [S * per, D] float32 split by rows; `size` real rows (the rest padding)."""
    x: jax.Array
    size: int
    per: int
    block: int
    mesh: Mesh


def put_points(x: np.ndarray, mesh: Mesh | None = None, block: int = 4096) -> Points:
    """[N, D] (numpy / memmap) -> Points split over the mesh (padding rows are ignored everywhere)."""
    mesh = default_mesh(mesh)
    n = int(x.shape[0])
    if x.ndim != 2 or n == 0:
        raise ValueError(f"k-means needs points [N, D] with N > 0, got shape {x.shape}")
    per = -(-n // mesh.size)
    block = max(1, min(block, per))
    per = -(-per // block) * block
    return Points(put_rows(x, mesh, per * mesh.size, dtype=np.float32), n, per, block, mesh)


def _sq_dists(x, c, c2):
    """Squared L2 [B, k] from x [B, D] to centroids c [k, D] (c2 = |c|^2 [k])."""
    x2 = jnp.sum(x * x, axis=1, keepdims=True)
    dots = jnp.matmul(x, c.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(x2 - 2.0 * dots + c2[None, :], 0.0)


@functools.lru_cache(maxsize=32)
def _assign_fn(mesh: Mesh, per: int, block: int, size: int, k: int):
    """Compiled `(points, centroids [k, D]) -> (sums [k, D], counts [k], objective, assign [S*per],
    dist [S*per])`: one Lloyd assignment pass; sums / counts / objective added over the mesh."""
    axes = tuple(mesh.axis_names)

    def local(x, c):
        shard = jax.lax.axis_index(axes)
        c2 = jnp.sum(c * c, axis=1)
        blocks = x.reshape(per // block, block, x.shape[-1])

        def step(carry, xs):
            sums, counts, obj = carry
            b, rows = xs
            valid = shard * per + b * block + jnp.arange(block) < size
            d = _sq_dists(rows, c, c2)
            a = jnp.argmin(d, axis=1).astype(jnp.int32)
            dmin = jnp.where(valid, jnp.min(d, axis=1), 0.0)
            w = valid.astype(jnp.float32)
            sums = sums + jax.ops.segment_sum(rows * w[:, None], a, num_segments=k)
            counts = counts + jax.ops.segment_sum(w, a, num_segments=k)
            return (sums, counts, obj + jnp.sum(dmin)), (jnp.where(valid, a, -1), dmin)

        init = (jnp.zeros((k, x.shape[-1]), jnp.float32), jnp.zeros((k,), jnp.float32), jnp.zeros((), jnp.float32))
        (sums, counts, obj), (a, dmin) = jax.lax.scan(step, init, (jnp.arange(per // block), blocks))
        sums, counts, obj = jax.lax.psum((sums, counts, obj), axes)
        return sums, counts, obj, a.reshape(-1), dmin.reshape(-1)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P()),
                       out_specs=(P(), P(), P(), P(axes), P(axes)), check_vma=False)
    return jax.jit(fn)


def assign(points: Points, centroids: np.ndarray):
    """Nearest centroid of every point -> (assign [N] int64, squared distance [N] float32, sums [k, D],
    counts [k], objective = sum of squared distances)."""
    c = np.asarray(centroids, np.float32)
    fn = _assign_fn(points.mesh, points.per, points.block, points.size, c.shape[0])
    cj = put_rows(c, points.mesh, c.shape[0], replicate=True)
    sums, counts, obj, a, d = fn(points.x, cj)
    a = np.asarray(jax.device_get(a) if a.is_fully_addressable else _gather(a))[: points.size]
    d = np.asarray(jax.device_get(d) if d.is_fully_addressable else _gather(d))[: points.size]
    return a.astype(np.int64), d, to_host(sums), to_host(counts), float(to_host(obj))


def _gather(x: jax.Array) -> np.ndarray:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@functools.lru_cache(maxsize=32)
def _kmeanspp_fn(mesh: Mesh, per: int, size: int, k: int):
    """Compiled `(points, key, first [D]) -> centroids [k, D]`: k-means++ seeding over the mesh."""
    axes = tuple(mesh.axis_names)

    def local(x, key, first):
        shard = jax.lax.axis_index(axes)
        valid = shard * per + jnp.arange(per) < size
        cents = jnp.zeros((k, x.shape[-1]), jnp.float32).at[0].set(first)

        def body(j, carry):
            cents, mind = carry
            c = cents[j - 1]
            d = jnp.sum((x - c[None, :]) ** 2, axis=1)
            mind = jnp.minimum(mind, d)
            # noise keyed by the global row index, not by the shard: the same centroids on any mesh
            kj = jax.random.fold_in(key, j)
            g = jax.vmap(lambda i: jax.random.gumbel(jax.random.fold_in(kj, i)))(shard * per + jnp.arange(per))
            # P(i) ~ mind_i: argmax of log(mind) + Gumbel; points already on a centroid have log 0 = -inf
            score = jnp.where(valid, jnp.log(mind) + g, -jnp.inf)
            fallback = jnp.where(valid, g, -jnp.inf)  # every point already chosen (duplicates): uniform
            score = jnp.where(jax.lax.pmax(jnp.max(score), axes) == -jnp.inf, fallback, score)
            best = jnp.argmax(score)
            all_s = jax.lax.all_gather(score[best], axes)
            all_x = jax.lax.all_gather(x[best], axes)
            return cents.at[j].set(all_x[jnp.argmax(all_s)]), mind

        mind0 = jnp.full((per,), jnp.inf, jnp.float32)
        cents, _ = jax.lax.fori_loop(1, k, body, (cents, mind0))
        return cents

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P(), P()), out_specs=P(), check_vma=False)
    return jax.jit(fn)


def init_centroids(points: Points, x_host: np.ndarray, k: int, method: str, seed: int) -> np.ndarray:
    """k initial centroids [k, D]: "random" (k distinct points) or "kmeans++"."""
    if method not in INITS:
        raise ValueError(f"unknown k-means init {method!r}; use one of {INITS}")
    rng = np.random.default_rng(seed)
    if method == "random":
        return np.asarray(x_host[np.sort(rng.choice(points.size, k, replace=False))], np.float32)
    first = np.asarray(x_host[int(rng.integers(points.size))], np.float32)
    key = jax.random.key(seed)
    fn = _kmeanspp_fn(points.mesh, points.per, points.size, k)
    rep = lambda a: put_rows(a, points.mesh, a.shape[0], replicate=True)  # noqa: E731
    return to_host(fn(points.x, key, rep(first[None])[0]))


def fix_empty(sums: np.ndarray, counts: np.ndarray, old: np.ndarray, rng: np.random.Generator,
              eps: float = 1e-6):
    """New centroids from per-cluster sums [k, D] and counts [k]; each empty cluster takes half of the
    largest cluster: that centroid is copied and both copies moved apart by +-eps * a random unit-ish
    offset (relative to its norm). Returns (centroids [k, D], number of empty clusters split)."""
    counts = counts.astype(np.float64).copy()
    cents = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], old).astype(np.float32)
    empty = np.flatnonzero(counts == 0)
    for e in empty:
        big = int(np.argmax(counts))
        if counts[big] < 2:
            break  # nothing to split: fewer distinct points than clusters
        noise = rng.normal(size=cents.shape[1]).astype(np.float32)
        scale = eps * max(float(np.linalg.norm(cents[big])), 1.0) / np.sqrt(cents.shape[1])
        cents[e] = cents[big] + scale * noise
        cents[big] = cents[big] - scale * noise
        counts[e] = counts[big] / 2
        counts[big] -= counts[e]
    return cents, len(empty)


@dataclasses.dataclass
class KMeansResult:
    centroids: np.ndarray  # [k, D]
    assign: np.ndarray  # [N] cluster of every point
    dist: np.ndarray  # [N] squared distance to it
    objective: float  # sum of squared distances of the final assignment
    history: list  # objective of every iteration's assignment (before its update), as faiss' obj
    empty_splits: int  # empty clusters re-seeded over all iterations


def kmeans(x, k: int, *, iters: int = 20, init: str = "kmeans++", seed: int = 0, mesh: Mesh | None = None,
           block: int = 4096, init_centroids_: np.ndarray | None = None, points: Points | None = None,
           log_every: int = 0) -> KMeansResult:
    """Squared-L2 k-means of x [N, D] with `iters` Lloyd iterations (see the module doc).
    `init_centroids_` [k, D] skips the initialisation (warm start). Returns a KMeansResult whose
    assignment is w.r.t. the final centroids."""
    x_host = x
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k={k} must be in [1, number of points {x.shape[0]}]")
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters}")
    pts = points or put_points(x_host, mesh, block)
    rng = np.random.default_rng([seed, 1])
    cents = (np.asarray(init_centroids_, np.float32) if init_centroids_ is not None
             else init_centroids(pts, x_host, k, init, seed))
    if cents.shape != (k, x.shape[1]):
        raise ValueError(f"initial centroids {cents.shape} must be [{k}, {x.shape[1]}]")
    history, splits = [], 0
    for it in range(iters):
        _, _, sums, counts, obj = assign(pts, cents)
        history.append(obj)
        cents, n_empty = fix_empty(sums, counts, cents, rng)
        splits += n_empty
        if log_every and (it + 1) % log_every == 0:
            logger.info("k-means k=%d iteration %d/%d: objective %.6g, %d empty", k, it + 1, iters, obj, n_empty)
    a, d, _, _, obj = assign(pts, cents)
    return KMeansResult(cents, a, d, obj, history, splits)


def objective(x: np.ndarray, centroids: np.ndarray) -> float:
    """Sum over points of the squared distance to the nearest centroid (numpy, float64; for checks)."""
    x = np.asarray(x, np.float64)
    c = np.asarray(centroids, np.float64)
    d = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]
    return float(np.maximum(d.min(1), 0).sum())


# ---------------------------------------------------------------------------------------------------
# hierarchical k-means
@dataclasses.dataclass
class Hierarchy:
    """Levels of a hierarchical clustering. `assign[0]` [N]: finest cluster of every point;
    `assign[t]` [k_{t-1}]: parent (level t) cluster of every level-(t-1) cluster; `centroids[t]` [k_t, D]."""
    centroids: list
    assign: list

    @property
    def levels(self) -> int:
        return len(self.centroids)

    def point_clusters(self, level: int) -> np.ndarray:
        """Cluster of every point at `level` (0 = finest) [N]."""
        a = self.assign[0]
        for t in range(1, level + 1):
            a = self.assign[t][a]
        return a


def resampled_kmeans(x, k: int, *, iters: int, resample_steps: int, resample_size: int, init: str, seed: int,
                     mesh: Mesh | None, block: int) -> KMeansResult:
    """k-means of x, then `resample_steps` rounds of: take the `resample_size` points nearest to each
    centroid, k-means on them (warm start from the current centroids), re-assign all points."""
    pts = put_points(x, mesh, block)
    res = kmeans(x, k, iters=iters, init=init, seed=seed, points=pts)
    for step in range(resample_steps):
        subset = nearest_per_cluster(res.assign, res.dist, resample_size)
        sub = kmeans(np.asarray(x[np.sort(subset)]), k, iters=iters, seed=seed + 1 + step, mesh=pts.mesh,
                     block=block, init_centroids_=res.centroids)
        a, d, _, _, obj = assign(pts, sub.centroids)
        res = KMeansResult(sub.centroids, a, d, obj, res.history + sub.history, res.empty_splits + sub.empty_splits)
    return res


def nearest_per_cluster(assign_: np.ndarray, dist: np.ndarray, r: int) -> np.ndarray:
    """Indices of the (up to) r points of each cluster closest to its centroid."""
    order = np.lexsort((dist, assign_))  # by cluster, then by distance
    a = assign_[order]
    starts = np.r_[0, np.flatnonzero(np.diff(a)) + 1]
    rank = np.arange(len(a)) - np.repeat(starts, np.diff(np.r_[starts, len(a)]))
    return order[rank < r]


def hierarchical_kmeans(x, ks, *, iters: int = 20, resample_steps=0, resample_size=None, init: str = "kmeans++",
                        seed: int = 0, mesh: Mesh | None = None, block: int = 4096) -> Hierarchy:
    """Bottom-up hierarchical k-means: level 0 clusters x [N, D] into ks[0] clusters, level t clusters
    the level t-1 centroids into ks[t] (ks must decrease). `resample_steps` / `resample_size`: per level
    (a single value applies to every level; None size = no resampling)."""
    ks = [int(k) for k in ks]
    if not ks or any(b >= a for a, b in zip(ks, ks[1:])):
        raise ValueError(f"cluster counts per level must be given and decrease, got {ks}")
    steps = resample_steps if isinstance(resample_steps, (list, tuple)) else [resample_steps] * len(ks)
    sizes = resample_size if isinstance(resample_size, (list, tuple)) else [resample_size] * len(ks)
    if len(steps) != len(ks) or len(sizes) != len(ks):
        raise ValueError("resample_steps / resample_size need one value per level (or a single value)")
    cents, assigns, pts = [], [], x
    for t, k in enumerate(ks):
        m = int(steps[t]) if sizes[t] else 0
        res = resampled_kmeans(pts, k, iters=iters, resample_steps=m, resample_size=int(sizes[t] or 0),
                               init=init, seed=seed + 1000 * t, mesh=mesh, block=block)
        logger.info("hierarchical k-means level %d: %d -> %d clusters, objective %.6g", t, len(pts), k, res.objective)
        cents.append(res.centroids)
        assigns.append(res.assign)
        pts = res.centroids
    return Hierarchy(cents, assigns)


# ---------------------------------------------------------------------------------------------------
# balanced sampling
def split_evenly(sizes: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Share n over groups of the given sizes as evenly as possible without exceeding any size
    ("water filling"): every group gets min(size, t) for the largest level t that fits, and the few
    left over go one each to randomly chosen groups that still have room. Returns counts [G]."""
    sizes = np.asarray(sizes, np.int64)
    if n >= sizes.sum():
        return sizes.copy()
    lo, hi = 0, int(sizes.max())
    while lo < hi:  # largest t with sum(min(sizes, t)) <= n
        mid = (lo + hi + 1) // 2
        if np.minimum(sizes, mid).sum() <= n:
            lo = mid
        else:
            hi = mid - 1
    out = np.minimum(sizes, lo)
    rest = n - int(out.sum())
    room = np.flatnonzero(sizes > out)
    out[rng.choice(room, rest, replace=False)] += 1
    return out


def balanced_sample(h: Hierarchy, n: int, seed: int = 0) -> np.ndarray:
    """n point indices drawn top-down through the hierarchy (see the module doc); sorted."""
    if n < 1:
        raise ValueError(f"sample size must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    top = h.levels - 1
    # members[t][c]: the level t-1 clusters (or points, t = 0) inside cluster c of level t
    members = []
    for t in range(h.levels):
        a = h.assign[t]
        order = np.argsort(a, kind="stable")
        bounds = np.searchsorted(a[order], np.arange(len(h.centroids[t]) + 1))
        members.append([order[bounds[c]:bounds[c + 1]] for c in range(len(h.centroids[t]))])
    # number of points under every cluster of every level
    counts = [np.bincount(h.assign[0], minlength=len(h.centroids[0]))]
    for t in range(1, h.levels):
        counts.append(np.bincount(h.assign[t], weights=counts[t - 1], minlength=len(h.centroids[t])).astype(np.int64))
    picked = []

    def visit(t, clusters, budget):
        shares = split_evenly(counts[t][clusters], budget, rng)
        for c, m in zip(clusters, shares):
            if m == 0:
                continue
            if t == 0:
                picked.append(rng.choice(members[0][c], int(m), replace=False))
            else:
                visit(t - 1, members[t][c], int(m))

    visit(top, np.arange(len(h.centroids[top])), int(n))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
