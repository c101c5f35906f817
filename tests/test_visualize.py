"""PCA picture: PCA against numpy's covariance eigenvectors, foreground separation, PNG content."""
import numpy as np
from PIL import Image

from dinov2_jax import visualize


def test_pca_components_match_covariance_eigenvectors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    mean, comps = visualize.pca_components(x, 3)
    evals, evecs = np.linalg.eigh(np.cov(x.T))
    ref = evecs[:, ::-1][:, :3].T
    for c, r in zip(comps, ref):  # equal up to sign
        assert min(np.abs(c - r).max(), np.abs(c + r).max()) < 1e-8
    np.testing.assert_allclose(mean, x.mean(0))
    scores = visualize.pca_project(x, mean, comps)
    np.testing.assert_allclose(scores.var(0, ddof=1), evals[::-1][:3], rtol=1e-8)


def synthetic_tokens(b=3, h=8, w=8, d=16, seed=0):
    """Object in the middle (rows/cols 2..5) with its own feature cluster, background elsewhere."""
    rng = np.random.default_rng(seed)
    bg_c, fg_c = rng.normal(size=d) * 4, rng.normal(size=d) * 4
    tokens = bg_c + 0.3 * rng.normal(size=(b, h, w, d))
    obj = np.zeros((b, h, w), bool)
    obj[:, 2:6, 2:6] = True
    # the object has internal structure (left/right halves differ) so the second PCA has something to show
    fg = fg_c + 0.3 * rng.normal(size=(b, h, w, d)) + np.where(np.arange(w) < 4, 1.0, -1.0)[None, None, :, None]
    tokens[obj] = fg[obj]
    return tokens, obj


def test_background_removed_by_first_component():
    tokens, obj = synthetic_tokens()
    rgb, fg = visualize.pca_rgb_maps(tokens, threshold=0.5)
    np.testing.assert_array_equal(fg, obj)  # border-oriented first component finds the object
    assert np.all(rgb[~obj] == 0)
    assert rgb[obj].std() > 0.1 and rgb.min() >= 0 and rgb.max() <= 1
    # left and right halves of the object get different colours
    left, right = rgb[:, 2:6, 2:4].mean((0, 1, 2)), rgb[:, 2:6, 4:6].mean((0, 1, 2))
    assert np.abs(left - right).max() > 0.3


def test_per_image_pca_finds_objects_in_unrelated_images():
    """Two unrelated photos (a large offset between their features): the joint first component separates the
    photos, not objects from backgrounds; one PCA per image finds each object."""
    a, obj = synthetic_tokens(b=1, seed=0)
    b, _ = synthetic_tokens(b=1, seed=1)
    shift = np.random.default_rng(2).normal(size=a.shape[-1]) * 20
    tokens = np.concatenate([a + shift, b - shift])
    objects = np.concatenate([obj, obj])
    _, fg_joint = visualize.pca_rgb_maps(tokens)
    assert (fg_joint != objects).mean() > 0.25
    rgb, fg = visualize.pca_rgb_maps(tokens, per_image=True)
    np.testing.assert_array_equal(fg, objects)
    assert rgb.shape == (2, 8, 8, 3) and np.all(rgb[~objects] == 0)


def test_png_written_and_non_trivial(tmp_path):
    tokens, _ = synthetic_tokens(b=2)
    images = np.random.default_rng(1).normal(size=(2, 56, 56, 3)).astype(np.float32)
    path = tmp_path / "pca.png"
    visualize.save_pca_picture(images, tokens, str(path))
    im = np.asarray(Image.open(path))
    assert im.shape == (2 * 56 + 3 * 4, 2 * 56 + 3 * 4, 3)
    pca_panel = im[4:60, 64:120]
    assert len(np.unique(pca_panel.reshape(-1, 3), axis=0)) > 3
    np.testing.assert_array_equal(im[4:60, 4:60], visualize.denormalize(images)[0])


def test_small_images_are_enlarged_by_an_integer_factor(tmp_path):
    tokens, _ = synthetic_tokens(b=2)
    images = np.random.default_rng(1).normal(size=(2, 56, 56, 3)).astype(np.float32)
    path = tmp_path / "pca.png"
    visualize.save_pca_picture(images, tokens, str(path), min_height=150)  # 56 -> x3 = 168
    im = np.asarray(Image.open(path))
    assert im.shape == (2 * 168 + 3 * 4, 2 * 168 + 3 * 4, 3)
    # the map half is nearest-upsampled: constant 3x3 blocks of the 56-pixel version
    small = tmp_path / "small.png"
    visualize.save_pca_picture(images, tokens, str(small))
    ref = np.asarray(Image.open(small))[4:60, 64:120]
    np.testing.assert_array_equal(im[4:172:3, 176:344:3], ref)
