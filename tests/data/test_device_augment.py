"""Photometric augmentation on the device (dinov2_jax/data/device_augment.py) vs the host path."""
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.ssl_default import get_config
from dinov2_jax.data import augmentations as A
from dinov2_jax.data import device_augment as D
from dinov2_jax.data.masking import MaskingGenerator, collate
from dinov2_jax.data.pipeline import make_train_loader

ONE_LEVEL = 1 / 255 / A.IMAGENET_STD.min()  # one uint8 level after normalisation


def _images(n=6, h=37, w=41, seed=0):
    """Random noise plus smooth gradients (noise alone never hits near-gray / flat regions)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (n, h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (h + w)], -1)
    out = np.where(np.arange(n)[:, None, None, None] % 2 == 0, noise, (smooth + noise // 16) % 256)
    return out.astype(np.uint8)


def _host(fn, imgs, args):
    return np.stack([np.asarray(fn(Image.fromarray(im), a)) for im, a in zip(imgs, args)]).astype(np.float32)


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
def test_enhance_ops_match_host_exactly(name):
    imgs = _images()
    factors = np.random.default_rng(1).uniform(0.5, 1.5, len(imgs))
    ref = _host(getattr(A, f"adjust_{name}"), imgs, factors)
    out = jax.jit(getattr(D, f"adjust_{name}"))(jnp.asarray(imgs, jnp.float32), jnp.asarray(factors, jnp.float32))
    np.testing.assert_array_equal(np.asarray(out), ref)


def test_hue_matches_host_exactly():
    imgs = _images(8)
    hue = np.array([-0.5, -0.1, -0.03, 0.0, 0.004, 0.05, 0.1, 0.5])
    ref = _host(A.adjust_hue, imgs, hue)
    shift = jnp.asarray([A.hue_shift(h) for h in hue], jnp.int32)
    out = jax.jit(D.adjust_hue)(jnp.asarray(imgs, jnp.float32), shift)
    np.testing.assert_array_equal(np.asarray(out), ref)


def _all_colors():
    v = np.arange(1 << 24, dtype=np.uint32)
    return np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255], -1).astype(np.uint8).reshape(4096, 4096, 3)


def test_hsv_conversions_match_pil_on_every_input():
    """Both PIL conversions, exhaustively: all 2^24 RGB colours and all 2^24 HSV triples; a hue shift
    of all colours."""
    grid = _all_colors()
    want = np.asarray(Image.fromarray(grid, "RGB").convert("HSV"))
    got = np.asarray(jax.jit(D.rgb_to_hsv)(jnp.asarray(grid, jnp.float32)))
    np.testing.assert_array_equal(got, want)
    want = np.asarray(Image.fromarray(grid, "HSV").convert("RGB"))
    got = np.asarray(jax.jit(D.hsv_to_rgb)(jnp.asarray(grid, jnp.float32)))
    np.testing.assert_array_equal(got, want)
    # and composed (RGB -> HSV -> shift -> RGB in one jitted function, as in the chain)
    want = np.asarray(A.adjust_hue(Image.fromarray(grid), -0.07))
    got = jax.jit(D.adjust_hue)(jnp.asarray(grid[None], jnp.float32), jnp.asarray([A.hue_shift(-0.07)]))
    np.testing.assert_array_equal(np.asarray(got)[0], want)


def test_grayscale_solarize_normalize_match_host():
    imgs = _images()
    x = jnp.asarray(imgs, jnp.float32)
    gray = np.stack([np.asarray(A.to_grayscale_rgb(Image.fromarray(i))) for i in imgs])
    np.testing.assert_array_equal(np.asarray(D.to_grayscale(x)), gray)
    sol = np.stack([np.asarray(A.solarize(Image.fromarray(i))) for i in imgs])
    np.testing.assert_array_equal(np.asarray(D.solarize(x)), sol)
    norm = np.stack([A.normalize(Image.fromarray(i)) for i in imgs])
    np.testing.assert_allclose(np.asarray(jax.jit(D.normalize)(x)), norm, rtol=0, atol=1e-6)


def test_gaussian_blur_matches_host_within_one_level():
    imgs = _images(8)
    sigma = np.array([0.1, 0.3, 0.7, 1.0, 1.3, 1.7, 1.99, 2.0])
    ref = _host(A.gaussian_blur, imgs, sigma)
    out = np.asarray(jax.jit(D.gaussian_blur)(jnp.asarray(imgs, jnp.float32), jnp.asarray(sigma, jnp.float32)))
    d = np.abs(out - ref)
    # float32 sums in another order than scipy's float64 ones: rare 1-level rounding flips
    assert d.max() <= 1 and (d > 0).mean() < 0.005, (d.max(), (d > 0).mean())
    kern = jax.jit(D.gaussian_kernel1d)(jnp.asarray(sigma, jnp.float32))
    for k, s in zip(np.asarray(kern), sigma):
        # atol: XLA flushes the denormal outer taps of sigma=0.1 to zero
        np.testing.assert_allclose(k, A.gaussian_kernel1d(9, s), rtol=1e-6, atol=1e-30)


def test_color_jitter_follows_each_samples_order():
    imgs = _images(4)
    orders = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]], np.int32)
    factors = np.array([[1.3, 0.7, 1.1, 0.08], [0.6, 1.4, 0.8, -0.1], [1.1, 1.2, 0.9, 0.03], [0.9, 0.8, 1.2, -0.05]])
    ref = np.stack([np.asarray(A.apply_color_jitter(Image.fromarray(im), o, f))
                    for im, o, f in zip(imgs, orders, factors)]).astype(np.float32)
    shift = jnp.asarray([A.hue_shift(f[3]) for f in factors], jnp.int32)
    out = jax.jit(D.color_jitter)(jnp.asarray(imgs, jnp.float32), jnp.asarray(orders),
                                  jnp.asarray(factors[:, :3], jnp.float32), shift)
    np.testing.assert_array_equal(np.asarray(out), ref)


def test_sample_photometric_draw_order():
    """The documented draw order: jitter?, permutation, b, c, s, h, gray?, blur? sigma, solarize?."""
    for seed in range(40):
        p = A.sample_photometric(np.random.default_rng(seed), 0.9, 0.2)
        rng = np.random.default_rng(seed)
        jitter = rng.random() < 0.8
        if jitter:
            order = tuple(rng.permutation(4))
            f = (rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4), rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1))
            assert (p.jitter_order, p.jitter_factors) == (order, f)
        gray = rng.random() < 0.2
        blur = rng.random() < 0.9
        sigma = rng.uniform(0.1, 2.0) if blur else 0.0
        sol = rng.random() < 0.2
        assert (p.jitter_apply, p.gray, p.blur_apply, p.blur_sigma, p.solarize) == (jitter, gray, blur, sigma, sol)
    # probability 0: no draw at all (the host path's `p > 0 and ...`)
    for seed in range(10):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        p = A.sample_photometric(a, 0.0, 0.0)
        if b.random() < 0.8:
            b.permutation(4), [b.uniform() for _ in range(4)]
        b.random()
        assert a.bit_generator.state == b.bit_generator.state and not p.blur_apply and not p.solarize


def _aug(on_device, n_local=4):
    return A.DataAugmentationDINO(global_crops_size=40, local_crops_size=20, local_crops_number=n_local,
                                  photometric_on_device=on_device)


def test_both_modes_draw_the_same_geometry_and_params():
    img = _images(1, 70, 90, seed=3)[0]
    host, dev = _aug(False), _aug(True)
    for seed in range(5):
        r_host, r_dev = np.random.default_rng(seed), np.random.default_rng(seed)
        host(img, r_host)
        out = dev(img, r_dev)
        assert r_host.bit_generator.state == r_dev.bit_generator.state  # same number of draws
        replay = list(host.sample_crops(img, np.random.default_rng(seed)))
        assert len(replay) == 6 and out["global_crops"].dtype == out["local_crops"].dtype == np.uint8
        for i, (crop, params) in enumerate(replay):
            part, j = ("global", i) if i < 2 else ("local", i - 2)
            np.testing.assert_array_equal(out[f"{part}_crops"][j], np.asarray(crop))
            for k, v in params.as_arrays().items():
                np.testing.assert_array_equal(out[f"{part}_photometric"][k][j], v, err_msg=k)


def test_full_chain_matches_host_path():
    """Same seed, host mode vs device mode + photometric_augment: within one level (blur rounding)."""
    img = _images(1, 70, 90, seed=3)[0]
    host, dev = _aug(False), _aug(True)
    fn = jax.jit(D.photometric_augment)
    diffs, seen = [], {k: 0 for k in ("jitter_apply", "gray", "blur_apply", "solarize")}
    for seed in range(32):
        ref = host(img, np.random.default_rng(seed))
        out = dev(img, np.random.default_rng(seed))
        for part in ("global", "local"):
            params = out[f"{part}_photometric"]
            got = np.asarray(fn(jnp.asarray(out[f"{part}_crops"]), {k: jnp.asarray(v) for k, v in params.items()}))
            diffs.append(np.abs(got - ref[f"{part}_crops"]).reshape(-1))
            for k in seen:
                seen[k] += int(np.sum(params[k]))
    d = np.concatenate(diffs)
    assert d.max() <= ONE_LEVEL + 1e-5 and (d > 1e-5).mean() < 0.01, (d.max(), (d > 1e-5).mean())
    assert all(v > 0 for v in seen.values()), seen  # every op was exercised


def test_bad_inputs_raise():
    params = {k: jnp.asarray(v)[None] for k, v in A.sample_photometric(np.random.default_rng(0), 0.5, 0.0)
              .as_arrays().items()}
    with pytest.raises(TypeError, match="uint8"):
        D.photometric_augment(jnp.zeros((1, 16, 16, 3), jnp.float32), params)
    with pytest.raises(KeyError, match="blur_sigma"):
        D.photometric_augment(jnp.zeros((1, 16, 16, 3), jnp.uint8), {k: v for k, v in params.items() if k != "blur_sigma"})
    with pytest.raises(ValueError, match="rows"):
        D.photometric_augment(jnp.zeros((2, 16, 16, 3), jnp.uint8), params)


def _loader_cfg(on_device):
    cfg = get_config()
    cfg.train.dataset_path = "demo"
    cfg.crops.global_crops_size, cfg.crops.local_crops_size, cfg.crops.local_crops_number = 32, 16, 2
    cfg.student.patch_size = 8
    cfg.train.seed = 3
    cfg.crops.photometric_on_device = on_device
    return cfg


def test_loader_flag_yields_uint8_and_params_matching_host_batches():
    B = 3
    kw = dict(process_index=0, process_count=1, batch_size_per_process=B, num_workers=0)
    host = next(make_train_loader(_loader_cfg(False), **kw))
    dev = next(make_train_loader(_loader_cfg(True), **kw))
    assert dev["collated_global_crops"].shape == (2 * B, 32, 32, 3) and dev["collated_global_crops"].dtype == np.uint8
    assert dev["collated_local_crops"].shape == (2 * B, 16, 16, 3) and dev["collated_local_crops"].dtype == np.uint8
    shapes = {"jitter_order": (4,), "jitter_factors": (3,)}
    for part in ("global", "local"):
        for k in A.PHOTOMETRIC_PARAM_KEYS:
            assert dev[A.batch_param_key(part, k)].shape == (2 * B,) + shapes.get(k, ()), k
    for k in ("collated_masks", "mask_indices_list", "masks_weight", "n_masked_patches"):
        np.testing.assert_array_equal(dev[k], host[k], err_msg=k)
    out = jax.jit(D.augment_batch)(dev)
    assert set(out) == set(host)
    for k in ("collated_global_crops", "collated_local_crops"):  # rows in the same crop-major order
        d = np.abs(np.asarray(out[k]) - host[k])
        assert out[k].dtype == jnp.float32 and d.max() <= ONE_LEVEL + 1e-5, (k, d.max())


_SHARDED_CHECK = """
import json, random
import jax, jax.numpy as jnp, numpy as np
from configs.ssl_default import get_config
from dinov2_jax.data import augmentations as A, device_augment as D
from dinov2_jax.data.masking import MaskingGenerator, collate
from dinov2_jax.parallel.mesh import make_mesh
from dinov2_jax.train.trainer import _put_batch

