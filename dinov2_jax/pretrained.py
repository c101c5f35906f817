"""One entry point for DINOv2 backbones and their weights: `from_pretrained(name_or_path)`.

    from PIL import Image
    from dinov2_jax import from_pretrained
    m = from_pretrained("dinov2_vits14_pretrain.pth")          # or an HF folder, a hub name, ...
    x = m.preprocess(Image.open("cat.jpg"))[None]              # [1, 224, 224, 3]
    feats = m.features(x)                                      # {"cls": [1, 384], "patch_tokens": ...}

Formats read (detected from the path):
- official `.pth`: hub backbones, `teacher_checkpoint.pth` (`{"teacher": {backbone.*, dino_head.*}}`),
  full training checkpoints (`{"model": {teacher.backbone.*}}`), `blocks.{chunk}.{i}.` layouts; read by
  `dinov2_jax.weights.pth` without torch (restricted unpickler);
- timm `vit_*_dinov2` state dicts (`.pth` / `.bin` / `.safetensors`);
- Hugging Face `Dinov2Model` / `Dinov2WithRegistersModel` folders (config.json + model.safetensors, read
  with `safetensors.numpy`), or an HF repo id such as `facebook/dinov2-small` (via `huggingface_hub`);
- directories written by `python -m dinov2_jax.convert` / the trainer's exports (arch.json + params/);
- Orbax training checkpoints of this project (`RUN/ckpt`, `RUN/ckpt/<step>` or `RUN`): the teacher backbone;
- a hub name (`dinov2_vits14`, ...): the official file from the torch hub cache, downloaded when online.

The architecture comes from the file (config.json / arch.json / inferred from the state dict, logged).
When the caller names one (`arch=`), a layout difference is an error that lists it. Loading is strict:
missing, unexpected and mis-shaped keys are errors listing every one; no parameter keeps a random value.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Callable, Mapping

import jax
import numpy as np

from dinov2_jax.models.config import ARCH_SIZES, HUB_NAMES, INTERPOLATIONS, ViTConfig

logger = logging.getLogger("dinov2_jax.pretrained")

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/dinov2/{short}/{short}{reg}_pretrain.pth"
HF_REPOS = {f"dinov2_vit{s}14{r}": f"facebook/dinov2{'-with-registers' if r else ''}-{size}"
            for s, size in zip("sblg", ("small", "base", "large", "giant")) for r in ("", "_reg")}


class WeightsError(ValueError):
    """Weights that cannot be used as asked (wrong architecture, wrong format, missing file)."""


# ---------------------------------------------------------------------------------------------------
# the single "split, jit, close over the parameters" wrapper
def jit_module(module, fn: Callable) -> Callable:
    """`fn(module, *args)` compiled once; returns `(*args) -> out`. The module's state is a jit argument
    (not baked into the program as constants), so large models compile fast and memory is not doubled."""
    from flax import nnx

    graphdef, state = nnx.split(module)

    @jax.jit
    def run(state, *args):
        return fn(nnx.merge(graphdef, state), *args)

    return lambda *args: run(state, *args)


def backbone_features(model, images):
    """images [B, H, W, 3] -> {"cls" [B, D], "patch_tokens" [B, N, D], "register_tokens" [B, R, D]}
    (final-norm tokens, deterministic)."""
    out = model.forward_features(images)
    return {"cls": out["x_norm_clstoken"], "patch_tokens": out["x_norm_patchtokens"],
            "register_tokens": out["x_norm_regtokens"]}


# ---------------------------------------------------------------------------------------------------
# the loaded result
@dataclasses.dataclass
class Pretrained:
    """A loaded backbone with its preprocessing.

    `model`: DinoVisionTransformer. `config`: its ViTConfig. `source` / `format`: what was read.
    `interpolation`: position-embedding resampling at non-native sizes: "official" (the DINOv2 code),
    "transformers" (transformers' Dinov2Model), "official=transformers" (register models: both agree)
    or "custom". `heads`: DINOHead modules when the file holds them and `with_heads` was asked.
    """

    model: Any
    config: ViTConfig
    source: str
    format: str
    image_size: int = 224
    heads: dict = dataclasses.field(default_factory=dict)
    _features: Callable | None = dataclasses.field(default=None, repr=False)

    @property
    def interpolation(self) -> str:
        return interpolation_name(self.config)

    @property
    def resize_size(self) -> int:
        from dinov2_jax.data.augmentations import eval_resize_size

        return eval_resize_size(self.image_size)

    def preprocess(self, image) -> np.ndarray:
        """PIL image / uint8 array / image path -> float32 [S, S, 3]: the official eval transform (resize the
        shorter side to S*256/224, bicubic; center crop S; ImageNet mean/std), S = `image_size`."""
        from dinov2_jax.data.augmentations import eval_transform

        if isinstance(image, (str, os.PathLike)):
            from PIL import Image

            with Image.open(image) as img:
                return eval_transform(img.convert("RGB"), resize_size=self.resize_size, crop_size=self.image_size)
        return eval_transform(image, resize_size=self.resize_size, crop_size=self.image_size)

    def features(self, images) -> dict:
        """Jitted: images [B, H, W, 3] (preprocessed) -> {"cls" [B, D], "patch_tokens" [B, N, D],
        "register_tokens" [B, R, D]}."""
        if self._features is None:
            self._features = jit_module(self.model, backbone_features)
        return self._features(images)


def interpolation_name(cfg: ViTConfig) -> str:
    off, hf = cfg.with_interpolation("official"), cfg.with_interpolation("transformers")
    if cfg == off and cfg == hf:
        return "official=transformers"
    if cfg == off:
        return "official"
    if cfg == hf:
        return "transformers"
    return "custom"


# ---------------------------------------------------------------------------------------------------
# locating files
def torch_hub_dir() -> str:
    """The torch hub checkpoint cache (`$TORCH_HOME/hub/checkpoints`, TORCH_HOME default ~/.cache/torch),
    computed without importing torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")), "torch")
    return os.path.join(home, "hub", "checkpoints")


def official_url(name: str) -> str:
    """Official download URL of a hub backbone (hubconf.py `_make_dinov2_model`)."""
    if name not in HUB_NAMES:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(HUB_NAMES)}")
    short = name.removesuffix("_reg")
    return OFFICIAL_URL.format(short=short, reg="_reg4" if name.endswith("_reg") else "")


