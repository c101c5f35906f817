"""Periodic evaluators of the teacher during training, configured as a list in `evaluation.evaluators`.

As big_vision's `config.evals`, the list is an ordered mapping from a name to that evaluator's options
(a mapping, so every option can be set from the command line:
`--config.evaluation.evaluators.knn.max_samples=40`):

    c.evaluation.evaluators.knn = dict(type="knn", period=0, at_start=True,
                                       train_dataset="demo:train", val_dataset="demo:val", nb_knn=(10, 20))
    c.evaluation.evaluators.logreg = dict(type="log_regression", period=1000, train_dataset=..., val_dataset=...)

Options every evaluator takes:
  type      "knn" | "log_regression" | "linear" (default: the name);
  period    run every `period` iterations (0 = `evaluation.eval_period_iterations`; < 0 = never periodically);
  at_start  also evaluate the freshly initialised model before training (iteration -1);
  train_dataset, val_dataset (default: train_dataset), image_size, resize_size, max_samples (0 = all),
  batch_size.
The other options are the keyword arguments of `knn_eval`, `log_regression` and `linear_eval`
(listed in `OPTIONS`); an unknown option is an error naming the accepted ones.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

COMMON = ("type", "period", "at_start", "train_dataset", "val_dataset", "image_size", "resize_size",
          "max_samples", "batch_size")
OPTIONS = {
    "knn": ("nb_knn", "temperature", "n_per_class_list", "n_tries"),
    "log_regression": ("max_iter", "tol", "Cs", "finetune_on_val", "dtype"),
    "linear": ("iterations", "learning_rates", "augment", "seed"),
}
DEFAULT_RESIZE = {"knn": 256, "log_regression": 224, "linear": 256}  # official eval transforms at 224


def _plain(opts) -> dict:
    """ConfigDict / mapping -> plain dict (tuples kept)."""
    return dict(opts.to_dict() if hasattr(opts, "to_dict") else opts)


def parse_evaluators(evaluators: Mapping | None) -> dict[str, dict]:
    """Validate `evaluation.evaluators` -> {name: options with defaults filled in}."""
    out = {}
    for name, opts in (evaluators or {}).items():
        opts = _plain(opts)
        kind = opts.get("type", name)
        if kind not in OPTIONS:
            raise ValueError(f"evaluation.evaluators.{name}: unknown type {kind!r}; one of {sorted(OPTIONS)}")
        unknown = sorted(set(opts) - set(COMMON) - set(OPTIONS[kind]))
        if unknown:
            raise ValueError(f"evaluation.evaluators.{name}: unknown option(s) {unknown} for type {kind!r}; "
                             f"accepted: {sorted(COMMON + OPTIONS[kind])}")
        if not opts.get("train_dataset"):
            raise ValueError(f"evaluation.evaluators.{name}: train_dataset (a labelled dataset spec) is required")
        image_size = int(opts.get("image_size", 224))
        default_resize = DEFAULT_RESIZE[kind] * image_size // 224
        out[name] = {**opts, "type": kind, "period": int(opts.get("period", 0)),
                     "at_start": bool(opts.get("at_start", False)),
                     "val_dataset": opts.get("val_dataset") or opts["train_dataset"], "image_size": image_size,
                     "resize_size": int(opts.get("resize_size", default_resize)),
                     "max_samples": int(opts.get("max_samples", 0) or 0) or None}
    return out


def evaluators_from_config(evaluation) -> dict[str, dict]:
    """`parse_evaluators(evaluation.evaluators)`, refusing the retired `evaluation.knn_*` keys (which would
    otherwise be silently ignored) with the replacement spelled out."""
    legacy = sorted(k for k in evaluation.keys() if k.startswith("knn_"))
    if legacy:
        raise ValueError(f"evaluation.{legacy[0]} (and {legacy[1:]}) are replaced by evaluation.evaluators: e.g. "
                         "c.evaluation.evaluators.knn = dict(type='knn', train_dataset=..., val_dataset=..., "
                         "at_start=..., max_samples=..., nb_knn=..., image_size=...); see configs/quickstart.py")
    return parse_evaluators(evaluation.get("evaluators", None))


def due(evaluators: dict[str, dict], it: int, default_period: int) -> list[str]:
    """Names of the evaluators to run after iteration `it` (0-based: `(it + 1) % period == 0`)."""
    names = []
    for name, opts in evaluators.items():
        period = opts["period"] or default_period
        if period > 0 and (it + 1) % period == 0:
            names.append(name)
    return names


def run_evaluator(opts: dict, backbone: Callable, *, progress: bool = False) -> tuple[dict[str, float], dict]:
    """Run one evaluator on a backbone. Returns (scalar metrics in percent for logs and curves,
    full results for the results file)."""
    kind = opts["type"]
    common = dict(image_size=opts["image_size"], resize_size=opts["resize_size"], max_samples=opts["max_samples"],
                  progress=progress)
    if "batch_size" in opts:
        common["batch_size"] = int(opts["batch_size"])
    extra = {k: opts[k] for k in OPTIONS[kind] if k in opts}
    train, val = opts["train_dataset"], opts["val_dataset"]
    if kind == "knn":
        from dinov2_jax.eval.knn import knn_eval

        for key in ("nb_knn", "n_per_class_list"):
            if key in extra:
                extra[key] = tuple(int(v) for v in extra[key])
        res = knn_eval(backbone, train, val, **common, **extra)
        return dict(res), dict(res)
    if kind == "log_regression":
        from dinov2_jax.eval.log_regression import log_regression_eval

        res = log_regression_eval(backbone, train, val, verbose=False, **common, **extra)
        full = {"top-1": res["top-1"], "top-5": res["top-5"], "best_C": res["best_C"]}
        return {"top-1": res["top-1"], "top-5": res["top-5"]}, full
    from dinov2_jax.eval.linear import linear_eval

    res = linear_eval(backbone, train, val, **common, **extra)
    return ({"top-1": res["val_accuracy"]},
            {"best_classifier": res["best_classifier"], f"{val}_accuracy": res["val_accuracy"]})


def scalar_items(results: Mapping[str, Any]):
    """(key, float) pairs of the numeric results (what TensorBoard and the curves take)."""
    for k, v in results.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            yield k, float(v)
