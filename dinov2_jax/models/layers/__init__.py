"""Building blocks of the DINOv2 backbone (one concept per module)."""
from dinov2_jax.models.layers.attention import Attention, dot_product_attention, resolve_attn_impl
from dinov2_jax.models.layers.block import Block
from dinov2_jax.models.layers.drop_path import drop_add_residual_subset, drop_path
from dinov2_jax.models.layers.layer_scale import LayerScale
from dinov2_jax.models.layers.linear import Linear
from dinov2_jax.models.layers.mlp import Mlp
from dinov2_jax.models.layers.norm import LayerNorm
from dinov2_jax.models.layers.patch_embed import PatchEmbed
from dinov2_jax.models.layers.pos_embed import interpolate_pos_embed
from dinov2_jax.models.layers.swiglu_ffn import SwiGLUFFN, swiglu_hidden_dim

__all__ = [
    "Attention", "Block", "LayerNorm", "LayerScale", "Linear", "Mlp", "PatchEmbed", "SwiGLUFFN",
    "dot_product_attention", "drop_add_residual_subset", "drop_path", "interpolate_pos_embed",
    "resolve_attn_impl", "swiglu_hidden_dim",
]
