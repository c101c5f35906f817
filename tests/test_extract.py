"""Feature extraction CLI on a few generated images with a tiny model: shapes, names, values, PCA png."""
import numpy as np
import pytest
from PIL import Image

from dinov2_jax import extract, hub
from dinov2_jax.data.augmentations import eval_transform
from helpers import tiny_vit, write_object_images  # tests/ is on sys.path


def test_extract_cli_outputs_and_pca(tmp_path, monkeypatch):
    names = write_object_images(tmp_path / "imgs")
    model = tiny_vit(img_size=42, num_register_tokens=2)
    monkeypatch.setattr(hub, "load_for_eval", lambda *a, **k: model)
    out, png = tmp_path / "o" / "feats.npz", tmp_path / "pca.png"
    assert extract.main(["--images", str(tmp_path / "imgs"), "--out", str(out), "--batch-size", "2",
                         "--image-size", "42", "--pca-png", str(png)]) == 0
    z = np.load(out)
    assert sorted(z.files) == ["cls", "files", "patch_tokens", "register_tokens"]
    assert list(z["files"]) == names
    assert z["cls"].shape == (5, 32) and z["patch_tokens"].shape == (5, 3, 3, 32)
    assert z["register_tokens"].shape == (5, 2, 32)
    # values equal a direct forward of the official eval preprocessing (resize 48 = 42*256/224, crop 42)
    for i, name in enumerate(names):
        x = eval_transform(Image.open(tmp_path / "imgs" / name), resize_size=48, crop_size=42)[None]
        ref = model.forward_features(x)
        np.testing.assert_allclose(z["cls"][i], np.asarray(ref["x_norm_clstoken"][0]), atol=1e-5)
        np.testing.assert_allclose(z["patch_tokens"][i].reshape(9, 32), np.asarray(ref["x_norm_patchtokens"][0]),
                                   atol=1e-5)
    im = np.asarray(Image.open(png))
    assert im.shape[0] > 5 * 42 and im.shape[1] > 2 * 42
    assert len(np.unique(im.reshape(-1, 3), axis=0)) > 10  # not blank


def test_extract_without_patch_tokens_and_bad_size(tmp_path):
    write_object_images(tmp_path / "imgs", n=3)
    res = extract.extract_folder(tiny_vit(img_size=42), str(tmp_path / "imgs"), batch_size=8, image_size=28,
                                 progress=False)
    assert sorted(res) == ["cls", "files"] and res["cls"].shape == (3, 32)
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        extract.extract_folder(tiny_vit(img_size=42, num_register_tokens=2), str(tmp_path / "imgs"), image_size=30, progress=False)


def test_extract_cli_with_converted_weights(tmp_path):
    """No monkeypatching: official-layout .pth -> convert CLI -> extract CLI --weights DIR."""
    torch = pytest.importorskip("torch")
    import os

    from dinov2_jax import convert

    z = np.load(os.path.join(os.path.dirname(__file__), "eval", "fixtures", "tiny_official_vit.npz"))
    torch.save({k[3:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("sd/")}, tmp_path / "t.pth")
    assert convert.main([str(tmp_path / "t.pth"), str(tmp_path / "conv"), "--set", "num_heads=2"]) == 0
    write_object_images(tmp_path / "imgs", n=3)
    out = tmp_path / "f.npz"
    assert extract.main(["--weights", str(tmp_path / "conv"), "--images", str(tmp_path / "imgs"),
                         "--out", str(out), "--image-size", "56", "--patch-tokens"]) == 0
    f = np.load(out)
    assert f["cls"].shape == (3, 32) and f["patch_tokens"].shape == (3, 4, 4, 32)
    assert f["register_tokens"].shape == (3, 4, 32)
    with pytest.raises(SystemExit, match="--weights is required"):
        extract.main(["--images", str(tmp_path / "imgs"), "--out", str(out)])
