"""Feature extraction over labelled sources, and the k-NN / linear end-to-end entry points on a tiny set."""
import numpy as np
import pytest
from PIL import Image

from dinov2_jax.data.augmentations import eval_transform
from dinov2_jax.eval import features, knn, linear
from helpers import tiny_vit  # tests/ is on sys.path


def make_folder(root, per_class=5, seed=0, corrupt=False):
    """Two classes: reddish and bluish noisy images of varying sizes, ImageFolder layout."""
    rng = np.random.default_rng(seed)
    for c, colour in enumerate([(200, 40, 40), (40, 40, 200)]):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            h, w = rng.integers(30, 60, 2)
            im = np.clip(np.array(colour) + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(im).save(d / f"img{i}.png")
    if corrupt:
        (root / "class0" / "broken.png").write_bytes(b"not an image")
    return f"folder:{root}"


def test_extract_features_matches_direct_forward(tmp_path):
    spec = make_folder(tmp_path / "train", corrupt=True)
    model = tiny_vit()
    fn = features.make_feature_fn(model)
    feats, labels = features.extract_features(fn, spec, batch_size=4, image_size=28, resize_size=32,
                                              progress=False)
    from dinov2_jax.data.sources import make_source

    src = make_source(spec)
    recs = [src[i] for i in range(len(src))]
    recs = [r for r in recs if r is not None]  # the broken file is skipped
    assert len(recs) == 10 and feats.shape == (10, 32)
    direct = np.stack([np.asarray(model(eval_transform(im, 32, 28)[None]))[0] for im, _ in recs])
    np.testing.assert_allclose(feats, direct, atol=1e-5)
    np.testing.assert_array_equal(labels, [r[1] for r in recs])
    # decoding in a Grain worker process gives the same result
    feats_w, labels_w = features.extract_features(fn, spec, batch_size=4, image_size=28, resize_size=32,
                                                  num_workers=1, progress=False)
    np.testing.assert_array_equal(feats_w, feats)
    np.testing.assert_array_equal(labels_w, labels)


def test_unlabelled_folder_is_an_error(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (30, 30)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="unlabelled"):
        features.extract_features(lambda x: x[:, 0, 0], f"folder:{tmp_path / 'flat'}", image_size=28,
                                  resize_size=32, progress=False)


def test_knn_eval_end_to_end(tmp_path):
    train = make_folder(tmp_path / "train", per_class=6, seed=0)
    val = make_folder(tmp_path / "val", per_class=3, seed=1)
    model = tiny_vit()
    res = knn.knn_eval(model, train, val, batch_size=4, image_size=28, resize_size=32, progress=False)
    assert sorted(res) == sorted(f"('full', {k}) Top {t}" for k in (10, 12) for t in (1, 5))
    # same as k-NN on directly computed features
    fn = features.make_feature_fn(model)
    ft, yt = features.extract_features(fn, train, batch_size=5, image_size=28, resize_size=32, progress=False)
    fv, yv = features.extract_features(fn, val, batch_size=5, image_size=28, resize_size=32, progress=False)
    assert res == knn.knn_classify(ft, yt, fv, yv)
    # colour classes are trivially separable even for a random backbone: 10-NN gets them right
    assert res["('full', 10) Top 1"] == 100.0


def test_knn_cli(tmp_path, monkeypatch):
    import json

    from dinov2_jax import hub

    train = make_folder(tmp_path / "train", per_class=3, seed=0)
    val = make_folder(tmp_path / "val", per_class=2, seed=1)
    monkeypatch.setattr(hub, "load_for_eval", lambda *a, **k: tiny_vit())
    out = tmp_path / "res" / "results_eval_knn.json"
    args = ["--train-dataset", train, "--val-dataset", val, "--batch-size", "4", "--image-size", "28",
            "--nb-knn", "1", "3", "--output", str(out)]
    assert knn.main(args) == 0
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert [list(l)[0] for l in lines] == ["('full', 1) Top 1", "('full', 1) Top 5", "('full', 3) Top 1",
                                           "('full', 3) Top 5"]


@pytest.mark.parametrize("augment", [False, True])
def test_linear_eval_end_to_end(tmp_path, augment):
    train = make_folder(tmp_path / "train", per_class=4, seed=0)
    val = make_folder(tmp_path / "val", per_class=3, seed=1)
    res = linear.linear_eval(tiny_vit(depth=4), train, val, batch_size=4, iterations=30, augment=augment,
                             image_size=28, resize_size=32, progress=False)
    assert len(res["heads"]) == 52 and res["max_iter"] == 30 and res["augment"] is augment
    assert res["best_classifier"]["accuracy"] == 1.0 and res["val_accuracy"] == 100.0


def test_augmented_batches_deterministic_and_labelled(tmp_path):
    src = features.load_labelled_source(make_folder(tmp_path / "t", per_class=3, corrupt=True))
    fn = features.make_augmented_batch_fn(lambda x: x, src, batch_size=4, crop_size=28, seed=0)
    a, la = fn(5)
    b, lb = fn(5)
    c, _ = fn(6)
    assert a.shape == (4, 28, 28, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)
    # red class has a high first normalised channel, blue a low one: labels travel with their images
    assert np.all((a[..., 0].mean((1, 2)) > a[..., 2].mean((1, 2))) == (la == 0))


def test_linear_eval_shallow_backbone_uses_available_blocks(tmp_path):
    train = make_folder(tmp_path / "train", per_class=2, seed=0)
    res = linear.linear_eval(tiny_vit(depth=2), train, train, batch_size=4, iterations=2, image_size=28,
                             resize_size=32, progress=False)
    assert len(res["heads"]) == 26 and all(k.startswith("classifier_1_") for k in res["heads"])


def test_max_samples_keeps_every_class(tmp_path):
    spec = make_folder(tmp_path / "t", per_class=5)  # class-sorted: 5 x class0 then 5 x class1
    src = features.load_labelled_source(spec, max_samples=4)
    assert len(src) == 4 and list(src.indices) == [0, 2, 5, 7]
    np.testing.assert_array_equal(src.labels(), [0, 0, 1, 1])
    assert [src.record(i)[1] for i in range(4)] == [0, 0, 1, 1]
    assert len(features.load_labelled_source(spec, max_samples=50)) == 10


def test_linear_cli(tmp_path, monkeypatch):
    import json

    from dinov2_jax import hub

    train = make_folder(tmp_path / "train", per_class=2, seed=0)
    monkeypatch.setattr(hub, "load_for_eval", lambda *a, **k: tiny_vit(depth=4))
    out = tmp_path / "results_eval_linear.json"
    assert linear.main(["--train-dataset", train, "--val-dataset", train, "--batch-size", "4", "--iterations", "3",
                        "--image-size", "28", "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "iter: 3"
    best = json.loads(lines[1])["best_classifier"]
    assert best["name"].startswith("classifier_") and 0 <= best["accuracy"] <= 1
    assert json.loads(lines[2]) == {f"{train}_accuracy": 100 * best["accuracy"]}