def _offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("DINOV2_JAX_OFFLINE", "HF_HUB_OFFLINE"))


def _download(url: str, dest: str, timeout: float = 30.0) -> None:
    import urllib.request

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + ".part"
    with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
        while chunk := r.read(1 << 20):
            f.write(chunk)
    os.replace(tmp, dest)


def resolve_hub_name(name: str, *, download: bool = True, cache_dir: str | None = None) -> str:
    """Path of the official `.pth` of hub backbone `name`: the cached file, else downloaded into the cache
    (when `download` and online). Offline: FileNotFoundError saying which file to put where."""
    url = official_url(name)
    dest = os.path.join(cache_dir or torch_hub_dir(), os.path.basename(url))
    if os.path.isfile(dest):
        return dest
    why = "downloads are disabled" if not download else "offline mode (DINOV2_JAX_OFFLINE / HF_HUB_OFFLINE)"
    if download and not _offline():
        try:
            logger.info("downloading %s -> %s", url, dest)
            _download(url, dest)
            return dest
        except OSError as e:  # URLError, timeouts, DNS failures, disk errors
            why = f"download failed ({type(e).__name__}: {e})"
    raise FileNotFoundError(
        f"{name}: weights not found and {why}. Put the official file {url} at {dest} "
        f"(or pass its path), or the Hugging Face folder of {HF_REPOS[name]} "
        f"(config.json + model.safetensors) as the path.")


def resolve_hf_repo(repo_id: str, *, download: bool = True, cache_dir: str | None = None) -> str:
    """Local folder of an HF repo (`facebook/dinov2-small`) with config.json + model.safetensors."""
    files = ("config.json", "model.safetensors")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        snapshot_download = None
    if snapshot_download is not None:
        try:
            return snapshot_download(repo_id, allow_patterns=list(files), cache_dir=cache_dir,
                                     local_files_only=not download or _offline())
        except Exception as e:  # noqa: BLE001 - hub errors come in many types; report the fix
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    else:
        why = "huggingface_hub is not installed"
    raise FileNotFoundError(f"{repo_id}: not in the Hugging Face cache and not downloadable ({why}). Download "
                            f"{' and '.join(files)} from https://huggingface.co/{repo_id} into a folder and pass "
                            "that folder.")