aug = A.DataAugmentationDINO(global_crops_size=40, local_crops_size=20, local_crops_number=2,
                             photometric_on_device=True)
rng = np.random.default_rng(0)
imgs = np.random.default_rng(1).integers(0, 256, (4, 50, 60, 3), dtype=np.uint8)
batch = collate([aug(im, rng) for im in imgs], mask_generator=MaskingGenerator((5, 5), max_num_patches=12),
                rng=random.Random(0), groups=2)  # one group per device
mesh = make_mesh(get_config().mesh)
out = jax.jit(D.augment_batch)(_put_batch(batch, mesh))
ref = jax.jit(D.augment_batch)({k: jnp.asarray(v) for k, v in batch.items()})
print(json.dumps({
    "n_devices": len(jax.devices()),
    "split": {k: len({s.index[0].start for s in out[k].addressable_shards}) for k in ("collated_global_crops", "collated_local_crops")},
    "max_diff": {k: float(np.max(np.abs(np.asarray(out[k], np.float32) - np.asarray(ref[k], np.float32)))) for k in ref}}))
"""


def test_augment_batch_follows_the_batch_sharding():
    """2 CPU devices: the trainer's device batch -> jitted augment_batch stays split over 'data', same values."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", _SHARDED_CHECK], env=env, cwd=root, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["n_devices"] == 2 and res["split"] == {"collated_global_crops": 2, "collated_local_crops": 2}, res
    assert set(res["max_diff"]) == {"collated_global_crops", "collated_local_crops", "collated_masks",
                                    "mask_indices_list", "masks_weight", "n_masked_patches"}, res
    assert all(v == 0 for v in res["max_diff"].values()), res
