"""DINOv2 self-distillation: state creation and the pure, compiled-once train step
(official `SSLMetaArch.forward_backward` in `dinov2/train/ssl_meta_arch.py` and the loop in `dinov2/train/train.py`).

    state = create_train_state(cfg, key)
    train_step = jax.jit(make_train_step(cfg), donate_argnums=0)
    state, metrics = train_step(state, batch, hparams)     # hparams = schedules.hparams_at(scheds, it)

One step = official `forward_backward` + per-submodule clip + AdamW + EMA teacher update:
  teacher (no grad, no masks, no drop path) on the 2 global crops -> cls tokens SWAPPED by crop for the
  DINO targets, patch tokens gathered at `mask_indices_list` (same crop) for the iBOT targets, both through
  the teacher head(s); targets by softmax centering (lagged EMA centers, state) or Sinkhorn-Knopp;
  student on the global crops (with masks) and the local crops (separately: the official packed forward
  is token-wise equivalent), stochastic depth keys from `state.rng`;
  loss = w_dino*(dino_local + dino_global) + koleo + w_ibot*ibot, with the official normalisations;
  grads -> clip each submodule (DINO v1: each parameter) to `optim.clip_grad` -> AdamW with per-parameter
  multipliers ->
  teacher <- mom*teacher + (1-mom)*student (skipped for a frozen pretrained teacher) -> centers updated.
DINO v1 (configs/dino_vits16.py) is this step with ibot.loss_weight = koleo_loss_weight = 0, no masks,
`dino.head_norm_last_layer` (the head's weight-norm gain frozen at its value, 1) and per-parameter clipping.
Shapes are static for a config (padded masked-token buffer of `upperbound` rows), so the step compiles once.
Parameters are float32; the forward runs in `cfg.compute_precision.compute_dtype`; losses, softmax,
centering and Sinkhorn run in float32.
"""
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
from flax import nnx

from dinov2_jax.losses import centering as C
from dinov2_jax.losses.dino_loss import dino_loss
from dinov2_jax.losses.ibot_loss import ibot_masked_loss
from dinov2_jax.losses.koleo_loss import koleo_loss
from dinov2_jax.models.config import ViTConfig
from dinov2_jax.models.dino_head import DINOHead
from dinov2_jax.padding import valid_rows
from dinov2_jax.train.ema import ema_update
from dinov2_jax.train.optimizer import apply_updates, clip_by_submodule, clip_per_parameter, make_adam
from dinov2_jax.train.param_groups import ParamMultipliers, build_param_multipliers
from dinov2_jax.train.precision import resolve_compute_dtype
from dinov2_jax.train.state import TrainState

N_GLOBAL_CROPS = 2  # hard-coded in the official code
BATCH_KEYS = ("collated_global_crops", "collated_local_crops", "collated_masks", "mask_indices_list",
              "masks_weight", "n_masked_patches")
SIZE_OVERRIDE_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio")  # optional student.* keys
HPARAM_KEYS = ("lr", "wd", "mom", "teacher_temp", "last_layer_lr")


# ---------------------------------------------------------------------------------------------------
# models
def compute_dtype(cfg: ml_collections.ConfigDict):
    """The forward's dtype on this platform (train/precision.py)."""
    return resolve_compute_dtype(cfg.compute_precision.compute_dtype)


def is_frozen_teacher(cfg: ml_collections.ConfigDict) -> bool:
    """Distillation: a pretrained teacher (teacher.pretrained_weights) is frozen, never EMA-updated."""
    return bool(cfg.teacher.get("pretrained_weights", ""))