# ---------------------------------------------------------------------------------------------------
# reading checkpoints
@dataclasses.dataclass
class Checkpoint:
    """What a weights file holds: the backbone (official-layout state dict) and its architecture.

    `config` None fields come from the file alone when `known` lists them; `heads`: head state dicts.
    """

    backbone: dict | None  # official-layout numpy state dict (None for converted dirs: `converted_dir` set)
    config: ViTConfig
    format: str
    known: tuple = ()  # layout fields the file determines (others were inferred by convention)
    heads: dict = dataclasses.field(default_factory=dict)
    converted_dir: str | None = None


def _is_orbax_run(path: str) -> str | None:
    """The Checkpointer directory (`RUN/ckpt`) if `path` is RUN, RUN/ckpt or RUN/ckpt/<step>."""
    p = os.path.abspath(path)
    if os.path.basename(p).isdigit() and os.path.isdir(os.path.join(p, "state")):
        return p
    for cand in (os.path.join(p, "ckpt"), p):
        if os.path.isdir(cand) and any(d.isdigit() and os.path.isdir(os.path.join(cand, d, "state"))
                                       for d in os.listdir(cand)):
            return cand
    return None


def read_checkpoint(path: str, *, interpolation: str | None = None) -> Checkpoint:
    """Read any supported weights file / folder (see module doc) into a Checkpoint."""
    from dinov2_jax import convert
    from dinov2_jax.weights import layouts

    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "arch.json")):
            with open(os.path.join(path, "arch.json")) as f:
                cfg = ViTConfig.from_kwargs(json.load(f))
            return Checkpoint(None, cfg, "dinov2_jax", known=tuple(dataclasses.asdict(cfg)), converted_dir=path)
        if os.path.isfile(os.path.join(path, "config.json")):
            return _read_hf_dir(path, interpolation or "transformers")
        run = _is_orbax_run(path)
        if run is not None:
            return _read_orbax(run)
        raise WeightsError(f"{path!r} is a folder but holds no arch.json (dinov2_jax export), config.json "
                           "(Hugging Face) or Orbax training checkpoint (ckpt/<step>/state)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights {path!r} not found (expected an official .pth, a Hugging Face folder, a "
                                f"dinov2_jax directory or a hub name: {', '.join(HUB_NAMES)})")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        sd = load_file(path)
        if layouts.is_hf_state_dict(sd):
            cfg_path = os.path.join(os.path.dirname(path), "config.json")
            if not os.path.isfile(cfg_path):
                raise WeightsError(f"{path}: a Hugging Face state dict needs its config.json next to it")
            return _read_hf_dir(os.path.dirname(path), interpolation or "transformers")
        parts = convert.split_checkpoint(sd)
        return _from_state_dict(parts.pop("backbone"), path, heads=parts)
    from dinov2_jax.weights.pth import read_pth

    obj = read_pth(path)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping) and "teacher" not in obj:
        obj = obj["state_dict"]
    if layouts.is_hf_state_dict(obj):
        raise WeightsError(f"{path}: a Hugging Face state dict; load its folder (config.json + weights) instead")
    parts = convert.split_checkpoint(obj)
    return _from_state_dict(parts.pop("backbone"), path, heads=parts)


def _from_state_dict(sd: Mapping, path: str, heads: dict | None = None) -> Checkpoint:
    from dinov2_jax import convert
    from dinov2_jax.weights import layouts

    fmt = "pth"
    if layouts.is_timm_state_dict(sd):
        logger.info("%s has no mask_token: read as a timm state dict (mask_token set to zeros, its initial value; "
                    "it only replaces masked patches in training)", path)
        sd, fmt = layouts.timm_to_official(sd), "timm"
    try:
        arch = convert.infer_arch(sd)
    except convert.ConversionError as e:
        raise WeightsError(f"{path}: {e}") from None
    cfg = ViTConfig.from_kwargs(arch)
    known = tuple(k for k in dataclasses.asdict(cfg) if k not in ("num_heads", "interpolate_antialias",
                                                                   "interpolate_offset"))
    return Checkpoint(dict(sd), cfg, fmt, known=known, heads=heads or {})


