"""Logistic-regression evaluation, JAX L-BFGS (this port) vs scikit-learn LogisticRegression(lbfgs).

  python benchmarks/log_regression.py [--n-train 2000] [--n-val 2000] [--dim 384] [--classes 20]
      [--n-cs 45] [--max-iter 1000]

Both sides run the same official protocol (dinov2/eval/log_regression.py) on the same features:
10 % of train held out (torch.manual_seed(0) randperm), C chosen among the first `--n-cs` values of
10 ** linspace(-6, 5, 45) by held-out top-1, refit on all of train with the best C, top-1 on val;
max_iter 1000, tol 1e-12 (official). Both fit in float64 from zero for every C (as cuML in the official
code; JAX with `--dtype float32` for the accelerator-friendly variant). Features: a synthetic Gaussian
mixture of `--classes` classes in `--dim` dimensions (ViT-S/14 width; the solver's cost depends on the
sizes and conditioning only) with anisotropic noise. Prints wall and CPU times (JAX includes compilation; CPU time is the fairer number on a shared machine),
both accuracies and the chosen C.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def features(n, k, d, seed):
    """Gaussian classes with anisotropic noise (std from 3 down to 0.1 over the dimensions): weighting
    the directions matters, so the best C is inside the grid, not at its regularised end."""
    gen = np.random.default_rng(1234)
    centers = gen.normal(size=(k, d)) * 0.1
    scales = np.geomspace(3.0, 0.1, d)[gen.permutation(d)]
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return (centers[y] + scales * rng.normal(size=(n, d))).astype(np.float32), y


def sklearn_protocol(xtr, ytr, xva, yva, Cs, max_iter):
    from sklearn.linear_model import LogisticRegression

    from dinov2_jax.eval.log_regression import split_train

    def fit(x, y, C):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LogisticRegression(C=C, max_iter=max_iter, tol=1e-12).fit(x.astype(np.float64), y)

    kept, held = split_train(len(ytr))
    best_C, best = None, -1.0
    for C in Cs:
        acc = np.mean(fit(xtr[kept], ytr[kept], C).predict(xtr[held]) == ytr[held])
        if acc > best:
            best_C, best = C, acc
    final = fit(xtr, ytr, best_C)  # refit on kept + held-out
    return 100 * np.mean(final.predict(xva) == yva), best_C


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--n-cs", type=int, default=45)
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"], help="JAX solver precision")
    args = p.parse_args()
    import jax

    from dinov2_jax.eval import log_regression as lr

    xtr, ytr = features(args.n_train, args.classes, args.dim, 0)
    xva, yva = features(args.n_val, args.classes, args.dim, 1)
    Cs = list(lr.DEFAULT_CS[: args.n_cs])
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} "
          f"({jax.default_backend()}); train {xtr.shape}, val {xva.shape}, {args.classes} classes, {len(Cs)} C values")
    t, c = time.time(), time.process_time()
    res = lr.log_regression(xtr, ytr, xva, yva, Cs=Cs, max_iter=args.max_iter, verbose=False, dtype=args.dtype)
    t_jax, c_jax = time.time() - t, time.process_time() - c
    print(f"JAX {args.dtype}: top-1 {res['top-1']:.2f} %  best C {res['best_C']:.4g}  wall {t_jax:.1f} s  CPU {c_jax:.1f} s",
          flush=True)
    t, c = time.time(), time.process_time()
    top1, best_C = sklearn_protocol(xtr, ytr, xva, yva, sorted(Cs), args.max_iter)
    t_sk, c_sk = time.time() - t, time.process_time() - c
    print(f"sklearn : top-1 {top1:.2f} %  best C {best_C:.4g}  wall {t_sk:.1f} s  CPU {c_sk:.1f} s")
    print(f"top-1 difference {res['top-1'] - top1:+.2f} points; speed-up x{t_sk / t_jax:.1f} (wall), "
          f"x{c_sk / c_jax:.1f} (CPU time)")


if __name__ == "__main__":
    main()