def backbone_config(cfg, *, teacher: bool = False,
                    arch_overrides: Optional[Dict[str, Any]] = None) -> Tuple[ViTConfig, Dict[str, Any]]:
    """(ViTConfig, runtime options) of the student's (or the teacher's) backbone in an SSL config.

    The arch is `student.arch` (or `teacher.arch` for a distillation teacher) at the global crop size, with
    the `student.*` layout keys; only the student gets stochastic depth (official `build_model`).
    `student.{embed_dim,depth,num_heads,mlp_ratio}`, where present (JAX extras of tiny configs such as
    quickstart), override the arch's sizes; `arch_overrides` (tests) override everything.
    """
    s = cfg.student
    sizes = {k: s[k] for k in SIZE_OVERRIDE_KEYS if k in s}
    arch = cfg.teacher.arch if teacher and cfg.teacher.get("arch", "") else s.arch
    vit = ViTConfig.from_arch(
        arch, img_size=cfg.crops.global_crops_size, patch_size=s.patch_size, init_values=s.layerscale,
        ffn_layer=s.ffn_layer, qkv_bias=s.qkv_bias, proj_bias=s.proj_bias, ffn_bias=s.ffn_bias,
        num_register_tokens=s.num_register_tokens, interpolate_antialias=s.interpolate_antialias,
        interpolate_offset=s.interpolate_offset, **{**sizes, **(arch_overrides or {})})
    runtime = dict(attn_impl=s.attn_impl, remat=s.remat, scan_blocks=s.scan_blocks, dtype=compute_dtype(cfg))
    if not teacher:
        runtime.update(drop_path_rate=s.drop_path_rate, drop_path_uniform=s.drop_path_uniform)
    return vit, runtime


def build_modules(cfg, key: jax.Array, *, teacher: bool = False,
                  arch_overrides: Optional[Dict[str, Any]] = None) -> Dict[str, nnx.Module]:
    """{"backbone", "dino_head"[, "ibot_head"]} NNX modules of the student (or the teacher).

    `arch_overrides`: extra backbone kwargs (e.g. `embed_dim=32, depth=2, num_heads=2` for tiny test
    models); they apply to student and teacher alike.
    """
    if not cfg.dino.loss_weight > 0:
        raise ValueError("dino.loss_weight must be > 0: the official SSLMetaArch has no DINO-free path "
                         "(its local-crop term always uses the DINO loss).")
    vit, runtime = backbone_config(cfg, teacher=teacher, arch_overrides=arch_overrides)
    k_bb, k_dh, k_ih = jax.random.split(key, 3)
    backbone = vit.build(rngs=nnx.Rngs(k_bb), **runtime)
    d = backbone.embed_dim
    dt = compute_dtype(cfg)
    mods = {"backbone": backbone,
            "dino_head": DINOHead(d, cfg.dino.head_n_prototypes, nlayers=cfg.dino.head_nlayers,
                                  hidden_dim=cfg.dino.head_hidden_dim, bottleneck_dim=cfg.dino.head_bottleneck_dim,
                                  dtype=dt, rngs=nnx.Rngs(k_dh))}
    if cfg.ibot.loss_weight > 0 and cfg.ibot.separate_head:
        mods["ibot_head"] = DINOHead(d, cfg.ibot.head_n_prototypes, nlayers=cfg.ibot.head_nlayers,
                                     hidden_dim=cfg.ibot.head_hidden_dim,
                                     bottleneck_dim=cfg.ibot.head_bottleneck_dim, dtype=dt, rngs=nnx.Rngs(k_ih))
    return mods


def _split(mods: Dict[str, nnx.Module]):
    graphdefs, params = {}, {}
    for name, m in mods.items():
        g, p, rest = nnx.split(m, nnx.Param, ...)
        if len(jax.tree_util.tree_leaves(rest)):
            raise ValueError(f"{name} holds non-parameter state; the train step only carries nnx.Param")
        graphdefs[name], params[name] = g, p.to_pure_dict()
    return graphdefs, params


def _merge(graphdef, params) -> nnx.Module:
    return nnx.merge(graphdef, nnx.State(params))


def ibot_out_dim(cfg) -> int:
    return cfg.ibot.head_n_prototypes if cfg.ibot.separate_head else cfg.dino.head_n_prototypes


