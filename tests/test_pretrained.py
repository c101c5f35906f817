"""from_pretrained: Hugging Face folders (vs transformers itself), timm state dicts, official .pth, Orbax training
checkpoints; export to HF (read back by transformers) and .pth; strict loading; architecture checks;
offline errors; the README snippet."""
import json
import logging
import os

import jax.numpy as jnp
import numpy as np
import pytest

from dinov2_jax import convert
from dinov2_jax.models.config import ViTConfig
from dinov2_jax.pretrained import (WeightsError, export_hf, export_pth, from_pretrained, official_url,
                                   torch_hub_dir)
from dinov2_jax.weights.layouts import LayoutError
from dinov2_jax.weights.pth import read_pth, write_pth

torch = pytest.importorskip("torch")
FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "fixtures")


def _fixture_sd(name):
    d = np.load(os.path.join(FIX, f"backbone_{name}.npz"))
    return {k[3:]: d[k].astype(np.float32) for k in d.files if k.startswith("sd/")}, json.loads(str(d["arch_json"]))


def _tokens(model, x):
    """[B, 1+R+N, D] final-norm tokens (transformers' last_hidden_state order: cls, registers, patches)."""
    f = model.forward_features(jnp.asarray(x))
    return np.concatenate([np.asarray(f["x_norm_clstoken"])[:, None], np.asarray(f["x_norm_regtokens"]),
                           np.asarray(f["x_norm_patchtokens"])], 1)


