"""Logistic regression (JAX L-BFGS) against scikit-learn's LogisticRegression(lbfgs)."""
import warnings

import numpy as np
import pytest

from dinov2_jax.eval import log_regression as lr


def blobs(n, k=6, d=24, noise=2.0, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(size=(k, d))
    y = rng.integers(0, k, n)
    return (centers[y] + noise * rng.normal(size=(n, d))).astype(np.float32), y


def objective(x, y, W, b, C):
    """scikit-learn's objective: sum of cross-entropies + ||W||^2 / (2C), in float64."""
    lg = x.astype(np.float64) @ W + b
    m = lg.max(1, keepdims=True)
    lse = np.log(np.exp(lg - m).sum(1)) + m[:, 0]
    return (lse - lg[np.arange(len(y)), y]).sum() + (W ** 2).sum() / (2 * C)


def sklearn_fit(x, y, C):
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at the official tol=1e-12
        return LogisticRegression(C=C, max_iter=1000, tol=1e-12).fit(x.astype(np.float64), y)


@pytest.mark.parametrize("C", [1e-2, 1.0, 100.0])
def test_fit_matches_sklearn_optimum(C):
    x, y = blobs(300)
    sk = sklearn_fit(x, y, C)
    f_sk = objective(x, y, sk.coef_.T, sk.intercept_, C)
    m64, _ = lr.fit_logreg(x, y, 6, C, dtype="float64")
    assert objective(x, y, m64.W, m64.b, C) == pytest.approx(f_sk, rel=1e-7)  # both stop within ~1e-9
    # weakly regularised (C = 100): flat directions, both solvers stop ~1e-3 apart in W at equal objective
    np.testing.assert_allclose(m64.W, sk.coef_.T, atol=2e-3 * max(1.0, np.abs(sk.coef_).max()))
    m32, it = lr.fit_logreg(x, y, 6, C, dtype="float32")  # same optimum to float32 precision
    assert m32.W.dtype == np.float32 and 1 < it <= 1000
    assert objective(x, y, m32.W.astype(np.float64), m32.b, C) == pytest.approx(f_sk, rel=1e-4)
    pred_sk = sk.predict(x)
    assert np.mean(np.argmax(x @ m32.W + m32.b, 1) == pred_sk) >= 0.99


def test_official_split_and_sweep_match_sklearn_protocol():
    xtr, ytr = blobs(400, seed=1)
    xva, yva = blobs(1000, seed=2)
    Cs = [1e-4, 1e-2, 1.0, 100.0]
    res = lr.log_regression(xtr, ytr, xva, yva, Cs=Cs, verbose=False)
    # the same protocol with scikit-learn: official 10 % hold-out (torch.manual_seed(0) randperm), first best C
    kept, held = lr.split_train(400)
    assert len(held) == 40 and sorted(np.concatenate([kept, held]).tolist()) == list(range(400))
    sweep = {C: 100 * np.mean(sklearn_fit(xtr[kept], ytr[kept], C).predict(xtr[held]) == ytr[held]) for C in Cs}
    best_C = max(Cs, key=lambda C: (sweep[C], -Cs.index(C)))
    for C in Cs:
        assert res["sweep"][C] == pytest.approx(sweep[C], abs=2.6)  # 40 held-out images: one image = 2.5 points
    final = sklearn_fit(np.concatenate([xtr[kept], xtr[held]]), np.concatenate([ytr[kept], ytr[held]]), best_C)
    top1_sk = 100 * np.mean(final.predict(xva) == yva)
    assert res["best_C"] == best_C
    assert abs(res["top-1"] - top1_sk) <= 0.3
    assert 30 < res["top-1"] and res["top-5"] >= res["top-1"]


def test_finetune_on_val_and_bad_inputs():
    xtr, ytr = blobs(120, seed=3)
    xva, yva = blobs(60, seed=4)
    res = lr.log_regression(xtr, ytr, xva, yva, Cs=[0.1, 10.0], finetune_on_val=True, verbose=False)
    assert set(res["sweep"]) == {0.1, 10.0}
    with pytest.raises(ValueError, match="too small"):
        lr.log_regression(xtr[:5], ytr[:5], xva, yva, Cs=[1.0])
    with pytest.raises(ValueError, match="C must be > 0"):
        lr.fit_logreg(xtr, ytr, 6, 0.0)
    with pytest.raises(ValueError, match="labels must be in"):
        lr.fit_logreg(xtr, ytr, 3, 1.0)