# ---------------------------------------------------------------------------------------------------
# state
def create_train_state(cfg, key: jax.Array, *, mesh=None,
                       arch_overrides: Optional[Dict[str, Any]] = None) -> TrainState:
    """Fresh state: random student, teacher = copy of the student (official `prepare_for_distributed_training`).

    With distillation (`teacher.pretrained_weights` set) the teacher is built from `teacher.arch` and
    must be filled with the pretrained weights by the caller (e.g. `state.replace(teacher=...)`).
    `mesh`: if given, the state is born sharded: created under jit with the shardings of
    `dinov2_jax.parallel.sharding.param_shardings` as outputs (FSDP for arrays of at least
    `mesh.fsdp_min_size` elements), so it never exists whole on one device.
    """
    if mesh is not None:
        from dinov2_jax.parallel.sharding import init_sharded

        return init_sharded(lambda k: create_train_state(cfg, k, arch_overrides=arch_overrides), mesh, key,
                            min_size=cfg.mesh.fsdp_min_size)
    k_model, k_teacher, k_rng = jax.random.split(key, 3)
    _, student = _split(build_modules(cfg, k_model, arch_overrides=arch_overrides))
    if is_frozen_teacher(cfg) and cfg.teacher.get("arch", "") and cfg.teacher.arch != cfg.student.arch:
        _, teacher = _split(build_modules(cfg, k_teacher, teacher=True, arch_overrides=arch_overrides))
    else:
        teacher = jax.tree.map(jnp.copy, student)
    adam = make_adam(cfg.optim.adamw_beta1, cfg.optim.adamw_beta2)
    k = cfg.dino.head_n_prototypes
    state = TrainState(student=student, teacher=teacher, opt_state=adam.init(student),
                       dino_center=C.init_center_state(k), ibot_center=C.init_center_state(ibot_out_dim(cfg)),
                       step=jnp.zeros((), jnp.int32), rng=k_rng)
    return state


# ---------------------------------------------------------------------------------------------------
# step
def _check_batch(batch, n_local: int) -> Tuple[int, int]:
    """(groups G, images per group b) of a group-major batch (docs/design.md, Batch)."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"batch is missing {missing}; expected the keys of docs/design.md (Batch)")
    idx = batch["mask_indices_list"]
    if idx.ndim != 2 or batch["masks_weight"].shape != idx.shape or batch["n_masked_patches"].shape != idx.shape[:1]:
        raise ValueError(f"mask_indices_list and masks_weight must be [G, U] and n_masked_patches [G] (one row "
                         f"per device batch), got {idx.shape}, {batch['masks_weight'].shape} and "
                         f"{batch['n_masked_patches'].shape}; collate with dinov2_jax.data.masking.collate")
    G = idx.shape[0]
    g = batch["collated_global_crops"]
    if g.ndim != 4 or g.shape[0] % (N_GLOBAL_CROPS * G):
        raise ValueError(f"collated_global_crops must be [G*2*b, S, S, 3] with G={G} groups, got {g.shape}")
    b = g.shape[0] // (N_GLOBAL_CROPS * G)
    loc = batch["collated_local_crops"]
    if loc.shape[0] != n_local * b * G:
        raise ValueError(f"collated_local_crops has {loc.shape[0]} rows, expected G ({G}) x "
                         f"crops.local_crops_number ({n_local}) x b ({b})")
    if batch["collated_masks"].shape[0] != g.shape[0]:
        raise ValueError(f"collated_masks must be [G*2*b, N] = [{g.shape[0]}, N], got {batch['collated_masks'].shape}")
    return G, b


def _crop_major(x: jax.Array, G: int, n_crops: int) -> jax.Array:
    """Group-major rows [G, n_crops, b, ...] -> crop-major [n_crops, G*b, ...] (image order kept)."""
    x = x.reshape((G, n_crops, -1) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape((n_crops, -1) + x.shape[3:])


def _gather_masked(patches: jax.Array, idx: jax.Array) -> jax.Array:
    """patches [G*2b, N, D], idx [G, U] (into each group's flat [2b*N] tokens) -> [G*U, D].

    Per group, so a mesh that shards whole groups gathers on the device that holds them."""
    G, U = idx.shape
    flat = patches.reshape((G, -1, patches.shape[-1]))
    return jnp.take_along_axis(flat, idx[..., None], axis=1).reshape(G * U, -1)


def _heads_on_groups(head, pieces, G: int) -> list:
    """One head call on several row sets (the official packed call; the head is token-wise).

    pieces: arrays [G*r_i, D], group-major. They are joined per group ([G, sum r_i, D]) rather than end
    to end, so on a mesh each device keeps its own groups' rows (an end-to-end concatenation of
    sharded arrays moves rows between devices). Returns the head outputs [G*r_i, K] per piece, float32.
    """
    sizes = [x.shape[0] // G for x in pieces]
    x = jnp.concatenate([p.reshape((G, r, -1)) for p, r in zip(pieces, sizes)], axis=1)
    out = head(x.reshape(G * sum(sizes), -1)).astype(jnp.float32).reshape(G, sum(sizes), -1)
    offsets = np.cumsum([0] + sizes)
    return [out[:, a:b].reshape(G * (b - a), -1) for a, b in zip(offsets[:-1], offsets[1:])]


CLIP_MODES = {"per_submodule": clip_by_submodule, "per_parameter": clip_per_parameter}


def _freeze_gain(student):
    """DINO v1 `norm_last_layer`: no gradient reaches the DINO head's weight-norm gain `weight_g`."""
    head = student["dino_head"]
    ll = dict(head["last_layer"], weight_g=jax.lax.stop_gradient(head["last_layer"]["weight_g"]))
    return dict(student, dino_head=dict(head, last_layer=ll))


