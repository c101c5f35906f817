"""Converter: hub key layouts (all 8 hub backbones), arch inference, strict errors, torch->JAX->torch
bit-exact round trips (incl. block_chunks and teacher checkpoints), the CLI and Orbax save/load."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dinov2_jax.convert import (ConversionError, chunk_keys, convert_torch_checkpoint, infer_arch,
                                infer_head_arch, load_converted, load_torch_state_dict, main,
                                params_to_torch_state_dict, save_converted, split_checkpoint,
                                torch_state_dict_shapes, unchunk_keys)
from dinov2_jax.models.dino_head import DINOHead
from dinov2_jax.models.vision_transformer import DinoVisionTransformer

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "fixtures")


def _case(name):
    d = np.load(os.path.join(FIX, f"backbone_{name}.npz"))
    sd = {k[3:]: d[k].astype(np.float32) for k in d.files if k.startswith("sd/")}
    out = {k[4:]: d[k] for k in d.files if k.startswith("out/")}
    masks = d["masks"] if "masks" in d.files else None
    return sd, d["x"].astype(np.float32) / 8.0, masks, out, json.loads(str(d["arch_json"])), int(d["block_chunks"])


def _head():
    d = np.load(os.path.join(FIX, "dino_head.npz"))
    return {k[3:]: d[k].astype(np.float32) for k in d.files if k.startswith("sd/")}, d["x"], d["y"]


def _fake(shapes):
    """Shape-only state dict (zero-cost broadcast views)."""
    return {k: np.broadcast_to(np.zeros((), np.float32), tuple(s)) for k, s in shapes.items()}


with open(os.path.join(FIX, "hub_state_dict_shapes.json")) as _f:
    HUB = json.load(_f)


@pytest.mark.parametrize("name", sorted(HUB))
def test_hub_layout_inferred_and_reproduced_exactly(name):
    shapes = {k: tuple(v) for k, v in HUB[name].items()}
    arch = infer_arch(_fake(shapes))
    size = name.split("_")[1][:4]
    dim, depth = {"vits": (384, 12), "vitb": (768, 12), "vitl": (1024, 24), "vitg": (1536, 40)}[size]
    reg = name.endswith("_reg")
    assert (arch["embed_dim"], arch["depth"], arch["num_heads"], arch["patch_size"], arch["img_size"]) == \
        (dim, depth, dim // 64, 14, 518)
    assert arch["num_register_tokens"] == (4 if reg else 0)
    assert (arch["interpolate_antialias"], arch["interpolate_offset"]) == ((True, 0.0) if reg else (False, 0.1))
    assert arch["ffn_layer"] == ("swiglufused" if size == "vitg" else "mlp") and arch["mlp_ratio"] == 4.0
    assert arch["init_values"] == 1.0
    model = nnx.eval_shape(lambda: DinoVisionTransformer(**arch, rngs=nnx.Rngs(0)))
    # exactly the official key set and shapes -> the official module loads it with strict=True
    assert torch_state_dict_shapes(model) == shapes
    assert len(shapes) == 5 + 14 * depth + 2 + int(reg)  # official key count: 5 embeddings + 14 per block + final norm (+ registers)


def test_chunk_keys_roundtrip_and_official_example():
    shapes = {k: tuple(v) for k, v in HUB["dinov2_vitl14"].items()}
    chunked = chunk_keys(shapes, 24, 4)
    assert "blocks.1.7.attn.qkv.weight" in chunked  # official BlockChunk naming: ViT-L, 4 chunks of 6, block 7 in chunk 1
    assert unchunk_keys(chunked) == shapes


@pytest.mark.parametrize("name", ["vits14", "vits14_reg4", "swiglu_nobias"])
def test_official_roundtrip_bit_exact(name):
    sd, x, masks, out, kw, chunks = _case(name)
    model, heads, arch = convert_torch_checkpoint(sd, num_heads=kw["num_heads"],
                                                  init_values=kw.get("init_values"))
    assert heads == {}
    for k in ("embed_dim", "depth", "patch_size", "img_size", "qkv_bias", "proj_bias", "ffn_bias"):
        assert arch[k] == DinoVisionTransformer(**kw, rngs=nnx.Rngs(0)).arch[k], k
    back = params_to_torch_state_dict(model, block_chunks=chunks)
    assert set(back) == set(sd)
    for k in sd:
        assert back[k].shape == sd[k].shape and np.array_equal(back[k], sd[k]), k
    res = model.forward_features(jnp.asarray(x), None if masks is None else jnp.asarray(masks))
    np.testing.assert_allclose(np.asarray(res["x_norm_patchtokens"]), out["x_norm_patchtokens"], atol=1e-5, rtol=0)


def test_strict_errors_list_every_problem():
    sd, *_ , kw, _ = _case("vits14")
    model = DinoVisionTransformer(**kw, rngs=nnx.Rngs(0))
    bad = dict(sd)
    del bad["mask_token"]
    bad["blocks.0.attn.extra"] = np.zeros(3)
    bad["norm.weight"] = np.zeros(7, np.float32)
    with pytest.raises(ConversionError) as e:
        load_torch_state_dict(model, bad)
    msg = str(e.value)
    assert "missing (1): ['mask_token']" in msg and "blocks.0.attn.extra" in msg and "norm.weight" in msg
    with pytest.raises(ConversionError, match="not a square grid|missing"):
        infer_arch({"cls_token": np.zeros((1, 1, 8)), "pos_embed": np.zeros((1, 7, 8)),
                    "patch_embed.proj.weight": np.zeros((8, 3, 2, 2))})
    with pytest.raises(ValueError, match="Unknown architecture overrides"):
        infer_arch(sd, heads=3)
    with pytest.raises(ConversionError, match="FSDP"):
        split_checkpoint({"model": {"backbone._flat_param": np.zeros(3)}})


def test_teacher_checkpoint_cli_roundtrip(tmp_path):
    torch = pytest.importorskip("torch")
    sd, x, masks, out, kw, chunks = _case("vits14_reg4")
    hsd, hx, hy = _head()
    assert chunks == 2 and any(k.startswith("blocks.1.1.") for k in sd)
    # hidden / bottleneck of the fixture head differ from the backbone width: use it as both heads
    teacher = {**{f"backbone.{k}": v for k, v in sd.items()}, **{f"dino_head.{k}": v for k, v in hsd.items()},
               **{f"ibot_head.{k}": v for k, v in hsd.items()}}
    src = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": {k: torch.from_numpy(v) for k, v in teacher.items()}}, src)
    outdir = tmp_path / "conv"
    assert main([str(src), str(outdir), "--set", f"num_heads={kw['num_heads']}"]) == 0
    assert json.loads((outdir / "arch.json").read_text())["num_register_tokens"] == 4
    assert set(json.loads((outdir / "heads.json").read_text())) == {"dino_head", "ibot_head"}

    model = load_converted(str(outdir))
    res = model.forward_features(jnp.asarray(x), jnp.asarray(masks))
    for k in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens"):
        np.testing.assert_allclose(np.asarray(res[k]), out[k], atol=1e-5, rtol=0)
    model2, heads = load_converted(str(outdir), with_heads=True, dtype="bfloat16")
    assert model2.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(heads["dino_head"](jnp.asarray(hx))), hy, atol=1e-5, rtol=0)

    back = tmp_path / "back.pth"
    assert main([str(outdir), str(back), "--to-pth", "--teacher", "--block-chunks", "2"]) == 0
    obj = torch.load(back, map_location="cpu", weights_only=True)
    assert set(obj["teacher"]) == set(teacher)
    for k, v in teacher.items():
        assert np.array_equal(obj["teacher"][k].numpy(), v), k

    hub = tmp_path / "hub.pth"
    assert main([str(outdir), str(hub), "--to-pth"]) == 0
    hub_sd = torch.load(hub, map_location="cpu", weights_only=True)
    assert set(hub_sd) == set(unchunk_keys(sd))


def test_save_load_api_and_existing_dir(tmp_path):
    sd, x, masks, out, kw, _ = _case("swiglu_nobias")
    model = load_torch_state_dict(DinoVisionTransformer(**kw, rngs=nnx.Rngs(0)), sd)
    head = DINOHead(32, 10, hidden_dim=8, bottleneck_dim=4, rngs=nnx.Rngs(1))
    d = save_converted(model, str(tmp_path / "m"), heads={"dino_head": head})
    m2, heads = load_converted(d, with_heads=True)
    np.testing.assert_array_equal(np.asarray(m2(jnp.asarray(x))), np.asarray(model(jnp.asarray(x))))
    np.testing.assert_array_equal(np.asarray(heads["dino_head"].last_layer.weight_v[...]),
                                  np.asarray(head.last_layer.weight_v[...]))
    assert infer_head_arch(params_to_torch_state_dict(head)) == head.arch
    with pytest.raises(FileExistsError):
        save_converted(model, d)
    with pytest.raises(FileNotFoundError, match="arch.json"):
        load_converted(str(tmp_path))


def test_module_entry_point_help():
    r = subprocess.run([sys.executable, "-m", "dinov2_jax.convert", "--help"], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert r.returncode == 0 and "--to-pth" in r.stdout and "--block-chunks" in r.stdout
