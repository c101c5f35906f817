"""k-NN math against a direct numpy implementation of the official formulas and a hand-computed example."""
import math

import numpy as np
import pytest

from dinov2_jax.eval import knn
from dinov2_jax.models.layers.norm import l2_normalize


def numpy_knn_reference(train, train_labels, val, val_labels, ks, T, num_classes):
    """Direct (unchunked) official formulas: F.normalize, mm, topk(max_k), softmax(/T), per-k sums."""
    def normalize(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    train, val = normalize(train.astype(np.float64)), normalize(val.astype(np.float64))
    sims = val @ train.T
    max_k = max(ks)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :max_k]
    top = np.take_along_axis(sims, order, axis=1)
    labels = train_labels[order]
    w = np.exp(top / T - (top / T).max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    onehot = np.eye(num_classes)[labels]  # [Q, max_k, C]
    out = {}
    for k in ks:
        probas = (onehot[:, :k] * w[:, :k, None]).sum(axis=1)
        ranks = np.argsort(-probas, axis=1, kind="stable")
        top1 = np.mean(ranks[:, 0] == val_labels)
        top5 = np.mean(np.any(ranks[:, :5] == val_labels[:, None], axis=1))
        out[k] = (probas, 100 * top1, 100 * top5)
    return out


def test_hand_computed_example():
    # train: (1,0) c0, (0,1) c1, (1,1)/sqrt2 c1, (-1,0) c0; query (1,0) of class 0, T = 1.
    train = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], np.float32)
    labels = np.array([0, 1, 1, 0])
    query = np.array([[2.0, 0.0]], np.float32)  # not unit: normalisation must happen inside
    sims, labs = knn.knn_search(l2_normalize(query), l2_normalize(train), labels, 4)
    np.testing.assert_allclose(np.asarray(sims)[0], [1.0, math.sqrt(0.5), 0.0, -1.0], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(labs)[0], [0, 1, 1, 0])
    probas = knn.knn_vote(sims, labs, [1, 2, 3, 4], temperature=1.0, num_classes=2)
    z = math.e + math.exp(math.sqrt(0.5)) + 1 + math.exp(-1)
    expect = {
        1: [math.e / z, 0.0],
        2: [math.e / z, math.exp(math.sqrt(0.5)) / z],
        3: [math.e / z, (math.exp(math.sqrt(0.5)) + 1) / z],  # class 1 wins: 3.028 > 2.718
        4: [(math.e + math.exp(-1)) / z, (math.exp(math.sqrt(0.5)) + 1) / z],  # class 0 again: 3.086
    }
    for k, e in expect.items():
        np.testing.assert_allclose(np.asarray(probas[k])[0], e, atol=1e-6)
    res = knn.knn_classify(train, labels, query, np.array([0]), nb_knn=[1, 3, 4], temperature=1.0)
    assert res == {
        "('full', 1) Top 1": 100.0, "('full', 1) Top 5": 100.0,
        "('full', 3) Top 1": 0.0, "('full', 3) Top 5": 100.0,
        "('full', 4) Top 1": 100.0, "('full', 4) Top 5": 100.0,
    }


@pytest.mark.parametrize("chunk_size", [7, 64, 4096])
def test_matches_numpy_reference(chunk_size):
    rng = np.random.default_rng(0)
    n_cls, dim = 12, 16
    centers = rng.normal(size=(n_cls, dim))
    train_labels = rng.integers(0, n_cls, 300)
    val_labels = rng.integers(0, n_cls, 70)
    train = (centers[train_labels] + 1.2 * rng.normal(size=(300, dim))).astype(np.float32)
    val = (centers[val_labels] + 1.2 * rng.normal(size=(70, dim))).astype(np.float32)
    ks = [10, 20, 100, 200]
    ref = numpy_knn_reference(train, train_labels, val, val_labels, ks, 0.07, n_cls)

    sims, labs = knn.knn_search(l2_normalize(val), np.asarray(l2_normalize(train)), train_labels, 200,
                                chunk_size=chunk_size)
    probas = knn.knn_vote(sims, labs, ks, 0.07, n_cls)
    for k in ks:
        np.testing.assert_allclose(np.asarray(probas[k]), ref[k][0], atol=2e-5)
    res = knn.knn_classify(train, train_labels, val, val_labels, nb_knn=ks, chunk_size=chunk_size, query_batch=32)
    for k in ks:
        assert res[f"('full', {k}) Top 1"] == pytest.approx(ref[k][1], abs=1e-9)
        assert res[f"('full', {k}) Top 5"] == pytest.approx(ref[k][2], abs=1e-9)
    # the features carry class information: k-NN must be far above chance (1/12)
    assert res["('full', 20) Top 1"] > 50


def test_k_clamped_to_train_size():
    rng = np.random.default_rng(1)
    train, val = rng.normal(size=(15, 4)), rng.normal(size=(5, 4))
    res = knn.knn_classify(train, np.arange(15) % 3, val, np.arange(5) % 3, nb_knn=[10, 20, 100, 200])
    assert sorted(res) == sorted(["('full', 10) Top 1", "('full', 10) Top 5", "('full', 15) Top 1",
                                  "('full', 15) Top 5"])
    # k = n_train with 3 classes: top-5 covers every class
    assert res["('full', 15) Top 5"] == 100.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="train labels"):
        knn.knn_classify(np.zeros((4, 2)), np.zeros(3), np.zeros((1, 2)), np.zeros(1))
    with pytest.raises(ValueError, match="must be >= 0"):
        knn.knn_classify(np.ones((4, 2)), -np.ones(4), np.ones((1, 2)), np.zeros(1))
    with pytest.raises(ValueError, match=r"k=5 must be in \[1"):
        knn.knn_search(np.ones((1, 2)), np.ones((3, 2)), np.zeros(3), 5)


def test_matches_official_knn_module_fixture():
    """Golden fixture from the official `KnnModule` + torchmetrics top-k accuracy (make_knn_official.py)."""
    import os

    z = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "knn_official.npz"))
    ks = [int(k) for k in z["ks"]]
    sims, labs = knn.knn_search(z["val"], z["train"], z["train_labels"], max(ks), chunk_size=64)
    probas = knn.knn_vote(sims, labs, ks, 0.07, 8)
    for k in ks:
        np.testing.assert_allclose(np.asarray(probas[k]), z[f"probas_{k}"], atol=1e-6)
    res = knn.knn_classify(z["train"], z["train_labels"], z["val"], z["val_labels"], nb_knn=ks, chunk_size=64)
    for k in ks:
        assert res[f"('full', {k}) Top 1"] == pytest.approx(float(z[f"top1_{k}"]), abs=1e-4)
        assert res[f"('full', {k}) Top 5"] == pytest.approx(float(z[f"top5_{k}"]), abs=1e-4)