def make_train_step(cfg, *, arch_overrides: Optional[Dict[str, Any]] = None,
                    frozen_teacher: Optional[bool] = None) -> Callable:
    """Returns the pure `train_step(state, batch, hparams) -> (state, metrics)` (wrap it in jax.jit).

    The batch is group-major (docs/design.md, Batch): G per-device batches of b images, each laid out
    and masked as one GPU of the official code. Everything the official code does per GPU is done per
    group (stochastic-depth subsets, masked-token gather and head, KoLeo, iBOT center), so on a mesh
    that splits the groups over devices that work stays on the devices; the official all-reduces
    (DINO center, Sinkhorn sums, gradients) are global sums. One group is the single-GPU case.
    frozen_teacher: skip the EMA update (distillation from a pretrained teacher). Default:
      `teacher.pretrained_weights` is set.
    hparams: {"lr", "wd", "mom", "teacher_temp", "last_layer_lr"} float32 scalars.
    metrics: dino_local_crops_loss, dino_global_crops_loss, koleo_loss (displayed /2), ibot_loss (/2),
      total_loss (sum of the displayed values, as official), loss (the optimised value),
      grad_norm/{backbone, dino_head[, ibot_head]} (before clipping), n_masked_patches.
    """
    frozen = is_frozen_teacher(cfg) if frozen_teacher is None else bool(frozen_teacher)
    # graph structure (no real arrays) of student and teacher modules
    key0 = jax.random.key(0)
    s_graph, s_abs = _split(nnx.eval_shape(lambda: build_modules(cfg, key0, arch_overrides=arch_overrides)))
    t_graph, _ = _split(nnx.eval_shape(lambda: build_modules(cfg, key0, teacher=True,
                                                            arch_overrides=arch_overrides)))
    if not frozen and cfg.teacher.get("arch", "") and cfg.teacher.arch != cfg.student.arch:
        raise ValueError(f"teacher.arch={cfg.teacher.arch!r} differs from student.arch={cfg.student.arch!r}: "
                         "an EMA teacher must match the student; set teacher.pretrained_weights for distillation")
    depth = len(s_abs["backbone"]["blocks"])
    mults = build_param_multipliers(s_abs, depth, cfg.optim.layerwise_decay, cfg.optim.patch_embed_lr_mult)
    norm_last_layer = bool(cfg.dino.get("head_norm_last_layer", False))
    if norm_last_layer:  # DINO v1: the gain has requires_grad=False, so it is in no optimizer group
        mults["dino_head"]["last_layer"]["weight_g"] = ParamMultipliers(0.0, 0.0, True)
    clip_mode = cfg.optim.get("clip_grad_mode", "per_submodule")
    if clip_mode not in CLIP_MODES:
        raise ValueError(f"optim.clip_grad_mode={clip_mode!r}; use 'per_submodule' (DINOv2) or "
                         "'per_parameter' (DINO v1)")
    clip_fn = CLIP_MODES[clip_mode]
    adam = make_adam(cfg.optim.adamw_beta1, cfg.optim.adamw_beta2)

    n_local = int(cfg.crops.local_crops_number)
    w_dino, w_ibot, w_koleo = float(cfg.dino.loss_weight), float(cfg.ibot.loss_weight), float(cfg.dino.koleo_loss_weight)
    do_ibot, do_koleo = w_ibot > 0, w_koleo > 0
    separate = bool(cfg.ibot.separate_head) and do_ibot
    centering = cfg.train.centering
    if centering not in ("centering", "sinkhorn_knopp"):
        raise ValueError(f"train.centering={centering!r}; use 'centering' or 'sinkhorn_knopp'")
    n_local_terms = max(n_local * N_GLOBAL_CROPS, 1)
    n_global_terms = (N_GLOBAL_CROPS - 1) * N_GLOBAL_CROPS
    n_terms = n_local_terms + n_global_terms
    clip = float(cfg.optim.clip_grad or 0.0)

    def teacher_targets(state: TrainState, batch, temp, valid, G):
        tp = state.teacher
        bb = _merge(t_graph["backbone"], tp["backbone"])
        out = bb.forward_features(batch["collated_global_crops"])  # eval: no masks, no drop path
        cls = out["x_norm_clstoken"]  # [G*2b, D]
        # swapped within each group: student crop 1 <-> teacher crop 2
        cls = cls.reshape((G, N_GLOBAL_CROPS, -1, cls.shape[-1]))[:, ::-1].reshape(-1, cls.shape[-1])
        if do_ibot:  # zero buffer rows past n_masked, like the official zero-initialised buffer
            buf = _gather_masked(out["x_norm_patchtokens"], batch["mask_indices_list"])
            buf = jnp.where(valid[:, None], buf, 0).astype(buf.dtype)
        dino_head = _merge(t_graph["dino_head"], tp["dino_head"])
        if not do_ibot:
            (t_cls,), t_patch = _heads_on_groups(dino_head, [cls], G), None
        elif separate:
            (t_cls,) = _heads_on_groups(dino_head, [cls], G)
            (t_patch,) = _heads_on_groups(_merge(t_graph["ibot_head"], tp["ibot_head"]), [buf], G)
        else:
            t_cls, t_patch = _heads_on_groups(dino_head, [cls, buf], G)
        dino_c, ibot_c = state.dino_center, state.ibot_center
        p_patch = None
        if centering == "centering":
            dino_c = C.apply_pending(dino_c)
            p_cls = C.softmax_centered(t_cls, dino_c.center, temp)
            dino_c = C.set_pending(dino_c, C.dino_batch_center(t_cls))
            if do_ibot:
                t_patch = t_patch.astype(jnp.float32)
                ibot_c = C.apply_pending(ibot_c)
                p_patch = C.softmax_centered(t_patch, ibot_c.center, temp)
                group_ids = jnp.repeat(jnp.arange(G), valid.shape[0] // G)
                ibot_c = C.set_pending(ibot_c, C.ibot_batch_center(t_patch, valid, group_ids, G))
        else:
            p_cls = C.sinkhorn_knopp(t_cls, temp)
            if do_ibot:
                p_patch = C.sinkhorn_knopp(t_patch.astype(jnp.float32), temp, valid=valid)
        p_cls = jax.lax.stop_gradient(p_cls)  # [G*2b, K], rows aligned with the student's global crops
        if p_patch is not None:
            p_patch = jax.lax.stop_gradient(p_patch)
        return p_cls, p_patch, dino_c, ibot_c

    def loss_fn(student, batch, p_cls, p_patch, valid, key, G):
        g_crops = batch["collated_global_crops"]
        n_img = g_crops.shape[0] // N_GLOBAL_CROPS  # all groups
        k_g, k_l = jax.random.split(key)
        if norm_last_layer:
            student = _freeze_gain(student)
        bb = _merge(s_graph["backbone"], student["backbone"])
        dino_head = _merge(s_graph["dino_head"], student["dino_head"])
        g_out = bb.forward_features(g_crops, batch["collated_masks"], key=k_g, batch_groups=G)
        g_cls = g_out["x_norm_clstoken"]  # [G*2b, D]
        head_in = [g_cls]
        if n_local > 0:
            l_cls = bb.forward_features(batch["collated_local_crops"], key=k_l, batch_groups=G)["x_norm_clstoken"]
            head_in.insert(0, l_cls)  # [G*nL*b, D]
        if do_ibot:
            # Padded rows keep the group's first token instead of the official zeros: their loss terms
            # are masked out either way (zero gradient), and an all-zero row would hit the
            # L2-normalisation at ||x|| = 0, whose derivative is 0 * inf = NaN under autodiff.
            buf = _gather_masked(g_out["x_norm_patchtokens"], batch["mask_indices_list"])
            if not separate:
                head_in.append(buf)
        pieces = _heads_on_groups(dino_head, head_in, G)
        if n_local > 0:
            s_local = pieces.pop(0)
        s_global = pieces.pop(0)
        if do_ibot:
            s_patch = pieces.pop(0) if not separate else \
                _heads_on_groups(_merge(s_graph["ibot_head"], student["ibot_head"]), [buf], G)[0]

        parts = {}
        total = 0.0
        if n_local > 0:
            parts["dino_local_crops_loss"] = dino_loss(_crop_major(s_local, G, n_local),
                                                       _crop_major(p_cls, G, N_GLOBAL_CROPS)) / n_terms
            total += w_dino * parts["dino_local_crops_loss"]
        parts["dino_global_crops_loss"] = dino_loss(s_global[None], p_cls[None]) * 2 / n_terms
        total += w_dino * parts["dino_global_crops_loss"]
        if do_koleo:
            # per global crop (never across the two crops of an image), per group (official: per GPU)
            koleo = w_koleo * sum(koleo_loss(crop, G) for crop in _crop_major(g_cls, G, N_GLOBAL_CROPS))
            total += koleo
            parts["koleo_loss"] = koleo / 2  # displayed as official
        if do_ibot:
            ibot = ibot_masked_loss(s_patch, p_patch, batch["masks_weight"].reshape(-1), valid, 2 * n_img)
            ibot = ibot * 2 * (1.0 / N_GLOBAL_CROPS)
            total += w_ibot * ibot
            parts["ibot_loss"] = ibot / 2
        return total, parts

    def train_step(state: TrainState, batch: Dict[str, Any], hparams: Dict[str, Any]):
        missing = [k for k in HPARAM_KEYS if k not in hparams]
        if missing:
            raise KeyError(f"hparams missing {missing}; use dinov2_jax.train.schedules.hparams_at")
        G, _ = _check_batch(batch, n_local)
        hp = {k: jnp.asarray(hparams[k], jnp.float32) for k in HPARAM_KEYS}
        u = batch["mask_indices_list"].shape[1]
        n_masked = jnp.asarray(batch["n_masked_patches"], jnp.int32)
        batch = dict(batch, n_masked_patches=n_masked, mask_indices_list=batch["mask_indices_list"].astype(jnp.int32))
        valid = valid_rows(u, n_masked).reshape(-1)  # [G*U]: each group's buffer has a valid prefix

        p_cls, p_patch, dino_c, ibot_c = teacher_targets(state, batch, hp["teacher_temp"], valid, G)
        rng, k_step = jax.random.split(state.rng)
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.student, batch, p_cls, p_patch, valid, k_step, G)
        grads, norms = clip_fn(grads, clip)
        student, opt_state = apply_updates(state.student, grads, state.opt_state, adam, mults, hp)
        teacher = state.teacher if frozen else ema_update(state.teacher, student, hp["mom"])
        new_state = state.replace(student=student, teacher=teacher, opt_state=opt_state, dino_center=dino_c,
                                  ibot_center=ibot_c, step=state.step + 1, rng=rng)
        metrics = dict(parts)
        metrics["total_loss"] = sum(parts.values())
        metrics["loss"] = loss
        metrics.update({f"grad_norm/{k}": v for k, v in norms.items()})
        metrics["n_masked_patches"] = jnp.sum(n_masked)
        return new_state, metrics

    return train_step
