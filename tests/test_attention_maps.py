"""Attention pictures: DINO's mass threshold, high-norm outliers, the picture's panels, the extract CLI."""
import numpy as np
import pytest
from PIL import Image

from dinov2_jax import extract, hub, visualize
from dinov2_jax.data.augmentations import eval_transform
from helpers import tiny_vit, write_object_images  # tests/ is on sys.path


def test_mass_mask_small_case_and_properties():
    m = np.array([[0.5, 0.1], [0.3, 0.1]])
    np.testing.assert_array_equal(visualize.attention_mass_mask(m, 0.6), [[True, False], [True, False]])
    np.testing.assert_array_equal(visualize.attention_mass_mask(m, 0.5), [[True, False], [False, False]])
    assert visualize.attention_mass_mask(m, 1.0).all()
    rng = np.random.default_rng(0)
    maps = rng.dirichlet(np.full(48, 0.3), size=(3, 4)).reshape(3, 4, 6, 8)
    for f in (0.1, 0.6, 0.9):
        keep = visualize.attention_mass_mask(maps, f)
        for a, k in zip(maps.reshape(-1, 48), keep.reshape(-1, 48)):
            assert a[k].sum() >= f - 1e-12  # holds the fraction ...
            assert a[k].sum() - a[k].min() < f  # ... and is the smallest such set
            assert a[k].min() >= a[~k].max() if (~k).any() else True  # the highest patches
    with pytest.raises(ValueError, match="fraction must be in"):
        visualize.attention_mass_mask(m, 0.0)


def test_high_norm_outliers_are_the_planted_tokens():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(2, 6, 6, 16))
    tokens[0, 1, 2] *= 20
    tokens[1, 4, 0] *= 20
    tokens[1, 5, 5] *= 20
    out, frac = visualize.high_norm_tokens(visualize.token_norms(tokens), 3.0)
    assert sorted(zip(*np.nonzero(out))) == [(0, 1, 2), (1, 4, 0), (1, 5, 5)]
    assert frac == pytest.approx(3 / 72)


def test_attention_picture_panels(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    att = rng.dirichlet(np.ones(16), size=(2, 3)).reshape(2, 3, 4, 4)
    tokens = rng.normal(size=(2, 4, 4, 8))
    tokens[0, 0, 0] *= 50
    pic = visualize.attention_picture(images, att, heads=[0, 2], patch_tokens=tokens, path=str(tmp_path / "a.png"))
    a = np.asarray(Image.open(tmp_path / "a.png"))
    top = visualize.TITLE_HEIGHT  # the column titles
    assert a.shape == np.asarray(pic).shape == (top + 2 * 32 + 3 * 4, 5 * 32 + 6 * 4, 3)  # input, 2 heads, mask, norms
    assert (a[:top, :36] < 128).any()  # a title was written
    panel = lambda i, j: a[top + 4 + i * 36:top + 36 + i * 36, 4 + j * 36:36 + j * 36]
    np.testing.assert_array_equal(panel(1, 0), visualize.denormalize(images)[1])
    head2 = panel(1, 2)  # head 2 of image 1: nearest-upsampled 8x8 blocks, brightest where the attention is
    assert (head2[::8, ::8] == head2[7::8, 7::8]).all()
    y, x = np.unravel_index(att[1, 2].argmax(), (4, 4))
    assert head2[8 * y, 8 * x].sum() == max(head2[::8, ::8].reshape(-1, 3).sum(1))  # viridis top is brightest
    keep = visualize.attention_mass_mask(att[1, [0, 2]].mean(0), 0.6)
    up = visualize.upsample_nearest(keep, 8)
    np.testing.assert_array_equal(panel(1, 3)[up], panel(1, 0)[up])  # kept pixels unchanged, the rest faded
    assert (panel(1, 3)[~up] >= int(0.7 * 255)).all() and (~up).any()
    assert (panel(0, 4)[0, :8] == (0, 255, 255)).all()  # the planted outlier is outlined
    with pytest.raises(ValueError, match="3 heads"):
        visualize.attention_picture(images, att, heads=[3])
    norm_pic = visualize.token_norm_picture(images, tokens, min_height=64, titles=False)
    assert np.asarray(norm_pic).shape == (2 * 64 + 3 * 4, 2 * 64 + 3 * 4, 3)


def test_extract_cli_attention_png(tmp_path, monkeypatch, capsys):
    names = write_object_images(tmp_path / "imgs", n=3)
    model = tiny_vit(img_size=42, num_register_tokens=2)  # 2 heads, 2 registers, 14-pixel patches
    monkeypatch.setattr(hub, "load_for_eval", lambda *a, **k: model)
    png = tmp_path / "att.png"
    argv = ["--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "f.npz"), "--image-size", "56",
            "--attention-png", str(png), "--attention-block", "0"]
    assert extract.main(argv) == 0
    printed = capsys.readouterr().out
    assert "high-norm patch tokens:" in printed and "in 3 images" in printed and "cls attention on the 2 registers in block 0" in printed
    a = np.asarray(Image.open(png))
    # 3 rows of 168-pixel panels (56 enlarged x3 to reach 160); input, 2 heads, mask, norms
    assert a.shape == (visualize.TITLE_HEIGHT + 3 * 168 + 4 * 4, 5 * 168 + 6 * 4, 3)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 20
    # the maps drawn are the model's block-0 cls attention on the eval-transformed images
    x = np.stack([eval_transform(Image.open(tmp_path / "imgs" / n), resize_size=64, crop_size=56) for n in names])
    maps = extract.attention_maps(model, x, block=0, batch_size=2)
    ref = model.get_cls_attention_maps(x, block=0)
    np.testing.assert_allclose(maps["attention"], np.asarray(ref["patches"]), atol=1e-6)
    assert maps["attention"].shape == (3, 2, 4, 4) and maps["patch_tokens"].shape == (3, 4, 4, 32)
    for bad, msg in ((["--attention-heads", "0,5"], "has 2 heads"), (["--attention-block", "2"], "out of range")):
        with pytest.raises((ValueError, SystemExit), match=msg):
            extract.main(argv + bad)
