"""Training logs: console line, TensorBoard (`output_dir/tb`) and `output_dir/training_metrics.json`.

Like the official `MetricLogger`, each meter keeps a window of the last 20 values and every log
line reports the window median. The JSON file has one line per log with the official keys
(`iteration`, `iter_time`, `data_time`, `lr`, `wd`, `mom`, `last_layer_lr`, `current_batch_size`,
`total_loss`, `dino_local_crops_loss`, ...) plus the JAX extras (`teacher_temp`, `grad_norm/*`,
`images_per_s`).
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import sys
import time

import numpy as np

WINDOW = 20


def drop_torn_last_line(path: str) -> bytes:
    """A run killed while writing a JSON line leaves it without its newline; appending to it would glue
    the next run's first record onto it. Cuts such a last line off (returns the cut bytes, b"" if none)."""
    if not os.path.exists(path):
        return b""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return b""
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return b""
        back = min(size, 1 << 20)  # a record is far shorter than 1 MiB
        f.seek(size - back)
        tail = f.read(back)
        cut = size - back + tail.rfind(b"\n") + 1 if b"\n" in tail else (0 if back == size else size)
        f.seek(cut)
        torn = f.read()
        f.truncate(cut)
    return torn


class MetricsLogger:
    """Collects per-iteration scalars and writes them every `log_period` iterations."""

    def __init__(self, output_dir: str, total_iters: int, start_iter: int = 0, tensorboard: bool = True,
                 stream=None, write_files: bool = True):
        """`write_files=False` (processes other than 0 of a multi-host run): console only."""
        self.output_dir = output_dir
        self.total_iters = total_iters
        self.start_iter = start_iter
        self.stream = stream or sys.stdout
        self._meters: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=WINDOW))
        self._json = None
        self.dropped_torn_line = b""
        if write_files:
            path = os.path.join(output_dir, "training_metrics.json")
            self.dropped_torn_line = drop_torn_last_line(path)
            self._json = open(path, "a")
        self._tb = None
        if tensorboard and write_files:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(output_dir, "tb"))
        self._t0 = time.time()
        self._iters_done = 0

    def update(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self._meters[k].append(float(v))
        self._iters_done += 1

    def medians(self) -> dict[str, float]:
        return {k: float(np.median(v)) for k, v in self._meters.items() if len(v)}

    def log(self, iteration: int, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Writes the window medians (+ `extra`, logged as is) for `iteration`; returns the record."""
        record = {"iteration": iteration, **self.medians(), **(extra or {})}
        if self._json is not None:
            self._json.write(json.dumps(record) + "\n")
            self._json.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "iteration" and np.isfinite(v):
                    self._tb.add_scalar(k, v, iteration)
            self._tb.flush()
        self.stream.write(self._console_line(iteration, record) + "\n")
        self.stream.flush()
        return record

    def log_eval(self, name: str, iteration: int, results: dict) -> dict:
        """One evaluation's results: a line `{"iteration", **results}` in `<name>_metrics.json` (JSON lines,
        e.g. `knn_metrics.json`) and TensorBoard scalars `<name>/<key>`. Returns the record."""
        record = {"iteration": iteration, **results}
        if self._json is not None:  # files are written by process 0 only
            with open(os.path.join(self.output_dir, f"{name}_metrics.json"), "a") as f:
                f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in results.items():
                if isinstance(v, (int, float)) and np.isfinite(v):
                    self._tb.add_scalar(f"{name}/{k}", v, iteration)
            self._tb.flush()
        return record

    def _console_line(self, iteration: int, record: dict[str, float]) -> str:
        # ETA from the latest window's time per iteration (the first one includes compilation)
        per_iter = record.get("iter_time", (time.time() - self._t0) / max(self._iters_done, 1))
        remaining = max(self.total_iters - iteration - 1, 0)
        eta = str(datetime.timedelta(seconds=int(per_iter * remaining)))
        done = iteration + 1
        width = 20
        filled = int(width * done / max(self.total_iters, 1))
        bar = "#" * filled + "." * (width - filled)
        keys = ["total_loss", "dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss",
                "lr", "wd", "mom", "last_layer_lr", "teacher_temp", "images_per_s"]
        parts = [f"{k}: {record[k]:.4g}" for k in keys if k in record]
        grads = [f"{k.split('/')[-1]}={record[k]:.3g}" for k in sorted(record) if k.startswith("grad_norm/")]
        if grads:
            parts.append("grad_norm: " + ",".join(grads))
        if record.get("skipped_images"):  # unreadable images dropped by the loader (shown once there are some)
            parts.append(f"skipped_images: {int(record['skipped_images'])}")
        return f"Training [{bar}] [{done}/{self.total_iters}] eta: {eta}  " + "  ".join(parts)

    def info(self, message: str) -> None:
        self.stream.write(message + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._json is not None:
            self._json.close()
        if self._tb is not None:
            self._tb.close()
