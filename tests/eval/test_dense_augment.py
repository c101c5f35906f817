"""Training views of the dense heads: image and target move together (crop, flip, rotation), the mmseg rescale
and padding rules, cat_max_ratio, and the depth colour jitter leaving depth alone."""
import numpy as np
import pytest
from PIL import Image

from dinov2_jax.data.augmentations import IMAGENET_MEAN, IMAGENET_STD
from dinov2_jax.eval import dense_augment as da


def _denorm(x):
    return np.round((x * IMAGENET_STD + IMAGENET_MEAN) * 255).astype(np.int64)


def _coded_pair(h, w):
    """Image whose R/G channels are the pixel's x/y; label = a function of (x, y) -> (PIL image, label)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx, yy, np.full_like(xx, 7)], -1).astype(np.uint8)
    return Image.fromarray(img), ((3 * xx + yy) % 11).astype(np.uint8)


def test_rescale_size_follows_mmcv_keep_ratio():
    assert da._rescale_size(640, 480, 512, 2048) == (683, 512)  # short side binds
    assert da._rescale_size(5000, 500, 512, 2048) == (2048, 205)  # long side binds (aspect > 4)


@pytest.mark.parametrize("seed", range(6))
def test_segmentation_view_keeps_image_and_label_aligned(seed):
    """Scale 1 (no resampling): the view is an exact crop (+ maybe a mirror) of both image and label, the same
    one, read back from the coordinates written into the image."""
    image, label = _coded_pair(40, 90)
    rng = np.random.default_rng(seed)
    img, lab = da.segmentation_view(image, label, 40, rng, scale_range=(1.0, 1.0), cat_max_ratio=1.0)
    assert img.shape == (40, 40, 3) and img.dtype == np.float32 and lab.shape == (40, 40) and lab.dtype == np.uint8
    x, y = _denorm(img)[..., 0], _denorm(img)[..., 1]
    np.testing.assert_array_equal(lab, (3 * x + y) % 11)  # every label sits on its own pixel
    np.testing.assert_array_equal(y, np.broadcast_to(np.arange(40)[:, None], (40, 40)))  # full height, rows kept
    assert np.all(np.abs(np.diff(x, axis=1)) == 1)  # a contiguous window of columns, maybe mirrored


def test_segmentation_view_flips_half_the_time():
    image, label = _coded_pair(28, 28)
    rng = np.random.default_rng(0)
    flips = [_denorm(da.segmentation_view(image, label, 28, rng, scale_range=(1.0, 1.0))[0])[0, 0, 0] == 27
             for _ in range(200)]
    assert 0.4 < np.mean(flips) < 0.6


def test_small_views_are_padded_with_zero_and_ignore():
    """Rescaled below the crop size: bottom/right padding, image 0 after normalisation, label ignore."""
    image, label = _coded_pair(40, 40)
    img, lab = da.segmentation_view(image, label, 40, np.random.default_rng(0), scale_range=(0.5, 0.5), flip_prob=0)
    assert (lab[:20, :20] != 255).all() and (lab[20:] == 255).all() and (lab[:, 20:] == 255).all()
    assert (img[20:] == 0).all() and (img[:, 20:] == 0).all()
    # the kept corner is the whole image at half size: x and y coordinates halved (bilinear, so within 1)
    x = _denorm(img[:20, :20])[..., 0]
    assert np.abs(x - 2 * np.arange(20)[None, :]).max() <= 1.5


def test_rescale_range_scales_the_short_side():
    image = Image.new("RGB", (300, 200))
    label = np.zeros((200, 300), np.uint8)
    for r in (0.5, 1.0, 2.0):
        img, lab = da.segmentation_view(image, label, 100, np.random.default_rng(0), scale_range=(r, r), flip_prob=0)
        valid = lab != 255
        assert valid.any(0).sum() == min(100, round(150 * r)) and valid.any(1).sum() == min(100, round(100 * r))


def test_cat_max_ratio_avoids_single_class_crops():
    """One class covers 70 % of the map: 68 % of unconstrained 100 x 100 crops have a class at >= 75 %; with
    cat_max_ratio 0.75 mmseg redraws (up to 10 times) until none has, which leaves 0.68 ** 11 = 1.4 % of them."""
    label = np.zeros((100, 250), np.uint8)
    label[:, 175:] = 1

    def share(cat_max_ratio):
        rng, bad = np.random.default_rng(0), 0
        for _ in range(200):
            y0, y1, x0, x1 = da.crop_box(label, 100, rng, cat_max_ratio)
            _, counts = np.unique(label[y0:y1, x0:x1], return_counts=True)
            bad += counts.max() / counts.sum() >= 0.75
        return bad / 200

    assert share(1.0) > 0.6 and share(0.75) < 0.05


def test_mismatched_label_size_is_an_error():
    with pytest.raises(ValueError, match="label map is 10x10"):
        da.segmentation_view(Image.new("RGB", (20, 20)), np.zeros((10, 10), np.uint8), 14, np.random.default_rng(0))


def test_depth_view_flip_rotation_and_colour():
    size = 56
    xx = np.broadcast_to(np.arange(size, dtype=np.float32), (size, size))
    depth = 1.0 + xx / 10  # depth is a function of x; the image's red channel is x too
    image = np.stack([xx * 4, np.full_like(xx, 100), np.full_like(xx, 50)], -1).astype(np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(10):  # flip only: exact, together
        img, dep = da.depth_view(image, depth, rng, rotate_prob=0, colour_prob=0)
        np.testing.assert_allclose(dep, 1.0 + _denorm(img)[..., 0] / 40, rtol=1e-6)
    # rotation (20 deg to see it): image and depth turn together; nearest resampling keeps depth values; the
    # uncovered corners become invalid (0)
    img, dep = da.depth_view(image, depth, rng, rotate_prob=1, max_degree=20, flip_prob=0, colour_prob=0)
    assert np.isin(dep[dep > 0], depth).all() and (dep == 0).any() and 0.6 < (dep > 0).mean() < 0.99
    inner = (dep[1:-1, 1:-1] > 0) & (_denorm(img)[1:-1, 1:-1, 1] == 100)  # both inside the turned image
    assert np.abs(dep[1:-1, 1:-1] - 1.0 - _denorm(img)[1:-1, 1:-1, 0] / 40)[inner].max() <= 0.11
    assert (np.abs(dep - depth)[dep > 0] > 0.05).any()  # and it did turn
    # colour jitter changes the image only
    img, dep = da.depth_view(image, depth, rng, rotate_prob=0, flip_prob=0, colour_prob=1)
    np.testing.assert_array_equal(dep, depth)
    rgb = _denorm(img)
    assert rgb.min() >= 0 and rgb.max() <= 255 and not np.array_equal(rgb, image)
