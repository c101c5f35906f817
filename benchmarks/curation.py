"""Curation kernels, JAX (this port, `dinov2_jax/curate/`) vs faiss-cpu on the same vectors.

  python benchmarks/curation.py [--n 20000] [--dim 384] [--queries 2000] [--k 10]
      [--km-n 20000] [--km-dim 128] [--km-k 100] [--km-iters 10] [--repeats 3]

1. Exact k-NN by inner product: `curate.search.knn` (blocked matmul + running top-k on the JAX default
   devices) vs `faiss.IndexFlatIP` on the same float32 unit vectors (float16-rounded, as the store keeps
   them). Reports the best of `--repeats` timed runs after one warm-up (JAX compiles in the warm-up),
   and whether the neighbour ids are identical.
2. k-means: `curate.kmeans.kmeans` vs `faiss.Kmeans` with the same k and iterations, each with its own
   initialisation (JAX: k-means++ and random; faiss: its random init; faiss' subsampling switched off),
   `--seeds` runs each (mean objective, spread over seeds, median time), then both from the same initial
   centroids. Objective = sum of squared distances of every point to its nearest final centroid,
   computed the same way for both. Timings include the initialisation; JAX's exclude compilation.
3. Balanced sampling on planted skewed clusters: how flat the planted-concept counts of a balanced sample
   are, vs a uniform random sample of the same size (normalised entropy 1 = flat, max / mean count).
Prints a RESULT {json} line per measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def best_time(fn, repeats):
    out, times = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times)


def result(**kw):
    print("RESULT " + json.dumps(kw), flush=True)


def bench_knn(args, faiss):
    from dinov2_jax.curate.search import knn, put_database

    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(args.n, args.dim))).astype(np.float16).astype(np.float32)
    q = x[rng.choice(args.n, args.queries, replace=False)] + 0.0
    db = put_database(x, db_block=args.db_block)
    t = time.perf_counter()
    knn(q, db, args.k, query_block=args.query_block)  # warm-up: compilation
    compile_s = time.perf_counter() - t
    (s_j, i_j), t_j = best_time(lambda: knn(q, db, args.k, query_block=args.query_block), args.repeats)
    index = faiss.IndexFlatIP(args.dim)
    index.add(x)
    (s_f, i_f), t_f = best_time(lambda: index.search(q, args.k), args.repeats)
    result(bench="knn", n=args.n, dim=args.dim, queries=args.queries, k=args.k, jax_s=round(t_j, 3),
           jax_first_call_s=round(compile_s, 3), faiss_s=round(t_f, 3), ids_identical=bool(np.array_equal(i_j, i_f)),
           max_sim_diff=float(np.abs(s_j - s_f).max()), queries_per_s_jax=round(args.queries / t_j, 1),
           queries_per_s_faiss=round(args.queries / t_f, 1))


def bench_kmeans(args, faiss):
    from dinov2_jax.curate.kmeans import kmeans, objective

    rng = np.random.default_rng(1)
    # a mixture (clusters of different sizes and spreads), as embeddings are: not uniform noise
    centres = rng.normal(size=(args.km_k * 2, args.km_dim)).astype(np.float32)
    lab = rng.choice(len(centres), args.km_n, p=rng.dirichlet(np.ones(len(centres))))
    x = centres[lab] + rng.uniform(0.3, 1.5, len(centres))[lab, None] * rng.normal(size=(args.km_n, args.km_dim))
    x = x.astype(np.float32)

    def faiss_run(init=None, seed=1):
        km = faiss.Kmeans(args.km_dim, args.km_k, niter=args.km_iters, seed=seed, max_points_per_centroid=10**9)
        km.train(x, init_centroids=None if init is None else init.copy())
        return km.centroids

    kmeans(x, args.km_k, iters=1, init="random")  # warm-up: compilation
    row = {"bench": "kmeans", "n": args.km_n, "dim": args.km_dim, "k": args.km_k, "iters": args.km_iters,
           "seeds": args.seeds}
    runs = {"jax_kmeans++": lambda s: kmeans(x, args.km_k, iters=args.km_iters, init="kmeans++", seed=s).centroids,
            "jax_random": lambda s: kmeans(x, args.km_k, iters=args.km_iters, init="random", seed=s).centroids,
            "faiss": lambda s: faiss_run(seed=s + 1)}
    kmeans(x, args.km_k, iters=0, init="kmeans++")  # compile the k-means++ init too
    for name, run in runs.items():  # own initialisation, several seeds: mean objective and its spread
        objs, times = [], []
        for s in range(args.seeds):
            t = time.perf_counter()
            cents = run(s)
            times.append(time.perf_counter() - t)
            objs.append(objective(x, cents))
        row[f"{name}_s"] = round(float(np.median(times)), 3)
        row[f"{name}_objective_mean"] = float(np.mean(objs))
        row[f"{name}_objective_spread_pct"] = round(100 * (max(objs) - min(objs)) / np.mean(objs), 3)
    for name in ("jax_kmeans++", "jax_random"):
        row[f"{name}_vs_faiss_pct"] = round(100 * (row[f"{name}_objective_mean"] / row["faiss_objective_mean"] - 1), 3)
    init = x[np.random.default_rng(2).choice(args.km_n, args.km_k, replace=False)]
    jo = objective(x, kmeans(x, args.km_k, iters=args.km_iters, init_centroids_=init).centroids)
    fo = objective(x, faiss_run(init))
    row["same_init_jax_vs_faiss_pct"] = round(100 * (jo / fo - 1), 4)
    result(**row)


def bench_balance(args):
    from dinov2_jax.curate.kmeans import balanced_sample, hierarchical_kmeans
    from dinov2_jax.curate.report import flatness

    rng = np.random.default_rng(0)
    sizes = [1600, 800, 400, 200, 100, 50, 25, 25]
    centres = unit(rng.normal(size=(len(sizes), 32)))
    lab = np.repeat(np.arange(len(sizes)), sizes)
    x = unit(centres[lab] + 0.1 * rng.normal(size=(len(lab), 32)))
    uniform = np.random.default_rng(0).choice(len(x), 400, replace=False)
    rows = {"uniform random": uniform}
    for name, ks, steps, size in (("2 levels [32, 8]", [32, 8], 0, None),
                                  ("2 levels [32, 8], 3 resampling steps of 10 / cluster", [32, 8], 3, 10),
                                  ("3 levels [64, 16, 8]", [64, 16, 8], 0, None)):
        h = hierarchical_kmeans(x, ks, iters=15, resample_steps=steps, resample_size=size, seed=0)
        rows[name] = balanced_sample(h, 400, seed=0)
    for name, picked in rows.items():
        counts = np.bincount(lab[picked], minlength=len(sizes))
        result(bench="balanced_sampling", sample=name, planted_sizes=sizes, counts=counts.tolist(), **flatness(counts))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--query-block", type=int, default=1024)
    p.add_argument("--db-block", type=int, default=4096)
    p.add_argument("--km-n", type=int, default=20000)
    p.add_argument("--km-dim", type=int, default=128)
    p.add_argument("--km-k", type=int, default=100)
    p.add_argument("--km-iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3, help="k-means runs per method (own initialisations)")
    p.add_argument("--skip", nargs="*", default=[], choices=["knn", "kmeans", "balance"])
    args = p.parse_args()
    import faiss
    import jax

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
          f"({jax.default_backend()}, {jax.device_count()} devices), faiss {faiss.__version__} "
          f"({faiss.omp_get_max_threads()} threads)", flush=True)
    if "knn" not in args.skip:
        bench_knn(args, faiss)
    if "kmeans" not in args.skip:
        bench_kmeans(args, faiss)
    if "balance" not in args.skip:
        bench_balance(args)


if __name__ == "__main__":
    main()
