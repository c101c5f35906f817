"""Evaluators listed in `evaluation.evaluators` run in the trainer at their own periods (toy objective)."""
import json
import os

import ml_collections
import numpy as np
import pytest

from dinov2_jax.eval import evaluators as ev
from helpers import tiny_vit  # tests/ is on sys.path
from test_trainer import run, toy_cfg, toy_components


def colour_features(images):  # [B, H, W, 3] -> [B, 6]: per-channel mean and std (separates the demo photos)
    x = np.asarray(images)
    return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1) + 5.0


def toy_evaluators():
    common = dict(train_dataset="demo:train", val_dataset="demo:val", image_size=16, resize_size=16, max_samples=40)
    e = ml_collections.ConfigDict()
    e.knn = ml_collections.ConfigDict(dict(type="knn", period=0, at_start=True, nb_knn=(5, 10), **common))
    e.logreg = ml_collections.ConfigDict(dict(type="log_regression", period=8, Cs=(0.1, 10.0), **common))
    return e


def test_trainer_runs_each_evaluator_at_its_period(tmp_path):
    comp = toy_components()
    comp.teacher_backbone = lambda state, cfg: colour_features
    cfg = toy_cfg(tmp_path)
    cfg.evaluation.evaluators = toy_evaluators()
    run(cfg, comp)
    knn = [json.loads(line) for line in open(tmp_path / "knn_metrics.json")]
    logreg = [json.loads(line) for line in open(tmp_path / "logreg_metrics.json")]
    # knn: at start (-1) and every eval_period_iterations = 6 (it + 1 = 6, 12); logreg every 8
    assert [r["iteration"] for r in knn] == [-1, 5, 11]
    assert [r["iteration"] for r in logreg] == [7]
    assert set(knn[-1]) == {"iteration", "('full', 5) Top 1", "('full', 5) Top 5", "('full', 10) Top 1",
                            "('full', 10) Top 5"}
    assert knn[-1]["('full', 5) Top 1"] > 40  # colour statistics tell the 10 demo photos apart (chance 10 %)
    assert logreg[-1]["top-1"] > 40 and set(logreg[-1]) == {"iteration", "top-1", "top-5"}
    res = [json.loads(line) for line in open(tmp_path / "eval" / "training_7" / "results_eval_logreg.json")]
    assert {k for r in res for k in r} == {"top-1", "top-5", "best_C"}
    assert (tmp_path / "eval" / "training_5" / "results_eval_knn.json").exists()
    assert not (tmp_path / "eval" / "training_7" / "results_eval_knn.json").exists()
    # the teacher export keeps its own period (eval_period_iterations), evaluators do not trigger it
    assert comp.exported == [os.path.join(str(tmp_path), "eval", f"training_{i}") for i in (5, 11)]
    from tensorboardX.proto import event_pb2  # TensorBoard got the evaluator scalars
    import glob
    import struct

    tags = set()
    for path in glob.glob(str(tmp_path / "tb" / "*")):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
            tags.update(v.tag for v in event.summary.value)
            pos += 12 + n + 4
    assert "logreg/top-1" in tags and any(t.startswith("knn/") and "5" in t and "Top_1" in t for t in tags), tags
    from dinov2_jax.train import curves

    assert set(curves.evaluation_records(str(tmp_path))) == {"knn", "logreg"}


def test_bad_evaluator_configs_have_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown type 'knnn'"):
        ev.parse_evaluators({"a": {"type": "knnn", "train_dataset": "demo"}})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['nb_knn'\] for type 'log_regression'"):
        ev.parse_evaluators({"lr": {"type": "log_regression", "train_dataset": "demo", "nb_knn": (1,)}})
    with pytest.raises(ValueError, match="train_dataset .* is required"):
        ev.parse_evaluators({"knn": {}})
    cfg = toy_cfg(tmp_path)
    cfg.evaluation.knn_train_dataset = "demo:train"  # the retired spelling is refused, not ignored
    with pytest.raises(ValueError, match="replaced by evaluation.evaluators"):
        run(cfg)


def test_due_uses_own_or_default_period():
    evs = ev.parse_evaluators({"a": {"train_dataset": "demo", "type": "knn"},
                               "b": {"train_dataset": "demo", "type": "knn", "period": 3},
                               "c": {"train_dataset": "demo", "type": "knn", "period": -1}})
    assert [ev.due(evs, it, 5) for it in (2, 4, 5, 14)] == [["b"], ["a"], ["b"], ["a", "b"]]
    assert evs["a"]["resize_size"] == 256 and evs["a"]["val_dataset"] == "demo"


def test_linear_evaluator_runs_on_a_backbone():
    model = tiny_vit(init_values=None)
    opts = ev.parse_evaluators({"probe": dict(type="linear", train_dataset="demo:train", val_dataset="demo:val",
                                              image_size=28, resize_size=32, max_samples=40, batch_size=8,
                                              iterations=5, learning_rates=(0.01, 0.1))})["probe"]
    scalars, full = ev.run_evaluator(opts, model)
    assert set(scalars) == {"top-1"} and 0 <= scalars["top-1"] <= 100
    assert full["best_classifier"]["name"].startswith("classifier_1_blocks")
    assert full["demo:val_accuracy"] == scalars["top-1"]
