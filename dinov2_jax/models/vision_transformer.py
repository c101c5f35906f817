"""DINOv2 Vision Transformer backbone in Flax NNX (official `DinoVisionTransformer`).

Input images are NHWC `[B, H, W, C]`; H and W must be multiples of the patch size (ValueError naming
the nearest valid sizes otherwise). Token order `[cls, reg_1..reg_R, patch_1..patch_N]`, patches
row-major. Parameter names mirror the torch module names (see docs/design.md) so conversion is a
rename + transpose. Blocks are stored flat (`blocks.{i}`); the official `block_chunks` layout only
changes torch key names and is handled by `dinov2_jax.convert`.
"""
import logging
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dinov2_jax.models.layers.attention import resolve_attn_impl
from dinov2_jax.models.layers.block import Block
from dinov2_jax.models.layers.init import normal, trunc_normal
from dinov2_jax.models.layers.norm import LayerNorm
from dinov2_jax.models.layers.patch_embed import PatchEmbed, check_image_size
from dinov2_jax.models.layers.pos_embed import interpolate_pos_embed

logger = logging.getLogger(__name__)

REMAT_POLICIES = ("none", "full", "dots")
# Compute dtypes by name (configs and CLIs name them; the model stores the name in `arch`).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _dtype_name(dtype) -> str:
    name = jnp.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"Unsupported compute dtype {name!r}; use one of {tuple(DTYPES)}.")
    return name