def _read_hf_dir(path: str, interpolation: str) -> Checkpoint:
    from dinov2_jax.weights import layouts

    with open(os.path.join(path, "config.json")) as f:
        hf_cfg = json.load(f)
    try:
        cfg = layouts.hf_config_to_vit(hf_cfg, interpolation)
    except KeyError as e:
        raise WeightsError(f"{path}/config.json lacks {e}") from None
    files = [f for f in ("model.safetensors", "pytorch_model.bin") if os.path.isfile(os.path.join(path, f))]
    if not files:
        if os.path.isfile(os.path.join(path, "model.safetensors.index.json")):
            files = ["model.safetensors.index.json"]
        else:
            raise WeightsError(f"{path}: config.json but no model.safetensors / pytorch_model.bin next to it")
    wpath = os.path.join(path, files[0])
    if files[0] == "model.safetensors":
        from safetensors.numpy import load_file

        sd = load_file(wpath)
    elif files[0].endswith(".index.json"):
        from safetensors.numpy import load_file

        with open(wpath) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        sd = {}
        for s in shards:
            sd.update(load_file(os.path.join(path, s)))
    else:
        from dinov2_jax.weights.pth import read_pth

        sd = read_pth(wpath)
    official = layouts.hf_to_official(sd)
    return Checkpoint(official, cfg, "transformers", known=tuple(dataclasses.asdict(cfg)))


def _read_orbax(ckpt_dir: str) -> Checkpoint:
    """The evaluated backbone of a training checkpoint: the EMA teacher, or for a distillation run (frozen
    pretrained teacher) the student, as the trainer's exports."""
    from dinov2_jax import convert
    from dinov2_jax.train.checkpoint import Checkpointer

    step = None
    if os.path.basename(ckpt_dir).isdigit():
        ckpt_dir, step = os.path.dirname(ckpt_dir), int(os.path.basename(ckpt_dir))
    ck = Checkpointer(ckpt_dir)
    try:
        step = ck.latest_step() if step is None else step
        if step is None:
            raise WeightsError(f"{ckpt_dir}: no complete training checkpoint")
        raw, _, run_cfg = ck.restore_raw(step)
    finally:
        ck.close()
    run_cfg = run_cfg or {}
    teacher_cfg = run_cfg.get("teacher", {}) or {}
    part = "student" if teacher_cfg.get("pretrained_weights") else "teacher"
    if part not in raw or "backbone" not in raw[part]:
        raise WeightsError(f"{ckpt_dir}/{step}: no {part}.backbone parameters in the training state")
    sd = params_tree_to_official(raw[part]["backbone"])
    arch = convert.infer_arch(sd)
    student = run_cfg.get("student", {}) or {}
    arch_name = (teacher_cfg.get("arch") if part == "teacher" else None) or student.get("arch", "")
    heads = student.get("num_heads") or ARCH_SIZES.get(str(arch_name).removesuffix("_memeff"), (0, 0, 0))[2]
    if heads:
        arch["num_heads"] = int(heads)
    for k in ("interpolate_antialias", "interpolate_offset"):
        if k in student:
            arch[k] = student[k]
    cfg = ViTConfig.from_kwargs(arch)
    logger.info("training checkpoint %s step %d: %s backbone", ckpt_dir, step, part)
    return Checkpoint(sd, cfg, "orbax", known=tuple(dataclasses.asdict(cfg)))


def params_tree_to_official(tree: Mapping) -> dict:
    """JAX backbone parameter tree (nested dicts as `nnx.state(model, nnx.Param).to_pure_dict()`) ->
    official-layout numpy state dict."""
    from dinov2_jax import convert

    flat = {}

    def walk(node, path):
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, path + (k,))
        else:
            flat[path] = node

    walk(tree, ())
    out = {}
    for path, v in flat.items():
        path = tuple(int(p) if isinstance(p, str) and p.isdigit() else p for p in path)
        key, _, to_torch = convert._param_rules(None, path)
        out[key] = np.asarray(to_torch(np.asarray(v, np.float32)), np.float32)
    return out


