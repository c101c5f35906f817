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


def test_real_param_tree_matches_official_table(optim_golden):
    """Multipliers over the actual student tree (our backbone + DINOHead) equal the official table, name by name."""
    from flax import nnx

    import jax
    from configs.ssl_default import get_config
    from dinov2_jax.train.train_step import _split, build_modules

    c = get_config()
    c.student.patch_size, c.student.num_register_tokens, c.student.attn_impl = 8, 2, "xla"
    c.crops.global_crops_size = 32
    c.dino.head_n_prototypes, c.dino.head_hidden_dim, c.dino.head_bottleneck_dim = 16, 24, 8
    mods = nnx.eval_shape(lambda: build_modules(c, jax.random.key(0), arch_overrides=dict(embed_dim=32, depth=3,
                                                                                         num_heads=2)))
    _, params = _split(mods)
    table = multipliers_table(build_param_multipliers(params, depth=3, lr_decay_rate=0.9, patch_embed_lr_mult=0.2))
    want = {torch_to_ours(str(n)): (lr, wd, bool(last)) for n, lr, wd, last in
            zip(optim_golden["pg_names"], optim_golden["pg_lr_mult"], optim_golden["pg_wd_mult"],
                optim_golden["pg_is_last"])}
    assert set(table) == set(want), set(table) ^ set(want)
    for name, m in table.items():
        assert tuple(m) == want[name], (name, m, want[name])