class DinoVisionTransformer(nnx.Module):
    """Official DINOv2 ViT. All constructor args except `rngs` are JSON-able and kept in `self.arch`.

    `drop_path_rate`: per-block rates `linspace(0, rate, depth)` or uniform (`drop_path_uniform`);
    active only when a `key` is passed to the forward (batch-subset stochastic depth).
    `attn_impl`: "auto" | "xla" | "cudnn" | "pallas" (see layers/attention.py).
    `dtype`: compute dtype of the matmuls and their activations inside the blocks; parameters, the token
    (residual) stream, norms and softmax stay float32 (as the official autocast run).
    `remat`: "none" | "full" | "dots" (rematerialise each block; "dots" saves matmul outputs).
    `scan_blocks`: run runs of identical blocks under one `lax.scan` (their params are stacked on the fly,
    so the parameter tree and checkpoints stay `blocks.{i}`). Same math; compile time no longer grows
    with depth, and the residual-stream gradient becomes a loop carry (XLA:CPU otherwise recomputes it
    per block). Blocks are identical unless their drop-path rates differ (`drop_path_uniform=False`
    with a rate > 0): each run of equal rates is one scan.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 ffn_bias: bool = True, proj_bias: bool = True, drop_path_rate: float = 0.0,
                 drop_path_uniform: bool = False, init_values: float | None = None, ffn_layer: str = "mlp",
                 num_register_tokens: int = 0, interpolate_antialias: bool = False,
                 interpolate_offset: float = 0.1, attn_impl: str = "xla", dtype=jnp.float32,
                 remat: str = "none", scan_blocks: bool = False, *, rngs: nnx.Rngs):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"Unknown remat {remat!r}; choose one of {REMAT_POLICIES}.")
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {num_register_tokens}.")
        if isinstance(dtype, str):
            dtype = DTYPES[_dtype_name(dtype)]
        self.arch = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=float(mlp_ratio), qkv_bias=qkv_bias, ffn_bias=ffn_bias,
            proj_bias=proj_bias, drop_path_rate=float(drop_path_rate), drop_path_uniform=drop_path_uniform,
            init_values=init_values, ffn_layer=ffn_layer, num_register_tokens=num_register_tokens,
            interpolate_antialias=interpolate_antialias, interpolate_offset=float(interpolate_offset),
            attn_impl=attn_impl, dtype=_dtype_name(dtype), remat=remat,
            scan_blocks=bool(scan_blocks))
        self.embed_dim = self.num_features = embed_dim
        self.n_blocks = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        self.interpolate_offset = float(interpolate_offset)
        self.dtype = dtype
        self.remat = remat
        self.scan_blocks = bool(scan_blocks)
        self.attn_impl = resolve_attn_impl(attn_impl, dtype)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, dtype=dtype, rngs=rngs)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nnx.Param(normal(1e-6)(rngs.params(), (1, 1, embed_dim)))
        self.pos_embed = nnx.Param(trunc_normal(0.02)(rngs.params(), (1, num_patches + 1, embed_dim)))
        self.register_tokens = (nnx.Param(normal(1e-6)(rngs.params(), (1, num_register_tokens, embed_dim)))
                                if num_register_tokens else None)
        self.mask_token = nnx.Param(jnp.zeros((1, embed_dim), jnp.float32))

        if drop_path_uniform:
            dpr = [float(drop_path_rate)] * depth
        else:
            dpr = np.linspace(0, drop_path_rate, depth).tolist()
        self.drop_path_rates = dpr
        self.blocks = nnx.List([
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_bias=proj_bias,
                  ffn_bias=ffn_bias, init_values=init_values, ffn_layer=ffn_layer, drop_path_rate=dpr[i],
                  attn_impl=self.attn_impl, dtype=dtype, rngs=rngs)
            for i in range(depth)
        ])
        self.norm = LayerNorm(embed_dim, eps=1e-6)

    # ----------------------------------------------------------------------------------------------
    def interpolate_pos_encoding(self, height: int, width: int) -> jax.Array:
        """Position embedding for an `height x width` image: `[1, 1 + (H/p)*(W/p), D]` float32."""
        return interpolate_pos_embed(self.pos_embed[...], height // self.patch_size, width // self.patch_size,
                                     antialias=self.interpolate_antialias, offset=self.interpolate_offset)

    def prepare_tokens_with_masks(self, x: jax.Array, masks: jax.Array | None = None) -> jax.Array:
        """[B, H, W, C] (+ masks [B, N] bool) -> tokens [B, 1+R+N, D] float32."""
        if x.ndim != 4:
            raise ValueError(f"Expected NHWC images [B, H, W, C], got shape {x.shape}.")
        b, h, w, _ = x.shape
        check_image_size(h, w, self.patch_size)
        # The token (residual) stream is float32 whatever the compute dtype, as under the official
        # autocast (its adds promote to float32): only the matmuls inside the blocks run in `dtype`.
        t = self.patch_embed(x).astype(jnp.float32)  # [B, N, D]
        if masks is not None:
            if masks.shape != t.shape[:2]:
                raise ValueError(f"masks must be [B, N] = {t.shape[:2]}, got {masks.shape}.")
            # Masked patches become the mask token BEFORE the pos-embed add (official order).
            t = jnp.where(masks[..., None], self.mask_token[...].astype(t.dtype)[None], t)
        cls = jnp.broadcast_to(self.cls_token[...].astype(t.dtype), (b, 1, t.shape[-1]))
        t = jnp.concatenate([cls, t], axis=1)
        t = t + self.interpolate_pos_encoding(h, w).astype(t.dtype)
        if self.register_tokens is not None:
            # Registers are inserted after the pos add: they carry no position embedding.
            reg = jnp.broadcast_to(self.register_tokens[...].astype(t.dtype),
                                   (b, self.num_register_tokens, t.shape[-1]))
            t = jnp.concatenate([t[:, :1], reg, t[:, 1:]], axis=1)
        return t

    def _remat_policy(self):
        return jax.checkpoint_policies.checkpoint_dots if self.remat == "dots" else None

    def _run_block(self, i: int, x: jax.Array, key: jax.Array | None, groups: int = 1) -> jax.Array:
        blk = self.blocks[i]
        if self.remat == "none":
            return blk(x, key, groups)
        return nnx.remat(lambda m, y, k: m(y, k, groups), policy=self._remat_policy())(blk, x, key)

    def _scan_run(self, start: int, stop: int, x: jax.Array, keys: jax.Array | None, groups: int = 1) -> jax.Array:
        """Blocks [start, stop) (identical static config) as one `lax.scan` over stacked params."""
        graphdef = nnx.graphdef(self.blocks[start])
        states = [nnx.state(self.blocks[i]) for i in range(start, stop)]
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)

        def step(y, xs):
            state, k = xs
            return nnx.merge(graphdef, state)(y, k, groups), None

        if self.remat != "none":
            step = jax.checkpoint(step, policy=self._remat_policy())
        x, _ = jax.lax.scan(step, x, (stacked, None if keys is None else keys[start:stop]))
        return x

    def _run_blocks(self, x: jax.Array, start: int, stop: int, keys: jax.Array | None,
                    groups: int = 1) -> jax.Array:
        """Blocks [start, stop); `keys` None (deterministic) or `[depth]` stochastic-depth keys."""
        i = start
        while i < stop:
            j = i + 1
            if self.scan_blocks:  # extend the run while the static config (drop rate) is equal
                while j < stop and self.drop_path_rates[j] == self.drop_path_rates[i]:
                    j += 1
            if j - i > 1:
                x = self._scan_run(i, j, x, keys, groups)
            else:
                x = self._run_block(i, x, None if keys is None else keys[i], groups)
            i = j
        return x

    def forward_features(self, x: jax.Array, masks: jax.Array | None = None, *, key: jax.Array | None = None,
                         batch_groups: int = 1):
        """x [B, H, W, C] -> dict: x_norm_clstoken [B, D], x_norm_regtokens [B, R, D],
        x_norm_patchtokens [B, N, D], x_prenorm [B, 1+R+N, D], masks (as given).

        key None: deterministic. key given: stochastic depth with the per-block drop rates.
        batch_groups: the batch is that many per-device batches of contiguous rows; stochastic-depth
        subsets are drawn within each (official: per GPU), so a mesh that shards whole groups keeps the
        work on the device (see layers/drop_path.py).
        A list of image batches (official `forward_features_list`, e.g. global and local crops) returns
        a list of dicts; `masks` is then a list (entries may be None) and each batch gets its own
        stochastic-depth subsets, as the official nested-tensor path.
        """
        if isinstance(x, (list, tuple)):
            masks = [None] * len(x) if masks is None else list(masks)
            if len(masks) != len(x):
                raise ValueError(f"{len(x)} image batches but {len(masks)} masks entries.")
            keys = [None] * len(x) if key is None else list(jax.random.split(key, len(x)))
            return [self.forward_features(xi, mi, key=ki, batch_groups=batch_groups)
                    for xi, mi, ki in zip(x, masks, keys)]
        t = self.prepare_tokens_with_masks(x, masks)
        t = self._run_blocks(t, 0, self.n_blocks, None if key is None else jax.random.split(key, self.n_blocks),
                             batch_groups)
        t_norm = self.norm(t)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": t_norm[:, 0],
            "x_norm_regtokens": t_norm[:, 1:r + 1],
            "x_norm_patchtokens": t_norm[:, r + 1:],
            "x_prenorm": t,
            "masks": masks,
        }

    def __call__(self, x: jax.Array, masks: jax.Array | None = None, *, key: jax.Array | None = None,
                 is_training: bool = False):
        """Official `forward`: the cls token [B, D], or the forward_features dict if `is_training`."""
        out = self.forward_features(x, masks, key=key)
        return out if is_training else out["x_norm_clstoken"]

    def get_intermediate_layers(self, x: jax.Array, n: int | Sequence[int] = 1, reshape: bool = False,
                                return_class_token: bool = False, norm: bool = True):
        """Outputs of chosen blocks (deterministic, no masks), as the official method.

        n: int -> the last n blocks; sequence -> those 0-based block indices (in block order).
        Each entry: patch tokens [B, N, D] (registers dropped), or with `reshape` [B, D, H/p, W/p]
        (the official channels-first layout). `norm` applies the final norm to each. With
        `return_class_token` each entry is a pair (patches, cls [B, D]). Returns a tuple.
        """
        if isinstance(n, (int, np.integer)):
            if not 1 <= n <= self.n_blocks:
                raise ValueError(f"n={n} must be between 1 and depth={self.n_blocks}.")
            take = list(range(self.n_blocks - n, self.n_blocks))
        else:
            take = sorted({int(i) for i in n})
            bad = [i for i in take if not 0 <= i < self.n_blocks]
            if bad:
                raise ValueError(f"block indices {bad} out of range for depth {self.n_blocks}.")
        b, h, w, _ = x.shape
        t = self.prepare_tokens_with_masks(x)
        outputs, done = [], 0
        for i in take:
            t = self._run_blocks(t, done, i + 1, None)
            outputs.append(t)
            done = i + 1
        if norm:
            outputs = [self.norm(o) for o in outputs]
        cls = [o[:, 0] for o in outputs]
        patches = [o[:, 1 + self.num_register_tokens:] for o in outputs]
        if reshape:
            p = self.patch_size
            patches = [o.reshape(b, h // p, w // p, -1).transpose(0, 3, 1, 2) for o in patches]
        if return_class_token:
            return tuple(zip(patches, cls))
        return tuple(patches)

    def get_self_attention(self, x: jax.Array, block: int = -1, num_queries: int | None = None) -> jax.Array:
        """Softmax attention weights of one block (default the last), all heads: x [B, H, W, C] ->
        `[B, heads, T, T]` float32, rows = queries, columns = keys, tokens `[cls, reg_1..reg_R, patches]`.
        `num_queries` = Q keeps only the first Q rows (`[B, heads, Q, T]`; 1: the cls row).

        The blocks before `block` run as in the deterministic forward (with the model's `attn_impl`);
        the chosen block's weights come from the explicit-softmax path (`Attention.attention_weights`)
        for that block only, because fused backends (cuDNN flash attention, Pallas) never return them.
        """
        if not -self.n_blocks <= block < self.n_blocks:
            raise ValueError(f"block={block} out of range for depth {self.n_blocks} "
                             f"(use 0..{self.n_blocks - 1}, or -1 for the last block).")
        block = block % self.n_blocks
        logger.info("self-attention weights of block %d: explicit softmax path for that block "
                    "(the '%s' backend of the other blocks does not return weights)", block, self.attn_impl)
        t = self._run_blocks(self.prepare_tokens_with_masks(x), 0, block, None)
        blk = self.blocks[block]
        return blk.attn.attention_weights(blk.norm1(t), num_queries)

    def get_cls_attention_maps(self, x: jax.Array, block: int = -1) -> dict:
        """The cls token's attention (the DINO picture) in one block, per head, from `get_self_attention`:
        x [B, H, W, C] -> {"patches": [B, heads, H/p, W/p], "registers": [B, heads, R], "cls": [B, heads]}
        (float32; the three together are the cls query's softmax row and sum to 1 per head).
        """
        b, h, w, _ = x.shape
        row = self.get_self_attention(x, block, num_queries=1)[:, :, 0]  # [B, heads, T]
        r, p = self.num_register_tokens, self.patch_size
        return {"patches": row[:, :, 1 + r:].reshape(b, self.num_heads, h // p, w // p),
                "registers": row[:, :, 1:1 + r], "cls": row[:, :, 0]}


# ---- official factories (mlp_ratio 4, head_dim 64; sizes in models/config.py ARCH_SIZES) ----------
def build_backbone(arch: str, **kwargs) -> DinoVisionTransformer:
    """`build_backbone("vit_small", patch_size=14, ...)`: the arch's sizes, overridden by `kwargs`
    (DinoVisionTransformer arguments + `rngs`); built through `ViTConfig`, as every model here."""
    from dinov2_jax.models.config import ARCH_SIZES, RUNTIME_KEYS, ViTConfig

    if arch.removesuffix("_memeff") not in ARCH_SIZES:
        raise ValueError(f"Unknown arch {arch!r}; choose one of {tuple(ARCH_SIZES)}.")
    rngs = kwargs.pop("rngs", None)
    runtime = {k: kwargs.pop(k) for k in RUNTIME_KEYS if k in kwargs}
    return ViTConfig.from_arch(arch, **kwargs).build(rngs=rngs, **runtime)


def vit_small(**kwargs) -> DinoVisionTransformer:
    return build_backbone("vit_small", **kwargs)


def vit_base(**kwargs) -> DinoVisionTransformer:
    return build_backbone("vit_base", **kwargs)


def vit_large(**kwargs) -> DinoVisionTransformer:
    return build_backbone("vit_large", **kwargs)


def vit_giant2(**kwargs) -> DinoVisionTransformer:
    """Close to ViT-giant: 1536 dim, 24 heads (64 per head). Pass ffn_layer="swiglufused" as the official configs."""
    return build_backbone("vit_giant2", **kwargs)
