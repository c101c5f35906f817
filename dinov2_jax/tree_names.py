"""Dotted names of pytree leaves: the one naming rule that the optimizer's parameter groups and the
sharding rules both match their patterns against (`blocks.3.attn.qkv.kernel`)."""
from __future__ import annotations

from typing import Any, Sequence

import jax

# An NNX variable flattens to its payload under one of these attributes; the name stops at the variable.
_NNX_PAYLOAD = ("value", "raw_value")


def path_to_name(path: Sequence[Any]) -> str:
    """A jax key path -> dotted name: `(DictKey('blocks'), SequenceKey(0), ...)` -> `blocks.0...`.

    Dict keys and flattened-index keys give their key, sequence keys their index, attribute keys their
    name; a trailing NNX `value` / `raw_value` is dropped so a name reads like the torch module name.
    """
    parts = []
    for k in path:
        if isinstance(k, (jax.tree_util.DictKey, jax.tree_util.FlattenedIndexKey)):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        else:
            raise TypeError(f"unknown pytree key {k!r} ({type(k).__name__}) in path {path!r}")
    if parts and parts[-1] in _NNX_PAYLOAD:
        parts.pop()
    return ".".join(parts)
