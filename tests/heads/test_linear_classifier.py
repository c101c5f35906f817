"""Official linear classifier heads: same logits as `dinov2/hub/classifiers.py` (golden fixture made with
the official code, see fixtures/make_classifier_fixture.py), the .pth path, names, top-5 CLI output."""
import importlib.util
import os

import numpy as np
import pytest
from flax import nnx

from dinov2_jax import convert, hub_classifiers
from dinov2_jax.models.heads import linear_classifier as lc
from dinov2_jax.models.vision_transformer import DinoVisionTransformer

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
_spec = importlib.util.spec_from_file_location("make_clf", os.path.join(FIX, "make_classifier_fixture.py"))
make_clf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_clf)


@pytest.fixture(scope="module")
def case():
    d = np.load(os.path.join(FIX, "linear_classifier_official.npz"))
    sd = {k[3:]: d[k] for k in d.files if k.startswith("sd/")}
    backbone = DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=32, depth=5, num_heads=2, init_values=1.0,
                                     num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0,
                                     rngs=nnx.Rngs(1))
    convert.load_torch_state_dict(backbone, sd)
    return backbone, {k: d[k] for k in d.files if not k.startswith("sd/")}


@pytest.mark.parametrize("layers", [1, 4])
def test_logits_match_official(case, layers):
    backbone, d = case
    w, b = make_clf.head_weights(layers)
    head = lc.head_from_state_dict({"weight": w, "bias": b}, embed_dim=32)
    assert head.layers == layers
    clf = lc.LinearClassifier(backbone, head)
    np.testing.assert_allclose(np.asarray(clf(d["x"])), d[f"logits{layers}"], rtol=1e-5, atol=2e-5)
    # non-square input goes through the pos-embed interpolation
    np.testing.assert_allclose(np.asarray(clf(d["x2"])), d[f"logits{layers}_x2"], rtol=1e-5, atol=2e-5)
    # state dict round trip is exact
    back = lc.head_to_state_dict(head)
    np.testing.assert_array_equal(back["weight"], w)
    np.testing.assert_array_equal(back["bias"], b)


def test_pth_head_file_roundtrip(case, tmp_path):
    torch = pytest.importorskip("torch")
    backbone, d = case
    w, b = make_clf.head_weights(4)
    lin = torch.nn.Linear(5 * 32, 1000)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    path = str(tmp_path / "dinov2_vits14_reg4_linear4_head.pth")
    torch.save(lin.state_dict(), path)  # exactly what the official hub downloads
    head = lc.load_head_file(path, 32)
    clf = lc.LinearClassifier(backbone, head)
    np.testing.assert_allclose(np.asarray(clf(d["x"])), d["logits4"], rtol=1e-5, atol=2e-5)


def test_bad_heads_are_refused():
    w, b = make_clf.head_weights(4)
    with pytest.raises(ValueError, match="2x or 5x"):
        lc.head_from_state_dict({"weight": w, "bias": b}, embed_dim=48)
    with pytest.raises(ValueError, match="exactly the keys"):
        lc.head_from_state_dict({"weight": w, "bias": b, "extra": b}, embed_dim=32)
    with pytest.raises(ValueError, match="1 or 4 layers"):
        lc.LinearClassifierHead(32, 2, rngs=nnx.Rngs(0))
    with pytest.raises(FileNotFoundError, match="linear4_head.pth"):
        lc.load_head_file("/nonexistent/head.pth", 32)


def test_names_match_official_hub():
    assert len(hub_classifiers.CLASSIFIER_NAMES) == 8
    assert hub_classifiers.head_file_name("dinov2_vitg14_reg_lc", 4) == "dinov2_vitg14_reg4_linear4_head.pth"
    assert hub_classifiers.head_file_name("dinov2_vits14_lc", 1) == "dinov2_vits14_linear_head.pth"
    import sys

    official = os.environ.get("DINOV2_OFFICIAL_PATH", "/work/ref/dinov2")
    if os.path.isdir(os.path.join(official, "dinov2")):
        sys.path.insert(0, official)
        from dinov2.hub import classifiers

        for name in hub_classifiers.CLASSIFIER_NAMES:
            assert callable(getattr(classifiers, name))


def test_imagenet_names_and_top5():
    names = lc.imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"
    logits = np.zeros((2, 1000), np.float32)
    logits[0, [7, 3, 500, 2, 9]] = [5, 4, 3, 2, 1]
    logits[1, 1] = 10
    idx, p = lc.top_k(logits, 5)
    assert idx[0].tolist() == [7, 3, 500, 2, 9] and idx[1, 0] == 1
    np.testing.assert_allclose(p[1, 0], np.exp(10) / (np.exp(10) + 999), rtol=1e-6)
    text = hub_classifiers.format_top5(["a.png", "b.png"], logits, names)
    assert text.splitlines()[1].startswith("b.png: goldfish (")


def test_extract_cli_prints_top5(tmp_path, capsys):
    from PIL import Image

    from dinov2_jax import extract, hub

    torch = pytest.importorskip("torch")
    model = hub.create_model(dict(img_size=28, patch_size=14, embed_dim=32, depth=4, num_heads=2, init_values=1.0))
    conv_dir = str(tmp_path / "conv")
    convert.save_converted(model, conv_dir)
    lin = torch.nn.Linear(2 * 32, 1000)
    torch.save(lin.state_dict(), str(tmp_path / "head.pth"))
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(img_dir / f"{i}.png")
    out = str(tmp_path / "f.npz")
    assert extract.main(["--weights", conv_dir, "--images", str(img_dir), "--out", out, "--image-size", "28",
                         "--classifier", str(tmp_path / "head.pth"), "--batch-size", "2", "--patch-tokens"]) == 0
    printed = capsys.readouterr().out.splitlines()
    d = np.load(out)
    assert d["logits"].shape == (3, 1000)
    # the printed top-1 is the argmax of the saved logits, by name
    names = lc.imagenet_class_names()
    for line, row in zip([p for p in printed if p.endswith(")")], d["logits"]):
        assert line.split(": ", 1)[1].startswith(names[int(np.argmax(row))] + " (")
    # logits = head(cls ++ mean of patch tokens) of the saved features (a layers=1 head)
    feats = np.concatenate([d["cls"], d["patch_tokens"].reshape(3, -1, 32).mean(1)], 1)
    expect = feats @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()
    np.testing.assert_allclose(d["logits"], expect, rtol=1e-5, atol=1e-5)


def test_load_classifier_hub_name(tmp_path):
    """Hub entry point: ViT-S/14 backbone (random here) + a 4-layer head file; layers read from the file."""
    torch = pytest.importorskip("torch")
    torch.save(torch.nn.Linear(5 * 384, 1000).state_dict(), str(tmp_path / "h4.pth"))
    clf = hub_classifiers.load_classifier("dinov2_vits14_lc", None, head=str(tmp_path / "h4.pth"))
    assert clf.head.layers == 4 and clf.backbone.embed_dim == 384
    assert clf(np.zeros((1, 28, 28, 3), np.float32)).shape == (1, 1000)
    with pytest.raises(ValueError, match="1-layer"):
        torch.save(torch.nn.Linear(2 * 384, 1000).state_dict(), str(tmp_path / "h1.pth"))
        hub_classifiers.load_classifier("dinov2_vits14_lc", None, head=str(tmp_path / "h1.pth"), layers=4)
    with pytest.raises(ValueError, match="unknown classifier"):
        hub_classifiers.load_classifier("dinov2_vits14")
