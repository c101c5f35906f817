"""Linear probe: resumable training, the best head saved and reloaded to classify images, --test-datasets."""

import numpy as np
import pytest

from dinov2_jax.eval import linear
from helpers import tiny_vit  # tests/ is on sys.path


def separable(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    cls = rng.normal(size=(n, 4, 8)).astype(np.float32)
    cls[np.arange(n), -1, y] += 4.0
    return linear.LinearFeatures(cls, rng.normal(size=(n, 8)).astype(np.float32)), y


def test_resume_from_iteration_4(tmp_path, monkeypatch):
    feats, y = separable(50, 0)
    kw = dict(num_classes=3, batch_size=16, max_iter=9, learning_rates=(1e-3, 0.1), progress=False)
    straight, _ = linear.train_linear_heads(feats, y, **kw)
    ck = str(tmp_path / "ck.npz")
    saved = []
    real_save = linear.save_training_checkpoint

    def save_then_stop(path, params, buf, iteration, settings):
        real_save(path, params, buf, iteration, settings)
        saved.append(iteration)
        if iteration == 4:
            raise KeyboardInterrupt  # the run dies right after its first checkpoint

    monkeypatch.setattr(linear, "save_training_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        linear.train_linear_heads(feats, y, **kw, checkpoint_path=ck, checkpoint_every=4)
    monkeypatch.setattr(linear, "save_training_checkpoint", real_save)
    resumed, _ = linear.train_linear_heads(feats, y, **kw, checkpoint_path=ck, checkpoint_every=4)
    assert saved == [4] and int(np.load(ck)["iteration"]) == 9
    for a, b in zip(resumed, straight):
        np.testing.assert_allclose(np.asarray(a["kernel"]), np.asarray(b["kernel"]), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(a["bias"]), np.asarray(b["bias"]), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="other settings"):
        linear.train_linear_heads(feats, y, **{**kw, "batch_size": 8}, checkpoint_path=ck)


def test_best_head_saved_reloaded_and_test_datasets(tmp_path):
    """End to end on the demo data: the head chosen on val is saved; reloaded, it classifies a folder of
    images (extract CLI) exactly as the probe scored them; --test-datasets use that same head."""
    from PIL import Image

    from dinov2_jax import extract
    from dinov2_jax.data.sources import DemoSource

    model = tiny_vit()
    out = tmp_path / "probe"
    res = linear.linear_eval(model, "demo:train", "demo:val", batch_size=16, iterations=30, image_size=28,
                             resize_size=32, max_samples=50, progress=False, learning_rates=(1e-3, 1e-1),
                             test_sources=["demo:val", "demo:train"], output_dir=str(out))
    assert res["head_path"] == str(out / "best_linear_head.npz")
    assert res["test_accuracy"]["demo:val"] == pytest.approx(res["val_accuracy"])  # same head, same set
    head = linear.load_linear_head(res["head_path"])
    n_cls = head.kernel.shape[1]  # official num_classes = max(train label) + 1 of the sampled train images
    assert head.name == res["best_classifier"]["name"] and head.classes == list(DemoSource().classes)[:n_cls]
    assert (out / "running_checkpoint_linear.npz").exists()
    # 10 val images written as files -> classified with the saved head
    src = DemoSource("val")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(10):
        Image.fromarray(src[i][0]).save(folder / f"{i:02d}.png")
    pred = extract.classify_folder(model, res["head_path"], str(folder), batch_size=4, progress=False)
    assert pred["logits"].shape == (10, n_cls) and len(pred["predictions"]) == 10
    assert set(pred["predictions"]) <= set(DemoSource().classes)
    feat_fn = linear.make_linear_feature_fn(model, head.use_n_blocks)
    images = np.stack([extract.load_image(str(folder / f"{i:02d}.png"), 28, 32) for i in range(10)])
    np.testing.assert_allclose(pred["logits"], linear.linear_head_logits(head, feat_fn(images)), rtol=1e-4, atol=1e-4)
    other = tiny_vit(seed=1, embed_dim=48, init_values=None)
    with pytest.raises(ValueError, match="head expects"):
        extract.classify_folder(other, res["head_path"], str(folder), batch_size=4, progress=False)


def test_augmented_batches_from_grain_workers_equal_in_process():
    """The official augmented protocol's batches (RandomResizedCrop + flip) made in 2 Grain worker
    processes are the in-process ones, in order, and a restart at any iteration gives the same batch."""
    from dinov2_jax.eval import features

    src = features.load_labelled_source("demo:train", max_samples=24)
    kw = dict(batch_size=4, crop_size=28, seed=3)
    inproc = features.make_augmented_batch_fn(lambda x: x, src, **kw)
    workers = features.make_augmented_batch_fn(lambda x: x, src, num_workers=2, **kw)
    seq = [workers(it) for it in range(8)]  # 8 batches = more than one pass over 24 images
    for it in (0, 5, 7, 2):  # random access restarts the stream
        a, la = inproc(it)
        np.testing.assert_array_equal(a, seq[it][0])
        np.testing.assert_array_equal(la, seq[it][1])
    assert a.shape == (4, 28, 28, 3) and not np.array_equal(seq[0][0], seq[6][0])
