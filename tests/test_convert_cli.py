"""Converter CLI reliability: a named architecture the file does not match is an error (and inference is
logged), bad input is one clear line, --to-pth never overwrites silently nor writes a headless teacher,
and the CLI reads Hugging Face folders / writes them (torch not needed for any of it)."""
import json
import logging
import os

import numpy as np

from dinov2_jax.convert import main
from dinov2_jax.weights.pth import read_pth, write_pth

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "fixtures")


def _fixture_sd(name="vits14"):
    d = np.load(os.path.join(FIX, f"backbone_{name}.npz"))
    return {k[3:]: d[k].astype(np.float32) for k in d.files if k.startswith("sd/")}, json.loads(str(d["arch_json"]))


def test_named_arch_mismatch_is_an_error(tmp_path, capsys):
    with open(os.path.join(FIX, "hub_state_dict_shapes.json")) as f:
        shapes = json.load(f)["dinov2_vits14"]
    # a real-size ViT-S/14 file without its last block (zeros: only the layout matters here)
    sd = {k: np.zeros(v, np.float16) for k, v in shapes.items() if not k.startswith("blocks.11.")}
    write_pth(sd, str(tmp_path / "cut.pth"))
    assert main([str(tmp_path / "cut.pth"), str(tmp_path / "out"), "--arch", "dinov2_vits14"]) == 2
    err = capsys.readouterr().err
    assert "do not match dinov2_vits14" in err and "depth: expected 12, weights have 11" in err
    assert not (tmp_path / "out").exists()
    # no LayerScale -> init_values None: also a mismatch with the hub model
    sd = {k: np.zeros(v, np.float16) for k, v in shapes.items() if ".ls" not in k}
    write_pth(sd, str(tmp_path / "nols.pth"))
    assert main([str(tmp_path / "nols.pth"), str(tmp_path / "out"), "--arch", "dinov2_vits14"]) == 2
    assert "init_values: expected 1.0, weights have None" in capsys.readouterr().err


def test_inferred_arch_is_logged_and_arch_json_accepted(tmp_path, caplog, capsys):
    sd, kw = _fixture_sd()
    write_pth(sd, str(tmp_path / "w.pth"))
    with caplog.at_level(logging.INFO, logger="dinov2_jax.pretrained"):
        assert main([str(tmp_path / "w.pth"), str(tmp_path / "a"), "--set", "num_heads=2"]) == 0
    assert "inferred from its state dict" in caplog.text and "by convention: num_heads" in caplog.text
    arch = json.loads((tmp_path / "a" / "arch.json").read_text())
    assert arch["num_heads"] == 2 and arch["depth"] == 2
    (tmp_path / "want.json").write_text(json.dumps({**kw, "depth": 3}))
    assert main([str(tmp_path / "w.pth"), str(tmp_path / "b"), "--arch", str(tmp_path / "want.json")]) == 2
    assert "depth: expected 3, weights have 2" in capsys.readouterr().err


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    sd, _ = _fixture_sd()
    write_pth(sd, str(tmp_path / "w.pth"))
    raw = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(raw[: len(raw) // 3])
    (tmp_path / "page.pth").write_bytes(b"<html>Access denied</html>")
    for name in ("cut.pth", "page.pth", "missing.pth"):
        assert main([str(tmp_path / name), str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert name in err


def test_to_pth_overwrite_and_headless_teacher(tmp_path, capsys):
    sd, _ = _fixture_sd()
    write_pth(sd, str(tmp_path / "w.pth"))
    assert main([str(tmp_path / "w.pth"), str(tmp_path / "conv"), "--set", "num_heads=2"]) == 0
    out = tmp_path / "back.pth"
    out.write_bytes(b"precious")
    assert main([str(tmp_path / "conv"), str(out), "--to-pth"]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert main([str(tmp_path / "conv"), str(out), "--to-pth", "--overwrite"]) == 0
    back = read_pth(str(out))
    assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
    # a backbone-only export cannot become a teacher checkpoint: error, nothing written
    assert main([str(tmp_path / "conv"), str(tmp_path / "t.pth"), "--to-pth", "--teacher"]) == 2
    assert "backbone only" in capsys.readouterr().err and not (tmp_path / "t.pth").exists()


def test_hf_folder_in_and_out(tmp_path):
    sd, kw = _fixture_sd("vits14_reg4")
    write_pth(sd, str(tmp_path / "w.pth"))
    assert main([str(tmp_path / "w.pth"), str(tmp_path / "hf"), "--to-hf", "--set", "num_heads=2"]) == 0
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["model_type"] == "dinov2_with_registers" and cfg["num_attention_heads"] == 2
    assert main([str(tmp_path / "hf"), str(tmp_path / "again.pth"), "--to-pth", "--block-chunks", "2"]) == 0
    back = read_pth(str(tmp_path / "again.pth"))
    assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
