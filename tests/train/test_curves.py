"""Training-curves picture: parsing of the run's JSON-lines logs and the drawn PNG."""
import json

import numpy as np
import pytest
from PIL import Image

from dinov2_jax.train import curves


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def _records(iters, **extra):
    return [{"iteration": i, "total_loss": 10.0 - i, "dino_local_crops_loss": 5.0, "ibot_loss": 4.0 - 0.1 * i,
             "lr": 1e-3 * i, "last_layer_lr": 0.0, "wd": 0.04, "mom": 0.99, "teacher_temp": 0.04,
             "grad_norm/backbone": 1.0 + i, "images_per_s": 30.0, **extra} for i in iters]


def test_resumed_iterations_keep_the_latest_record_and_a_cut_off_last_line_is_ignored(tmp_path):
    path = tmp_path / "training_metrics.json"
    _write(path, _records([0, 1, 2]) + _records([2, 3], total_loss=0.5), tail='{"iteration": 4, "tot')
    recs = curves.by_iteration(curves.read_json_lines(str(path)))
    assert [r["iteration"] for r in recs] == [0, 1, 2, 3]
    assert recs[2]["total_loss"] == 0.5  # the resumed run's record of iteration 2


def test_broken_line_in_the_middle_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "training_metrics.json"
    path.write_text('{"iteration": 0}\nnot json\n{"iteration": 1}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        curves.read_json_lines(str(path))


def test_plot_draws_every_panel_with_knn(tmp_path):
    _write(tmp_path / "training_metrics.json", _records(range(20)))
    _write(tmp_path / "knn_metrics.json", [{"iteration": -1, "('full', 10) Top 1": 20.0},
                                           {"iteration": 9, "('full', 10) Top 1": 80.0}])
    out = curves.main([str(tmp_path)])
    assert out == 0
    img = np.asarray(Image.open(tmp_path / curves.CURVES_FILE).convert("RGB"), np.float32)
    assert img.shape[0] > 500 and img.shape[1] > 1000
    # each of the 2x3 panels holds curves: coloured pixels (axes and text are grey, curves are not)
    h, w = img.shape[0] // 2, img.shape[1] // 3
    coloured = (img.max(-1) - img.min(-1)) > 60
    for r in range(2):
        for c in range(3):
            assert coloured[r * h:(r + 1) * h, c * w:(c + 1) * w].sum() > 200, (r, c)
    # without k-NN results that panel only says so
    (tmp_path / "knn_metrics.json").unlink()
    curves.plot_training_curves(str(tmp_path))
    img = np.asarray(Image.open(tmp_path / curves.CURVES_FILE).convert("RGB"), np.float32)
    assert ((img.max(-1) - img.min(-1)) > 60)[h:, 2 * w:].sum() == 0
    assert not list(tmp_path.glob("*.tmp.png"))  # written atomically


def test_missing_or_empty_metrics_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="training output_dir"):
        curves.plot_training_curves(str(tmp_path))
    (tmp_path / "training_metrics.json").write_text("")
    with pytest.raises(ValueError, match="no logged iterations"):
        curves.plot_training_curves(str(tmp_path))
