"""Training curves of a run directory as one picture: losses, schedules, gradient norms, throughput,
evaluations.

Reads `training_metrics.json` (one JSON object per log line, written by `MetricsLogger`) and the
evaluators' `<name>_metrics.json` files (one line per periodic evaluation, e.g. `knn_metrics.json`;
iteration -1 is the random-init baseline); their top-1 keys are drawn. The trainer
redraws `training_curves.png` after every checkpoint and evaluation; by hand:

    python -m dinov2_jax.train.curves RUN_DIR [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

LOSS_KEYS = ("total_loss", "dino_local_crops_loss", "dino_global_crops_loss", "ibot_loss", "koleo_loss")
LR_KEYS = ("lr", "last_layer_lr")
SCHEDULE_KEYS = ("wd", "mom", "teacher_temp")
CURVES_FILE = "training_curves.png"


def read_json_lines(path: str) -> list[dict]:
    """Records of a JSON-lines file. A cut-off last line (a run killed mid-write) is ignored; a broken
    line anywhere else is an error naming the file and line."""
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON ({e}); fix or delete that line") from None
    return records


def by_iteration(records: list[dict]) -> list[dict]:
    """One record per iteration, sorted; a resumed run that re-logs an iteration keeps the latest record."""
    latest = {}
    for r in records:
        if "iteration" in r:
            latest[int(r["iteration"])] = r
    return [latest[i] for i in sorted(latest)]


def _series(records: list[dict], key: str):
    pts = [(r["iteration"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def evaluation_records(run_dir: str) -> dict[str, list[dict]]:
    """{evaluator name: its records by iteration} from the `<name>_metrics.json` files of a run
    (written by the periodic evaluators, e.g. `knn_metrics.json`)."""
    out = {}
    for fname in sorted(os.listdir(run_dir)):
        if fname.endswith("_metrics.json") and fname != "training_metrics.json":
            out[fname[: -len("_metrics.json")]] = by_iteration(read_json_lines(os.path.join(run_dir, fname)))
    return out


def plot_training_curves(run_dir: str, out_path: str | None = None) -> str:
    """Draws the run's curves to `out_path` (default `RUN_DIR/training_curves.png`); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training machines
    import matplotlib.pyplot as plt

    metrics_path = os.path.join(run_dir, "training_metrics.json")
    if not os.path.isfile(metrics_path):
        raise FileNotFoundError(f"{metrics_path} does not exist: is {run_dir!r} a training output_dir "
                                "(train.output_dir) with at least one logged iteration?")
    records = by_iteration(read_json_lines(metrics_path))
    if not records:
        raise ValueError(f"{metrics_path} holds no logged iterations yet")
    evals = evaluation_records(run_dir)

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    panels = [
        (axes[0, 0], "losses (window medians)", LOSS_KEYS, False),
        (axes[0, 1], "learning rate", LR_KEYS, False),
        (axes[0, 2], "weight decay, teacher momentum / temp.", SCHEDULE_KEYS, False),
        (axes[1, 0], "gradient norm before clipping",
         sorted({k for r in records for k in r if k.startswith("grad_norm/")}), True),
        (axes[1, 1], "throughput", ("images_per_s",), False),
    ]
    for ax, title, keys, log_y in panels:
        drawn = False
        for key in keys:
            xs, ys = _series(records, key)
            if xs:
                ax.plot(xs, ys, label=key, linewidth=1.2)
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("iteration")
        if drawn:
            ax.legend(fontsize=8)
            if log_y:
                ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)

    ax = axes[1, 2]
    ax.set_title("top-1 of the teacher (%)" if set(evals) != {"knn"} else "k-NN top-1 of the teacher (%)")
    ax.set_xlabel("iteration (random init at 0)")
    drawn = False
    for name, recs in evals.items():
        for key in sorted({k for r in recs for k in r if "Top 1" in k or k == "top-1"}):
            xs, ys = _series(recs, key)
            ax.plot([max(x, 0) for x in xs], ys, marker="o", label=key if name == "knn" else f"{name}: {key}")
            drawn = True
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no evaluation yet\n(evaluation.evaluators)", ha="center", va="center",
                transform=ax.transAxes)

    last = records[-1]
    loss = last.get("total_loss")
    fig.suptitle(f"{os.path.abspath(run_dir)}: iteration {last['iteration']}"
                 + (f", total_loss {loss:.4g}" if isinstance(loss, (int, float)) else ""))
    out_path = out_path or os.path.join(run_dir, CURVES_FILE)
    tmp = out_path + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out_path)  # readers (and a crash mid-write) never see a half-written picture
    return out_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser("python -m dinov2_jax.train.curves", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="the run's train.output_dir")
    p.add_argument("--out", default=None, help=f"picture path (default RUN_DIR/{CURVES_FILE})")
    args = p.parse_args(argv)
    print(plot_training_curves(args.run_dir, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
