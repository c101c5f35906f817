"""Strict weights matching, one rule for every load: a parameter the model has and the file lacks, a key the
file has and the model does not use, or a shape that differs is an error, and the error lists every one
(never a partial load that leaves parameters at their random init)."""
from __future__ import annotations

from typing import Iterable

import jax
import numpy as np


def mismatch_message(what: str, *, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
                     mis_shaped: Iterable[str] = (), hint: str = "") -> str | None:
    """The error text for a load with these problems (all listed, sorted), or None when there are none."""
    parts = [(name, sorted(keys)) for name, keys in
             (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))]
    if not any(keys for _, keys in parts):
        return None
    msg = [f"{what} does not match:"] + [f"  {name} ({len(keys)}): {keys}" for name, keys in parts if keys]
    if hint:
        msg.append("  " + hint)
    return "\n".join(msg)


def check_tree_like(like, tree, what: str, *, hint: str = "", error: type = ValueError) -> None:
    """`tree` has exactly the leaves of `like` (same paths, same shapes), else `error` listing the differences."""
    shapes = lambda t: {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}
    want, got = shapes(like), shapes(tree)
    msg = mismatch_message(
        what, missing=set(want) - set(got), unexpected=set(got) - set(want),
        mis_shaped=[f"{k}: file {got[k]} vs model {want[k]}" for k in set(want) & set(got) if got[k] != want[k]],
        hint=hint)
    if msg:
        raise error(msg)