def _perturb(module, seed=0):
    """Random-init HF / timm modules have constant LayerScale / norms: add noise so every mapping matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return module.eval()


def _hf(registers: bool, swiglu: bool = False):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
              use_swiglu_ffn=swiglu)
    if registers:
        return _perturb(Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**kw)))
    return _perturb(Dinov2Model(Dinov2Config(**kw)))


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("registers,swiglu", [(False, False), (True, True)])
def test_hf_folder_matches_transformers(tmp_path, registers, swiglu):
    hf = _hf(registers, swiglu)
    hf.save_pretrained(tmp_path)
    m = from_pretrained(str(tmp_path))
    assert m.format == "transformers" and m.config.num_register_tokens == (4 if registers else 0)
    assert m.interpolation == ("official=transformers" if registers else "transformers")
    rng = np.random.default_rng(0)
    for size in (28, 42):  # native, and a size where the position embedding is resampled
        x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
        with torch.no_grad():
            ref = hf(pixel_values=_nchw(x))
        np.testing.assert_allclose(_tokens(m.model, x), ref.last_hidden_state.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.asarray(m.features(x)["cls"]), ref.pooler_output.numpy(), atol=1e-5, rtol=0)
    if not registers:  # the official resampling is also available, and differs only off the native size
        off = from_pretrained(str(tmp_path), interpolation="official")
        assert off.interpolation == "official" and off.config.interpolate_offset == 0.1
        x28, x42 = (rng.normal(size=(1, s, s, 3)).astype(np.float32) for s in (28, 42))
        np.testing.assert_array_equal(_tokens(off.model, x28), _tokens(m.model, x28))
        assert np.abs(_tokens(off.model, x42) - _tokens(m.model, x42)).max() > 1e-3


@pytest.mark.parametrize("name", ["vits14_reg4", "swiglu_nobias", "vits14"])
def test_export_hf_loads_in_transformers(tmp_path, name, caplog):
    from transformers import AutoModel

    sd, kw = _fixture_sd(name)
    model, _, _ = convert.convert_torch_checkpoint(sd, num_heads=kw["num_heads"])
    with caplog.at_level(logging.WARNING, logger="dinov2_jax.pretrained"):
        export_hf(model, str(tmp_path / "hf"))
    if name == "vits14":  # non-register model with the official offset: transformers resamples differently
        assert "resamples the position embedding by target size" in caplog.text
    hf = AutoModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert type(hf).__name__ == ("Dinov2WithRegistersModel" if name == "vits14_reg4" else "Dinov2Model")
    s = kw["img_size"]
    x = np.random.default_rng(1).normal(size=(2, s, s, 3)).astype(np.float32)
    with torch.no_grad():
        ref = hf(pixel_values=_nchw(x))
    np.testing.assert_allclose(_tokens(model, x), ref.last_hidden_state.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(x))), ref.pooler_output.numpy(), atol=1e-5, rtol=0)
    # and our reader gives back the same function
    back = from_pretrained(str(tmp_path / "hf"), interpolation="official")
    np.testing.assert_allclose(_tokens(back.model, x), _tokens(model, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch,dim", [("vit_small_patch14_dinov2", 32), ("vit_small_patch14_reg4_dinov2", 32),
                                      ("vit_giant_patch14_dinov2", 48)])
def test_timm_state_dict_matches_timm(tmp_path, arch, dim):
    import timm

    tm = _perturb(timm.create_model(arch, pretrained=False, img_size=28, embed_dim=dim, depth=2, num_heads=2))
    path = str(tmp_path / "timm.pth")
    torch.save(tm.state_dict(), path)
    m = from_pretrained(path, num_heads=2)
    assert m.format == "timm"
    x = np.random.default_rng(2).normal(size=(2, 28, 28, 3)).astype(np.float32)
    with torch.no_grad():
        ref = tm.forward_features(_nchw(x)).numpy()
    np.testing.assert_allclose(_tokens(m.model, x), ref, atol=1e-5, rtol=0)


def test_pth_export_roundtrip_and_teacher_layout(tmp_path):
    sd, kw = _fixture_sd("vits14_reg4")
    model, _, _ = convert.convert_torch_checkpoint(sd, num_heads=kw["num_heads"])
    p = str(tmp_path / "b.pth")
    export_pth(model, p, block_chunks=2)
    got = torch.load(p, map_location="cpu", weights_only=True)
    assert set(got) == set(sd) and all(np.array_equal(got[k].numpy(), sd[k]) for k in sd)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_pth(model, p)
    with pytest.raises(WeightsError, match="backbone only"):
        export_pth(model, str(tmp_path / "t.pth"), teacher=True)
    back = from_pretrained(p, num_heads=kw["num_heads"])
    x = np.random.default_rng(3).normal(size=(1, 56, 42, 3)).astype(np.float32)
    np.testing.assert_array_equal(_tokens(back.model, x), _tokens(model, x))


def _tiny_pth(tmp_path, mutate=None, name="vits14"):
    sd, kw = _fixture_sd(name)
    if mutate:
        mutate(sd)
    path = str(tmp_path / f"{name}.pth")
    write_pth(sd, path, overwrite=True)
    return path, kw


def test_strict_missing_unexpected_misshaped_are_listed(tmp_path):
    def mutate(sd):
        del sd["blocks.1.ls1.gamma"]
        sd["blocks.0.attn.extra"] = np.zeros(3, np.float32)
        sd["norm.weight"] = np.zeros(7, np.float32)

    path, kw = _tiny_pth(tmp_path, mutate)
    with pytest.raises(convert.ConversionError) as e:
        from_pretrained(path, num_heads=2)
    msg = str(e.value)
    assert "missing (1): ['blocks.1.ls1.gamma']" in msg and "unexpected (1): ['blocks.0.attn.extra']" in msg
    assert "mis-shaped (1): ['norm.weight" in msg
    # HF folders too: a deleted and an added key are both listed
    hf = _hf(False)
    hf.save_pretrained(tmp_path / "hf")
    from safetensors.numpy import load_file, save_file

    st = load_file(str(tmp_path / "hf" / "model.safetensors"))
    del st["encoder.layer.1.norm2.bias"]
    st["encoder.layer.0.foo"] = np.zeros(2, np.float32)
    save_file(st, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(LayoutError, match=r"unexpected \(1\): \['encoder.layer.0.foo'\]"):
        from_pretrained(str(tmp_path / "hf"))
    del st["encoder.layer.0.foo"]
    save_file(st, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(convert.ConversionError, match=r"missing \(1\): \['blocks.1.norm2.bias'\]"):
        from_pretrained(str(tmp_path / "hf"))


def test_named_architecture_mismatch_is_an_error(tmp_path, caplog):
    want = ViTConfig.from_kwargs({**ViTConfig().kwargs(), **_fixture_sd("vits14")[1]})
    # the last block is missing: inferred depth 1, but the caller asked for depth 2
    path, _ = _tiny_pth(tmp_path, lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("blocks.1.")])
    with pytest.raises(WeightsError, match="depth: expected 2, weights have 1"):
        from_pretrained(path, arch=want)
    # no LayerScale in the file, the caller asked for it
    path, _ = _tiny_pth(tmp_path, lambda sd: [sd.pop(k) for k in list(sd) if ".ls" in k])
    with pytest.raises(WeightsError, match="init_values: expected 1e-05, weights have None"):
        from_pretrained(path, arch=want)
    # without a named architecture the inference is logged
    path, _ = _tiny_pth(tmp_path)
    with caplog.at_level(logging.INFO, logger="dinov2_jax.pretrained"):
        m = from_pretrained(path, arch=want)
        assert m.config == want
        from_pretrained(path, num_heads=2)
    assert "inferred from its state dict" in caplog.text and '"depth": 2' in caplog.text
    # a hub name that does not fit names the model the file holds (here: none)
    with pytest.raises(WeightsError, match="do not match dinov2_vits14: .*embed_dim: expected 384, weights have 32"):
        from_pretrained(path, arch="dinov2_vits14")


def test_hub_name_offline_says_which_file_to_put_where(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        from_pretrained("dinov2_vits14_reg", download=False, cache_dir=str(tmp_path))
    msg = str(e.value)
    assert official_url("dinov2_vits14_reg") in msg and "dinov2_vits14_reg4_pretrain.pth" in msg
    assert str(tmp_path / "dinov2_vits14_reg4_pretrain.pth") in msg and "facebook/dinov2-with-registers-small" in msg

    import urllib.error
    import urllib.request

    def no_network(*a, **k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.delenv("DINOV2_JAX_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(FileNotFoundError, match="download failed .*no route to host.* Put the official file"):
        from_pretrained("dinov2_vitb14", cache_dir=str(tmp_path))
    # online: the file is fetched into the cache once, then read from there
    sd, _ = _fixture_sd("vits14")
    write_pth(sd, str(tmp_path / "served.pth"))
    fetched = []

    def serve(url, timeout=None):
        fetched.append(url)
        return open(tmp_path / "served.pth", "rb")

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    from dinov2_jax.pretrained import resolve_hub_name

    got = resolve_hub_name("dinov2_vitl14", cache_dir=str(tmp_path / "cache"))
    assert fetched == [official_url("dinov2_vitl14")] and got == str(tmp_path / "cache" / "dinov2_vitl14_pretrain.pth")
    assert resolve_hub_name("dinov2_vitl14", cache_dir=str(tmp_path / "cache")) == got and len(fetched) == 1
    assert read_pth(got).keys() == sd.keys()
    monkeypatch.setenv("DINOV2_JAX_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="offline mode"):
        from_pretrained("dinov2_vitb14")
    assert torch_hub_dir().endswith(os.path.join("hub", "checkpoints"))
    # HF repo ids: the error says where to get the two files
    with pytest.raises(FileNotFoundError, match="https://huggingface.co/facebook/dinov2-small"):
        from_pretrained("facebook/dinov2-small", download=False, cache_dir=str(tmp_path / "hf"))


def test_orbax_training_checkpoint(tmp_path):
    from flax import nnx

    from dinov2_jax.train.checkpoint import Checkpointer

    sd, kw = _fixture_sd("vits14_reg4")
    model, _, _ = convert.convert_torch_checkpoint(sd, num_heads=kw["num_heads"])
    params = nnx.state(model, nnx.Param).to_pure_dict()
    ck = Checkpointer(str(tmp_path / "run" / "ckpt"), async_save=False)
    cfg = {"student": {"arch": "vit_small", "num_heads": 2, "interpolate_antialias": True, "interpolate_offset": 0.0}}
    ck.save(5, {"teacher": {"backbone": params}, "student": {"backbone": params}}, {}, json.dumps(cfg))
    ck.close()
    for where in ("run", "run/ckpt", "run/ckpt/5"):
        m = from_pretrained(str(tmp_path / where))
        assert m.format == "orbax" and m.config.num_heads == 2 and m.config.num_register_tokens == 4
    x = np.random.default_rng(4).normal(size=(1, 28, 42, 3)).astype(np.float32)
    np.testing.assert_array_equal(_tokens(m.model, x), _tokens(model, x))


def test_readme_five_lines_pth_and_hf_folder(tmp_path, monkeypatch):
    from PIL import Image

    sd, kw = _fixture_sd("vits14_reg4")
    write_pth(sd, str(tmp_path / "w.pth"))
    _hf(True).save_pretrained(tmp_path / "hf")
    img = (np.random.default_rng(5).random((60, 80, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    for src, heads in (("w.pth", 2), ("hf", None)):
        # --- the README snippet ---
        from PIL import Image

        from dinov2_jax import from_pretrained as fp
        m = fp(src, num_heads=heads) if heads else fp(src)
        x = m.preprocess(Image.open("cat.jpg"))[None]
        feats = m.features(x)
        # ---
        assert x.shape == (1, 224, 224, 3) and feats["cls"].shape == (1, 32)
        assert feats["patch_tokens"].shape == (1, 256, 32) and feats["register_tokens"].shape == (1, 4, 32)
        from dinov2_jax.data.augmentations import eval_transform

        ref = eval_transform(Image.open("cat.jpg").convert("RGB"), resize_size=256, crop_size=224)
        np.testing.assert_array_equal(x[0], ref)
        np.testing.assert_array_equal(m.preprocess("cat.jpg"), ref)
        np.testing.assert_allclose(np.asarray(feats["cls"]), np.asarray(m.model(jnp.asarray(x))), rtol=1e-5, atol=1e-5)  # jit vs eager: fusion order


def test_distillation_teacher_pth_is_read_weights_only(tmp_path):
    import ml_collections

    from dinov2_jax.train.trainer import load_pretrained_teacher
    from dinov2_jax.weights.pth import WeightsFileError

    d = np.load(os.path.join(FIX, "dino_head.npz"))
    hsd = {k[3:]: d[k].astype(np.float32) for k in d.files if k.startswith("sd/")}
    sd, kw = _fixture_sd("vits14")
    teacher = {**{f"backbone.{k}": v for k, v in sd.items()}, **{f"dino_head.{k}": v for k, v in hsd.items()}}
    path = str(tmp_path / "teacher_checkpoint.pth")
    torch.save({"teacher": {k: torch.from_numpy(v) for k, v in teacher.items()}}, path)
    cfg = ml_collections.ConfigDict({"teacher": {"pretrained_weights": path, "arch": "vit_small"},
                                     "student": {"arch": "vit_small"}})
    model, heads, _ = convert.convert_torch_checkpoint(read_pth(path))
    from flax import nnx

    like = {"backbone": nnx.state(model, nnx.Param).to_pure_dict(),
            "dino_head": nnx.state(heads["dino_head"], nnx.Param).to_pure_dict()}
    got = load_pretrained_teacher(cfg, like)
    assert np.array_equal(np.asarray(got["backbone"]["pos_embed"]), sd["pos_embed"])

    class Evil:  # a pickle that would run a command if unpickled with weights_only=False
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"teacher": {"backbone.cls_token": torch.zeros(1), "x": Evil()}}, path)
    with pytest.raises(WeightsFileError, match="refusing to load"):
        load_pretrained_teacher(cfg, like)
    assert not (tmp_path / "pwned").exists()