# ---------------------------------------------------------------------------------------------------
# building
def _as_config(arch) -> ViTConfig:
    if isinstance(arch, ViTConfig):
        return arch
    if isinstance(arch, str) and arch.endswith(".json") and os.path.isfile(arch):
        with open(arch) as f:
            return ViTConfig.from_kwargs(json.load(f))
    if isinstance(arch, str):
        return ViTConfig.preset(arch)
    if isinstance(arch, Mapping):
        return ViTConfig.from_kwargs(arch)
    raise TypeError(f"arch must be a hub name, a ViTConfig or a dict, got {type(arch).__name__}")


def resolve_config(ckpt: Checkpoint, arch=None, *, source: str = "", interpolation: str | None = None) -> ViTConfig:
    """The architecture to build: the requested one (checked against what the file determines) or the file's."""
    cfg = ckpt.config
    if arch is not None:
        want = _as_config(arch)
        found = {k: v for k, v in dataclasses.asdict(cfg).items() if k in ckpt.known}
        diffs = want.layout_differences(found)
        if diffs:
            name = cfg.hub_name()
            hint = f" (the weights look like {name!r})" if name else ""
            label = arch if isinstance(arch, str) else "the requested architecture"
            raise WeightsError(f"weights {source!r} do not match {label}{hint}: " + "; ".join(diffs))
        keep_interp = ckpt.format in ("transformers", "dinov2_jax", "orbax")
        cfg = want.replace(interpolate_antialias=cfg.interpolate_antialias,
                           interpolate_offset=cfg.interpolate_offset) if keep_interp else want
    else:
        inferred = [k for k in dataclasses.asdict(cfg) if k not in ckpt.known]
        if inferred:
            logger.info("architecture of %s inferred from its state dict: %s (by convention: %s)", source,
                        json.dumps(cfg.kwargs()), ", ".join(inferred))
    if interpolation is not None:
        cfg = cfg.with_interpolation(interpolation)
    return cfg


def build_from_checkpoint(ckpt: Checkpoint, cfg: ViTConfig, *, dtype="float32", attn_impl: str = "xla",
                          remat: str = "none", scan_blocks: bool = False, with_heads: bool = False):
    """(model, heads) with every parameter taken from `ckpt` (strict). Built abstractly: nothing is
    randomly initialised."""
    from dinov2_jax import convert

    runtime = dict(dtype=dtype, attn_impl=attn_impl, remat=remat, scan_blocks=scan_blocks)
    if ckpt.converted_dir is not None:
        diffs = cfg.layout_differences(ckpt.config)
        if diffs:
            raise WeightsError(f"{ckpt.converted_dir}: the requested architecture differs from its arch.json: "
                               + "; ".join(diffs))
        model, heads = convert.load_converted(ckpt.converted_dir, with_heads=True, **runtime,
                                              interpolate_antialias=cfg.interpolate_antialias,
                                              interpolate_offset=cfg.interpolate_offset)
        return model, (heads if with_heads else {})
    model = convert.fill_abstract(cfg.build_abstract(**runtime), ckpt.backbone)
    heads = {name: convert.head_from_state_dict(hsd) for name, hsd in ckpt.heads.items()} if with_heads else {}
    return model, heads


