"""The trainer's backbones are built through ViTConfig: the SSL config maps onto the official hub layouts."""
import jax
import pytest

from dinov2_jax.config import load_config
from dinov2_jax.models.config import ViTConfig
from dinov2_jax.train.train_step import backbone_config, build_modules


# only ViT-g: the released ViT-S/B/L were distilled from it with an MLP FFN, while the official
# `dinov2/configs/train/vitl14.yaml` trains ViT-L with SwiGLU
@pytest.mark.parametrize("name,hub", [("vitg14", "dinov2_vitg14")])
def test_official_configs_have_the_hub_layout(name, hub):
    cfg = load_config(f"configs/{name}.py")
    vit, runtime = backbone_config(cfg)
    # the released backbone's layout, except its 518-pixel position embedding (high-res adaptation)
    assert vit.replace(img_size=518).hub_name() == hub and vit.hub_name() is None
    assert vit.img_size == cfg.crops.global_crops_size and vit.init_values == cfg.student.layerscale
    assert runtime["drop_path_rate"] == cfg.student.drop_path_rate
    _, teacher_runtime = backbone_config(cfg, teacher=True)
    assert "drop_path_rate" not in teacher_runtime  # only the student has stochastic depth


def test_build_modules_backbone_is_the_config_build():
    cfg = load_config("configs/quickstart.py")
    tiny = dict(embed_dim=32, depth=2, num_heads=2)
    vit, runtime = backbone_config(cfg, arch_overrides=tiny)
    mods = build_modules(cfg, jax.random.key(0), arch_overrides=tiny)
    got = ViTConfig.from_kwargs(mods["backbone"].arch)
    assert got == vit and got.embed_dim == 32 and got.patch_size == cfg.student.patch_size
    with pytest.raises(ValueError, match="unknown arch 'vit_huge'"):
        ViTConfig.from_arch("vit_huge")
    with pytest.raises(ValueError, match="unknown architecture fields"):
        backbone_config(cfg, arch_overrides={"embed_dimm": 32})
