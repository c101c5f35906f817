import re

import numpy as np

from dinov2_jax.train.param_groups import build_param_multipliers, multipliers_table, param_multipliers

DEPTH = 3  # the fixture's official tiny ViT


def torch_to_ours(name: str) -> str:
    """Official parameter name -> our path (design.md naming: kernel/scale, head mlp.{0,2,4} -> mlp.{0,1,2})."""
    name = re.sub(r"dino_head\.mlp\.(\d)\.", lambda m: f"dino_head.mlp.{int(m.group(1)) // 2}.", name)
    if re.search(r"norm\d?\.weight$", name):
        return name[: -len("weight")] + "scale"
    if name.endswith(".weight") and "last_layer" not in name:
        return name[: -len("weight")] + "kernel"
    return name


def test_matches_official_table(optim_golden):
    names = optim_golden["pg_names"]
    assert len(names) > 50
    for n, lr, wd, last in zip(names, optim_golden["pg_lr_mult"], optim_golden["pg_wd_mult"], optim_golden["pg_is_last"]):
        ours = torch_to_ours(str(n))
        sub, rest = ours.split(".", 1)
        m = param_multipliers(rest, DEPTH if sub == "backbone" else 0, 0.9, 0.2)
        assert m.lr_mult == lr and m.wd_mult == wd and m.is_last_layer == last, (n, ours, m)


def test_tree_builder_and_table():
    tree = {
        "backbone": {"cls_token": 0, "blocks": {0: {"ls1": {"gamma": 0}, "attn": {"qkv": {"kernel": 0}}},
                                                2: {"norm1": {"scale": 0}}},
                     "patch_embed": {"proj": {"kernel": 0}}, "norm": {"bias": 0}},
        "dino_head": {"mlp": {0: {"kernel": 0, "bias": 0}}, "last_layer": {"weight_g": 0, "weight_v": 0}},
    }
    t = multipliers_table(build_param_multipliers(tree, depth=3, lr_decay_rate=0.5, patch_embed_lr_mult=0.2))
    assert t["backbone.cls_token"] == (0.5 ** 4, 1.0, False)
    assert t["backbone.blocks.0.ls1.gamma"] == (0.5 ** 3, 0.0, False)
    assert t["backbone.blocks.0.attn.qkv.kernel"] == (0.5 ** 3, 1.0, False)
    assert t["backbone.blocks.2.norm1.scale"] == (0.5, 0.0, False)
    np.testing.assert_allclose(t["backbone.patch_embed.proj.kernel"].lr_mult, 0.5 ** 4 * 0.2)
    assert t["backbone.norm.bias"] == (1.0, 0.0, False)
    assert t["dino_head.mlp.0.bias"] == (1.0, 0.0, False)
    assert t["dino_head.last_layer.weight_g"] == (1.0, 1.0, True)
