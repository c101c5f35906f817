"""A converted checkpoint (tiny random-init official DINOv2 model -> .pth -> `python -m dinov2_jax.convert`)
gives in bf16 inference the same top-1 nearest neighbours as in fp32 on a small image set.

Fixture: tests/eval/fixtures/tiny_official_vit.npz (see make_tiny_official_vit.py next to it)."""
import os

import numpy as np
import pytest

from dinov2_jax import hub
from dinov2_jax.eval import knn
from dinov2_jax.models.layers.norm import l2_normalize

torch = pytest.importorskip("torch")
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tiny_official_vit.npz")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from dinov2_jax import convert

    z = np.load(FIXTURE)
    tmp = tmp_path_factory.mktemp("bf16")
    pth = tmp / "tiny.pth"
    torch.save({k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}, pth)
    # head count is not in the state dict (the converter assumes 64 per head, as the official presets)
    assert convert.main([str(pth), str(tmp / "conv"), "--set", "num_heads=2"]) == 0
    x = ((z["images"] / 255.0 - MEAN) / STD).astype(np.float32)
    return str(tmp / "conv"), x, z["cls"]


def nearest_neighbours(feats):
    """Top-1 neighbour of every image among the others, by the k-NN eval's cosine similarity."""
    f = np.asarray(l2_normalize(feats), np.float64)
    sims = f @ f.T
    np.fill_diagonal(sims, -np.inf)
    return np.argmax(sims, axis=1), np.sort(sims, axis=1)


def test_bf16_same_nearest_neighbours_as_fp32(converted):
    conv_dir, x, official_cls = converted
    f32 = np.asarray(hub.load(None, conv_dir, dtype="float32")(x))
    bf16_model = hub.load(None, conv_dir, dtype="bfloat16")
    f16 = np.asarray(bf16_model(x), np.float32)
    # the converted fp32 model reproduces the official PyTorch features
    np.testing.assert_allclose(f32, official_cls, atol=1e-5)
    # bf16 really ran in bf16 (else this test would prove nothing) yet stays close
    assert 1e-4 < np.abs(f16 - f32).max() < 0.2
    nn32, sorted32 = nearest_neighbours(f32)
    nn16, _ = nearest_neighbours(f16)
    # the set is not degenerate: each image's best match clearly beats its second best somewhere
    assert np.median(sorted32[:, -1] - sorted32[:, -2]) > 1e-3
    # same neighbour wherever fp32's best match beats its second by more than bf16 can resolve (a few
    # images here are near ties, 1e-4 apart in cosine, between two variants of the same pattern)
    clear = sorted32[:, -1] - sorted32[:, -2] > 1e-3
    assert clear.sum() >= len(clear) // 2
    np.testing.assert_array_equal(nn16[clear], nn32[clear])
    np.testing.assert_array_equal(nn16 // 4, nn32 // 4)  # and always a variant of the same pattern
    # and neighbours are the images' own group (4 noisy variants of one pattern)
    assert np.mean(nn32 // 4 == np.arange(len(nn32)) // 4) > 0.9
    # full k-NN eval on (first 2 of each group -> train, rest -> val) agrees between precisions too
    g = np.arange(len(x)) // 4
    tr, va = np.arange(len(x)) % 4 < 2, np.arange(len(x)) % 4 >= 2
    r32 = knn.knn_classify(f32[tr], g[tr], f32[va], g[va], nb_knn=[1, 3])
    r16 = knn.knn_classify(f16[tr], g[tr], f16[va], g[va], nb_knn=[1, 3])
    assert r32 == r16