def from_pretrained(name_or_path: str, *, arch=None, image_size: int = 224, dtype="float32",
                    attn_impl: str | None = None, interpolation: str | None = None, with_heads: bool = False,
                    download: bool = True, cache_dir: str | None = None, remat: str = "none",
                    scan_blocks: bool = False, num_heads: int | None = None) -> Pretrained:
    """Load a DINOv2 backbone from any supported source (see the module doc) -> Pretrained.

    arch: hub name / ViTConfig / kwargs dict the weights must match (default: take the file's).
    interpolation: "official" or "transformers" position-embedding resampling (default: the file's; HF
    folders follow transformers, .pth files the official code). image_size: crop size of `preprocess`.
    dtype / attn_impl: compute dtype and attention backend (default: fused on GPU for 16-bit).
    download: fetch a hub name / HF repo id that is not on disk (never when DINOV2_JAX_OFFLINE is set).
    num_heads: for a state dict of a non-standard model (the file does not store it; inferred as dim / 64).
    """
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    path = os.fspath(name_or_path)
    if path in HUB_NAMES and not os.path.exists(path):
        arch = path if arch is None else arch
        path = resolve_hub_name(path, download=download, cache_dir=cache_dir)
    elif not os.path.exists(path) and re.fullmatch(r"[\w.-]+/[\w.-]+", path) and not path.endswith(
            (".pth", ".pt", ".bin", ".safetensors")):
        path = resolve_hf_repo(path, download=download, cache_dir=cache_dir)
    ckpt = read_checkpoint(path, interpolation=interpolation)
    if num_heads is not None:
        if "num_heads" in ckpt.known and ckpt.config.num_heads != num_heads:
            raise WeightsError(f"{path}: the file says num_heads={ckpt.config.num_heads}, not {num_heads}")
        ckpt = dataclasses.replace(ckpt, config=ckpt.config.replace(num_heads=num_heads),
                                   known=ckpt.known + ("num_heads",))
    cfg = resolve_config(ckpt, arch, source=path, interpolation=interpolation)
    if attn_impl is None:
        from dinov2_jax.hub import default_attn_impl

        attn_impl = default_attn_impl(dtype)
    model, heads = build_from_checkpoint(ckpt, cfg, dtype=dtype, attn_impl=attn_impl, remat=remat,
                                         scan_blocks=scan_blocks, with_heads=with_heads)
    if with_heads and not heads:
        raise WeightsError(f"{path}: holds no DINO / iBOT heads (with_heads=True needs a teacher checkpoint or a "
                           "training export)")
    if image_size % cfg.patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {cfg.patch_size}")
    logger.info("loaded %s (%s, %s) from %s; pos-embed interpolation: %s", cfg.hub_name() or "backbone",
                ckpt.format, json.dumps({k: cfg.kwargs()[k] for k in ("embed_dim", "depth", "num_heads")}),
                path, interpolation_name(cfg))
    return Pretrained(model=model, config=cfg, source=path, format=ckpt.format, image_size=image_size,
                      heads=heads)


# ---------------------------------------------------------------------------------------------------
# writing
def export_pth(model, path: str, *, heads: Mapping | None = None, teacher: bool = False, block_chunks: int = 0,
               overwrite: bool = False) -> str:
    """Official `.pth`: the hub backbone state dict, or with `teacher` the `teacher_checkpoint.pth` layout
    `{"teacher": {backbone.*, dino_head.*, [ibot_head.*]}}` (needs the heads). No torch needed."""
    from dinov2_jax import convert
    from dinov2_jax.weights.pth import write_pth

    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    sd = convert.params_to_torch_state_dict(model, block_chunks=block_chunks)
    if teacher:
        if not heads or "dino_head" not in heads:
            raise WeightsError("a teacher checkpoint needs the DINO head (and the iBOT head when the run had one), "
                               "but these weights hold the backbone only; write the plain backbone (no --teacher) "
                               "or export from a training export eval/training_*/ that has heads.json")
        full = {f"backbone.{k}": v for k, v in sd.items()}
        for name, head in heads.items():
            full.update({f"{name}.{k}": v for k, v in convert.params_to_torch_state_dict(head).items()})
        obj = {"teacher": full}
    else:
        obj = sd
    return write_pth(obj, path, overwrite=overwrite)


def export_hf(model, directory: str, *, overwrite: bool = False) -> str:
    """A folder that `transformers.Dinov2Model.from_pretrained` (or `Dinov2WithRegistersModel`) loads:
    config.json + model.safetensors (float32)."""
    from safetensors.numpy import save_file

    from dinov2_jax import convert
    from dinov2_jax.weights import layouts

    cfg = ViTConfig.from_kwargs(model.arch)
    sd, hf_cfg = layouts.official_to_hf(convert.params_to_torch_state_dict(model), cfg)
    if cfg.num_register_tokens == 0 and interpolation_name(cfg) != "transformers":
        logger.warning("transformers resamples the position embedding by target size (no offset): at image sizes "
                       "other than %d its outputs differ from this model's (%s interpolation)", cfg.img_size,
                       interpolation_name(cfg))
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, "model.safetensors")
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, target, metadata={"format": "pt"})
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2, sort_keys=True)
    return directory
