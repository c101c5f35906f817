"""Convert DINOv2 weights between the official PyTorch layout and dinov2_jax (Orbax + arch.json).

Inputs understood (torch -> JAX):
- official hub backbones `dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth` (plain backbone state dict);
- training `teacher_checkpoint.pth` = `{"teacher": {backbone.*, dino_head.*, [ibot_head.*]}}`;
- any backbone state dict with `module.` / `backbone.` prefixes or `block_chunks` keys `blocks.{c}.{i}.`.
The architecture is inferred from the state dict (dim, depth, patch, registers, FFN type, biases,
LayerScale, img_size; heads = dim / 64 as all official presets; register models get
antialiased / offset-0 pos-embed interpolation) and every field can be overridden.

Output directory layout:
    OUTPUT/arch.json      backbone constructor kwargs (DinoVisionTransformer)
    OUTPUT/heads.json     {"dino_head": {...}, "ibot_head": {...}}   (only with heads)
    OUTPUT/params/        Orbax checkpoint of {"backbone": params, "dino_head": params, ...}

JAX -> torch (`--to-pth`) writes a state dict that the official model loads with strict=True
(optionally in `block_chunks` layout, or as a teacher checkpoint with the heads).

Every parameter must be matched: missing, unexpected and mis-shaped keys are all listed in the error.

CLI:
    python -m dinov2_jax.convert dinov2_vits14_pretrain.pth out/vits14
    python -m dinov2_jax.convert teacher_checkpoint.pth out/run1 --set num_heads=6
    python -m dinov2_jax.convert out/vits14 vits14.pth --to-pth [--block-chunks 4] [--teacher] [--overwrite]
    python -m dinov2_jax.convert dinov2_vits14_pretrain.pth out/hf --to-hf --arch dinov2_vits14
Files are read through `dinov2_jax.pretrained` (no torch needed): official .pth, Hugging Face folders,
timm state dicts and converted directories are all accepted as input.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dinov2_jax.models.config import RUNTIME_KEYS, ViTConfig
from dinov2_jax.weights.matching import mismatch_message
from dinov2_jax.models.dino_head import DINOHead
from dinov2_jax.models.layers.swiglu_ffn import swiglu_hidden_dim
from dinov2_jax.models.vision_transformer import DinoVisionTransformer

HEAD_NAMES = ("dino_head", "ibot_head")


class ConversionError(ValueError):
    """A state dict does not match the model: the message lists every offending key."""


# ---------------------------------------------------------------------------------------------------
# key normalisation
_CHUNK_RE = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")


def unchunk_keys(sd: Mapping[str, Any]) -> dict:
    """`blocks.{chunk}.{i}.x` -> `blocks.{i}.x` (official block_chunks > 0 layout); others unchanged."""
    out = {}
    for k, v in sd.items():
        m = _CHUNK_RE.match(k)
        out[f"blocks.{m.group(2)}.{m.group(3)}" if m else k] = v
    return out


def chunk_keys(sd: Mapping[str, Any], depth: int, block_chunks: int) -> dict:
    """Inverse of `unchunk_keys` for the official `block_chunks` construction (chunk = i // (depth // c))."""
    if block_chunks <= 0:
        return dict(sd)
    chunksize = depth // block_chunks
    if chunksize < 1:
        raise ValueError(f"block_chunks={block_chunks} exceeds depth={depth}.")
    out = {}
    for k, v in sd.items():
        m = re.match(r"^blocks\.(\d+)\.(.+)$", k)
        if m:
            i = int(m.group(1))
            k = f"blocks.{i // chunksize}.{i}.{m.group(2)}"
        out[k] = v
    return out


def split_checkpoint(obj: Mapping[str, Any]) -> dict[str, dict]:
    """Split a loaded torch checkpoint into {"backbone": sd, "dino_head": sd, "ibot_head": sd} (heads optional).

    Accepts a plain backbone state dict, `{"teacher": ...}` (training eval export) or
    `{"model": {... "teacher.backbone.*" ...}}` (full-state training checkpoint).
    """
    if "teacher" in obj and isinstance(obj["teacher"], Mapping):
        obj = obj["teacher"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        inner = obj["model"]
        if any(k.startswith("teacher.") for k in inner):
            obj = {k[len("teacher."):]: v for k, v in inner.items() if k.startswith("teacher.")}
        else:
            obj = inner
    if any("_flat_param" in k or "flat_param" in k for k in obj):
        raise ConversionError("This looks like a sharded FSDP training checkpoint (flat params). Convert the "
                              "`eval/training_*/teacher_checkpoint.pth` export instead.")
    parts: dict[str, dict] = {"backbone": {}}
    for k, v in obj.items():
        k = k.replace("module.", "")
        for head in HEAD_NAMES:
            if k.startswith(head + "."):
                parts.setdefault(head, {})[k[len(head) + 1:]] = v
                break
        else:
            if k.startswith("backbone."):
                k = k[len("backbone."):]
            parts["backbone"][k] = v
    parts["backbone"] = unchunk_keys(parts["backbone"])
    return parts


# ---------------------------------------------------------------------------------------------------
# architecture inference
def infer_arch(sd: Mapping[str, Any], **overrides) -> dict:
    """DinoVisionTransformer kwargs from an official-layout (un-chunked, un-prefixed) backbone state dict."""
    shape = {k: tuple(np.shape(v)) for k, v in sd.items()}
    for req in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if req not in shape:
            raise ConversionError(f"Not a DINOv2 backbone state dict: key {req!r} missing "
                                  f"(first keys: {sorted(shape)[:8]}).")
    dim = shape["cls_token"][-1]
    depth = len({int(m.group(1)) for k in shape if (m := re.match(r"^blocks\.(\d+)\.", k))})
    out_c, in_c, p, p2 = shape["patch_embed.proj.weight"]
    if p != p2:
        raise ConversionError(f"Non-square patch kernel {p}x{p2} is not supported.")
    n_pos = shape["pos_embed"][1] - 1
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise ConversionError(f"pos_embed has {n_pos} patch positions, not a square grid.")
    n_reg = shape["register_tokens"][1] if "register_tokens" in shape else 0
    if "blocks.0.mlp.w12.weight" in shape:
        ffn, hidden = "swiglufused", shape["blocks.0.mlp.w12.weight"][0] // 2
        ffn_bias = "blocks.0.mlp.w12.bias" in shape
        mlp_ratio = _swiglu_ratio(dim, hidden)
    elif "blocks.0.mlp.fc1.weight" in shape:
        ffn, hidden = "mlp", shape["blocks.0.mlp.fc1.weight"][0]
        ffn_bias = "blocks.0.mlp.fc1.bias" in shape
        mlp_ratio = hidden / dim
    elif depth:
        ffn, ffn_bias, mlp_ratio = "identity", True, 4.0
    else:
        raise ConversionError("No transformer blocks (`blocks.*`) found in the state dict.")
    arch = dict(
        img_size=grid * p, patch_size=p, in_chans=in_c, embed_dim=dim, depth=depth,
        num_heads=max(dim // 64, 1), mlp_ratio=float(mlp_ratio), qkv_bias="blocks.0.attn.qkv.bias" in shape,
        ffn_bias=ffn_bias, proj_bias="blocks.0.attn.proj.bias" in shape, drop_path_rate=0.0,
        drop_path_uniform=False, init_values=1.0 if "blocks.0.ls1.gamma" in shape else None,
        ffn_layer=ffn, num_register_tokens=n_reg,
        interpolate_antialias=bool(n_reg), interpolate_offset=0.0 if n_reg else 0.1,
        attn_impl="auto", dtype="float32", remat="none", scan_blocks=False)
    unknown = set(overrides) - set(arch)
    if unknown:
        raise ValueError(f"Unknown architecture overrides {sorted(unknown)}; valid: {sorted(arch)}.")
    arch.update(overrides)
    if arch["embed_dim"] % arch["num_heads"]:
        raise ConversionError(f"embed_dim {dim} not divisible by num_heads {arch['num_heads']}; pass num_heads.")
    return arch


def _swiglu_ratio(dim: int, hidden: int) -> float:
    """An mlp_ratio whose official SwiGLU rounding gives `hidden` (4.0 when it does, as all presets)."""
    if swiglu_hidden_dim(int(dim * 4.0)) == hidden:
        return 4.0
    for h_in in range(max(1, (hidden * 3) // 2 - 16), (hidden * 3) // 2 + 16):
        if swiglu_hidden_dim(h_in) == hidden and int(dim * (h_in / dim)) == h_in:
            return h_in / dim
    raise ConversionError(f"No mlp_ratio gives SwiGLU hidden width {hidden} for dim {dim}.")


def infer_head_arch(sd: Mapping[str, Any]) -> dict:
    """DINOHead kwargs from a head state dict (`mlp.{0,2,4}.*`, `last_layer.weight_{g,v}`)."""
    shape = {k: tuple(np.shape(v)) for k, v in sd.items()}
    if "last_layer.weight_v" not in shape:
        raise ConversionError(f"Not a DINOHead state dict (no last_layer.weight_v); keys: {sorted(shape)[:8]}")
    out_dim, bottleneck = shape["last_layer.weight_v"]
    if "mlp.weight" in shape:
        layers = ["mlp"]
    else:
        idx = sorted({int(m.group(1)) for k in shape if (m := re.match(r"^mlp\.(\d+)\.weight$", k))})
        layers = [f"mlp.{i}" for i in idx]
    in_dim = shape[layers[0] + ".weight"][1]
    hidden = shape[layers[0] + ".weight"][0] if len(layers) > 1 else 2048
    return dict(in_dim=in_dim, out_dim=out_dim, nlayers=len(layers), hidden_dim=hidden,
                bottleneck_dim=bottleneck, mlp_bias=layers[0] + ".bias" in shape)


# ---------------------------------------------------------------------------------------------------
# parameter mapping
def _flat_params(model: nnx.Module) -> dict[tuple, Any]:
    return {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _param_rules(model: nnx.Module, path: tuple) -> tuple[str, Any, Any]:
    """(torch key, torch->jax fn, jax->torch fn) for one JAX param path."""
    ident = lambda a: a  # noqa: E731
    t = lambda a: np.swapaxes(a, 0, 1)  # noqa: E731  Linear weight [out,in] <-> kernel [in,out]
    parts = [str(p) for p in path]
    if isinstance(model, DINOHead):
        if parts[0] == "mlp":
            name = "mlp" if model.arch["nlayers"] == 1 else f"mlp.{2 * int(parts[1])}"
            return f"{name}.{'weight' if parts[2] == 'kernel' else 'bias'}", (t if parts[2] == "kernel" else ident), \
                (t if parts[2] == "kernel" else ident)
        if parts[-1] == "weight_g":
            return "last_layer.weight_g", lambda a: np.reshape(a, (-1,)), lambda a: np.reshape(a, (-1, 1))
        if parts[-1] == "weight_v":
            return "last_layer.weight_v", t, t
        raise KeyError(path)
    leaf = parts[-1]
    prefix = ".".join(parts[:-1])
    if parts[:2] == ["patch_embed", "proj"] and leaf == "kernel":
        return "patch_embed.proj.weight", lambda a: np.transpose(a, (2, 3, 1, 0)), \
            lambda a: np.transpose(a, (3, 2, 0, 1))
    if leaf == "kernel":
        return f"{prefix}.weight", t, t
    if leaf == "scale":  # LayerNorm
        return f"{prefix}.weight", ident, ident
    key = f"{prefix}.{leaf}" if prefix else leaf
    return key, ident, ident


def _to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):  # torch tensor
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        v = v.numpy()
    return np.asarray(v)


def torch_state_dict_to_params(sd: Mapping[str, Any], model: nnx.Module) -> dict:
    """Official-layout state dict (torch tensors or numpy) -> nested pure dict shaped like
    `nnx.state(model, nnx.Param)`, float32. Raises ConversionError listing missing / unexpected /
    mis-shaped keys (backbone: prefixes and block_chunks layouts are accepted)."""
    if isinstance(model, DinoVisionTransformer):
        sd = split_checkpoint(sd)["backbone"]
    flat = _flat_params(model)
    used, missing, bad_shape, out = set(), [], [], {}
    for path, var in flat.items():
        key, to_jax, _ = _param_rules(model, path)
        if key not in sd:
            missing.append(key)
            continue
        used.add(key)
        arr = to_jax(_to_numpy(sd[key])).astype(np.float32)
        if arr.shape != tuple(var.shape):
            bad_shape.append(f"{key}: checkpoint {tuple(np.shape(sd[key]))} -> {arr.shape}, model {tuple(var.shape)}")
            continue
        out[path] = arr
    msg = mismatch_message(f"State dict for {type(model).__name__}", missing=missing, unexpected=set(sd) - used,
                           mis_shaped=bad_shape,
                           hint="Check the architecture (arch.json / --set overrides) and the checkpoint type.")
    if msg:
        raise ConversionError(msg)
    return _unflatten(out)


def load_torch_state_dict(model: nnx.Module, sd: Mapping[str, Any]) -> nnx.Module:
    """Copy an official-layout state dict into `model` in place (strict); returns the model."""
    params = torch_state_dict_to_params(sd, model)
    state = nnx.state(model, nnx.Param)
    state.replace_by_pure_dict(jax.tree.map(jnp.asarray, params))
    nnx.update(model, state)
    return model


def fill_abstract(abstract: nnx.Module, sd: Mapping[str, Any]) -> nnx.Module:
    """A module built with `nnx.eval_shape` (shapes only) -> the concrete module holding `sd` (strict).
    Nothing is randomly initialised, so no parameter can keep an init value."""
    params = torch_state_dict_to_params(sd, abstract)
    graphdef, state = nnx.split(abstract)
    state.replace_by_pure_dict(jax.tree.map(jnp.asarray, params))
    return nnx.merge(graphdef, state)


def params_to_torch_state_dict(model: nnx.Module, block_chunks: int = 0) -> dict[str, np.ndarray]:
    """Model params -> official-layout state dict of float32 numpy arrays (hub layout, or
    `blocks.{c}.{i}.` with block_chunks > 0). Loads into the official module with strict=True."""
    sd = {}
    for path, var in _flat_params(model).items():
        key, _, to_torch = _param_rules(model, path)
        sd[key] = np.array(to_torch(np.asarray(var[...], np.float32)), dtype=np.float32, order="C", copy=True)
    if isinstance(model, DinoVisionTransformer) and block_chunks:
        sd = chunk_keys(sd, model.n_blocks, block_chunks)
    return sd


def torch_state_dict_shapes(model: nnx.Module, block_chunks: int = 0) -> dict[str, tuple]:
    """Official key -> shape that `params_to_torch_state_dict` would produce; works on abstract models
    (`nnx.eval_shape`), so the key set of even ViT-g can be checked without memory."""
    shapes = {}
    for path, var in _flat_params(model).items():
        key, _, to_torch = _param_rules(model, path)
        shapes[key] = tuple(to_torch(np.broadcast_to(np.zeros((), np.float32), var.shape)).shape)
    if isinstance(model, DinoVisionTransformer) and block_chunks:
        shapes = chunk_keys(shapes, model.n_blocks, block_chunks)
    return shapes


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


# ---------------------------------------------------------------------------------------------------
# saving / loading converted checkpoints
def _pure(model: nnx.Module) -> dict:
    return nnx.state(model, nnx.Param).to_pure_dict()


def _local_checkpointer():
    """Orbax checkpointer for this process alone. The converter format is a plain local file set: in a
    multi-process job one process writes it (the trainer's periodic export on process 0) or each reads
    it, without the cross-process barriers of Orbax's default (which would wait for the others)."""
    import orbax.checkpoint as ocp

    me = jax.process_index()
    return ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))


def save_converted(model: DinoVisionTransformer, directory: str, arch: dict | None = None,
                   heads: Mapping[str, DINOHead] | None = None) -> str:
    """Write `directory/{arch.json, [heads.json], params/}` (Orbax). Returns the absolute directory."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    arch = dict(arch or model.arch)
    tree = {"backbone": _pure(model)}
    head_archs = {}
    for name, head in (heads or {}).items():
        tree[name] = _pure(head)
        head_archs[name] = head.arch
    params_dir = os.path.join(directory, "params")
    if os.path.exists(params_dir):
        raise FileExistsError(f"{params_dir} already exists; choose a new output directory.")
    with _local_checkpointer() as ckptr:
        # numpy, not jax.Arrays: Orbax refuses process-local jax.Arrays in a multi-process job
        ckptr.save(params_dir, jax.device_get(tree))
        ckptr.wait_until_finished()
    with open(os.path.join(directory, "arch.json"), "w") as f:
        json.dump(arch, f, indent=2, sort_keys=True)
    if head_archs:
        with open(os.path.join(directory, "heads.json"), "w") as f:
            json.dump(head_archs, f, indent=2, sort_keys=True)
    return directory


def load_converted(directory: str, *, with_heads: bool = False, **overrides):
    """Load a `save_converted` directory -> model, or (model, {head_name: DINOHead}) with `with_heads`.

    `overrides` change non-parameter constructor args (attn_impl, dtype, drop_path_rate, remat, ...).
    """
    directory = os.path.abspath(directory)
    arch_path = os.path.join(directory, "arch.json")
    if not os.path.exists(arch_path):
        raise FileNotFoundError(f"{arch_path} not found: not a dinov2_jax converted checkpoint directory.")
    with open(arch_path) as f:
        arch = json.load(f)
    arch.update(overrides)
    head_archs = {}
    heads_path = os.path.join(directory, "heads.json")
    if os.path.exists(heads_path):
        with open(heads_path) as f:
            head_archs = json.load(f)
    cfg = ViTConfig.from_kwargs(arch)
    runtime = {k: arch[k] for k in RUNTIME_KEYS if k in arch}

    def build():
        rngs = nnx.Rngs(0)  # created inside eval_shape: nothing is initialised for real
        model = cfg.build(rngs=rngs, **runtime)
        heads = {n: DINOHead(**a, rngs=rngs) for n, a in head_archs.items()}
        return model, heads

    # Build abstractly (no random init), restore every stored entry, then drop the unwanted heads.
    abstract_model, abstract_heads = nnx.eval_shape(build)
    modules = {"backbone": abstract_model, **abstract_heads}
    target = {n: jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), _pure(m))
              for n, m in modules.items()}
    with _local_checkpointer() as ckptr:
        restored = ckptr.restore(os.path.join(directory, "params"), target)
    out = {}
    for n, m in modules.items():
        if n != "backbone" and not with_heads:
            continue
        graphdef, state = nnx.split(m)
        state.replace_by_pure_dict(restored[n])
        out[n] = nnx.merge(graphdef, state)
    model = out.pop("backbone")
    return (model, out) if with_heads else model


def convert_torch_checkpoint(obj: Mapping[str, Any], **overrides):
    """Loaded torch checkpoint -> (model, {head: DINOHead}, arch). Strict: every key must be used.
    Modules are built abstractly and filled from the file (no random init)."""
    parts = split_checkpoint(obj)
    arch = infer_arch(parts["backbone"], **overrides)
    runtime = {k: arch[k] for k in RUNTIME_KEYS}
    model = fill_abstract(ViTConfig.from_kwargs(arch).build_abstract(**runtime), parts["backbone"])
    heads = {}
    for name in HEAD_NAMES:
        if name in parts:
            heads[name] = head_from_state_dict(parts[name])
    return model, heads, arch


def head_from_state_dict(sd: Mapping[str, Any]) -> DINOHead:
    """DINOHead with the architecture inferred from, and every parameter taken from, its state dict."""
    harch = infer_head_arch(sd)
    return fill_abstract(nnx.eval_shape(lambda: DINOHead(**harch, rngs=nnx.Rngs(0))), sd)


# ---------------------------------------------------------------------------------------------------
# CLI
def _parse_value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def main(argv=None) -> int:
    import logging
    import sys

    ap = argparse.ArgumentParser(prog="python -m dinov2_jax.convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("input", help="official .pth (hub backbone or teacher_checkpoint.pth), a Hugging Face folder, "
                                  "a timm state dict, or a converted dir (with --to-pth / --to-hf)")
    ap.add_argument("output", help="output directory (to JAX / --to-hf) or .pth file (--to-pth)")
    ap.add_argument("--to-pth", action="store_true", help="write the official .pth (no torch needed)")
    ap.add_argument("--to-hf", action="store_true",
                    help="write a Hugging Face folder (config.json + model.safetensors) for transformers")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    ap.add_argument("--block-chunks", type=int, default=0, help="with --to-pth: write blocks.{chunk}.{i}. keys")
    ap.add_argument("--teacher", action="store_true",
                    help="with --to-pth: write {'teacher': {backbone.*, dino_head.*, ...}} incl. heads "
                         "(the input must hold the heads)")
    ap.add_argument("--arch", help="hub name (e.g. dinov2_vits14) or arch.json the weights must match (a "
                                   "difference is an error); default: inferred from the file (and logged)")
    ap.add_argument("--arch-json", help="JSON file of architecture overrides (DinoVisionTransformer kwargs)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="architecture override, e.g. --set num_heads=6 --set interpolate_offset=0.1")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    overrides = {}
    if args.arch_json:
        with open(args.arch_json) as f:
            overrides.update(json.load(f))
    for item in args.set:
        if "=" not in item:
            ap.error(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k] = _parse_value(v)
    if args.to_pth and args.to_hf:
        ap.error("choose one of --to-pth and --to-hf")
    try:
        return _convert(args, overrides)
    except (ValueError, FileExistsError, FileNotFoundError) as e:  # bad input: one clear message, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def _convert(args, overrides: dict) -> int:
    from dinov2_jax import pretrained as P

    ckpt = P.read_checkpoint(args.input)
    cfg = P.resolve_config(ckpt, args.arch, source=args.input)
    layout = {k: v for k, v in overrides.items() if k not in RUNTIME_KEYS}
    if layout:
        cfg = type(cfg).from_kwargs({**cfg.kwargs(), **layout})  # unknown keys: ValueError naming them
    runtime = {k: v for k, v in overrides.items() if k in RUNTIME_KEYS}
    runtime.setdefault("attn_impl", "auto")
    model, heads = P.build_from_checkpoint(ckpt, cfg, with_heads=True, **{
        k: runtime[k] for k in ("dtype", "attn_impl", "remat", "scan_blocks") if k in runtime})
    if args.to_pth:
        if not args.output.endswith((".pth", ".pt")):
            raise ValueError(f"--to-pth output {args.output!r} should end with .pth")
        P.export_pth(model, args.output, heads=heads, teacher=args.teacher, block_chunks=args.block_chunks,
                     overwrite=args.overwrite)
        print(f"wrote {args.output} ({'teacher checkpoint with ' + ', '.join(sorted(heads)) if args.teacher else 'backbone'}"
              f", {len(torch_state_dict_shapes(model))} backbone tensors)")
        return 0
    if args.teacher or args.block_chunks:
        raise ValueError("--teacher / --block-chunks only apply with --to-pth")
    if args.to_hf:
        P.export_hf(model, args.output, overwrite=args.overwrite)
        print(f"wrote {args.output} (config.json + model.safetensors)")
        return 0
    out = save_converted(model, args.output, model.arch, heads)
    print(f"wrote {out}: arch {json.dumps(model.arch)}; heads {sorted(heads)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
