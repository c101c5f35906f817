"""`python -m dinov2_jax.extract` on a folder with undecodable images: they are skipped and counted."""
import numpy as np
from helpers import tiny_vit, write_object_images

from dinov2_jax import extract, hub


def test_undecodable_images_are_skipped_and_listed(tmp_path, monkeypatch, caplog):
    names = write_object_images(tmp_path / "imgs", n=5)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "imgs" / "sub" / "empty.png").write_bytes(b"")
    model = tiny_vit(img_size=42, num_register_tokens=2)
    monkeypatch.setattr(hub, "load_for_eval", lambda *a, **k: model)
    out = tmp_path / "f.npz"
    assert extract.main(["--images", str(tmp_path / "imgs"), "--out", str(out), "--image-size", "28",
                         "--batch-size", "2"]) == 0
    z = np.load(out)
    assert list(z["files"]) == names and z["cls"].shape == (5, 32)
    assert sorted(z["skipped_files"]) == ["broken.jpg", "sub/empty.png"]
    assert "2 of 7 images could not be decoded" in caplog.text
    # the same features as the same images without the broken files (write_object_images is seeded)
    write_object_images(tmp_path / "clean", n=5)
    clean = extract.extract_folder(model, str(tmp_path / "clean"), batch_size=2, image_size=28, progress=False)
    assert "skipped_files" not in clean
    np.testing.assert_allclose(z["cls"], clean["cls"], rtol=1e-6, atol=1e-6)
