"""Linear probe: feature builder vs a direct computation, optimiser vs torch SGD + CosineAnnealingLR,
and high accuracy on separable features."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dinov2_jax.eval import linear
from helpers import tiny_vit  # tests/ is on sys.path


def test_feature_builder_matches_direct_computation():
    model = tiny_vit(depth=5, num_register_tokens=2)
    x = np.random.default_rng(0).normal(size=(3, 28, 42, 3)).astype(np.float32)
    feats = linear.make_linear_feature_fn(model, 4)(x)
    # direct: run the blocks by hand and apply the final norm, as the official get_intermediate_layers
    t = model.prepare_tokens_with_masks(jnp.asarray(x))
    outs = []
    for blk in model.blocks:
        t = blk(t, None)
        outs.append(model.norm(t))
    last4 = outs[-4:]
    reg = model.num_register_tokens
    for n, avg in linear.head_configs():
        expect = np.concatenate([np.asarray(o[:, 0]) for o in last4[4 - n:]], axis=-1)
        if avg:
            expect = np.concatenate([expect, np.asarray(last4[-1][:, 1 + reg:]).mean(axis=1)], axis=-1)
        got = np.asarray(linear.create_linear_input(feats, n, avg))
        assert got.shape == (3, (n + avg) * 32)
        np.testing.assert_allclose(got, expect, atol=1e-5, rtol=0)


def test_create_linear_input_order_and_errors():
    cls = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    pm = -np.ones((2, 3), np.float32)
    f = linear.LinearFeatures(cls, pm)
    np.testing.assert_array_equal(linear.create_linear_input(f, 1, False), cls[:, 3])
    np.testing.assert_array_equal(linear.create_linear_input(f, 4, True),
                                  np.concatenate([cls[:, 0], cls[:, 1], cls[:, 2], cls[:, 3], pm], -1))
    with pytest.raises(ValueError, match="last 4 blocks"):
        linear.create_linear_input(f, 5, False)


def test_head_names_and_lr_scaling():
    lrs = linear.scale_lrs(linear.LEARNING_RATES, 1024)
    assert linear.head_name(4, True, float(lrs[6])) == "classifier_4_blocks_avgpool_True_lr_0_00400"
    assert len(linear.head_configs()) * len(linear.LEARNING_RATES) == 52
    # batch 128: official names are distinct and kept
    assert linear.head_names(linear.scale_lrs(linear.LEARNING_RATES, 128))[1] == \
        "classifier_1_blocks_avgpool_False_lr_0_00001"
    # batch 32: official names collide (1.25e-6 and 2.5e-6 both print as 0.00000) -> all 52 stay distinct
    names = linear.head_names(linear.scale_lrs(linear.LEARNING_RATES, 32))
    assert len(set(names)) == 52 and names[0] == "classifier_1_blocks_avgpool_False_lr_1_250e-06"
    assert linear.head_names(lrs)[-1] == "classifier_4_blocks_avgpool_True_lr_0_40000"


def test_optimizer_matches_torch_sgd_cosine():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    B, D, C, steps, max_iter = 16, 6, 5, 7, 10
    lrs_base = [0.1, 0.5]
    feats = linear.LinearFeatures(rng.normal(size=(steps, B, 4, D)).astype(np.float32),
                                  rng.normal(size=(steps, B, D)).astype(np.float32))
    labels = rng.integers(0, C, (steps, B))
    params = linear.init_heads(jax.random.key(0), D, C, len(lrs_base))
    lrs = linear.scale_lrs(lrs_base, B)

    # torch reference: one nn.Linear per (config, lr), SGD param groups + CosineAnnealingLR, sum of CE
    heads, groups = [], []
    for g, (n, avg) in enumerate(linear.head_configs()):
        for l, lr in enumerate(lrs):
            lin = torch.nn.Linear((n + avg) * D, C)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.asarray(params[g]["kernel"][l]).T.copy()))
                lin.bias.copy_(torch.from_numpy(np.asarray(params[g]["bias"][l]).copy()))
            heads.append((n, avg, lin))
            groups.append({"params": lin.parameters(), "lr": float(lr)})
    opt = torch.optim.SGD(groups, momentum=0.9, weight_decay=0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max_iter, eta_min=0)

    step_fn = linear.make_train_step(max_iter, lrs)
    buf = jax.tree.map(jnp.zeros_like, params)
    for it in range(steps):
        f = linear.LinearFeatures(feats.cls_tokens[it], feats.patch_mean[it])
        params, buf, loss = step_fn(params, buf, f, jnp.asarray(labels[it], jnp.int32), jnp.float32(it))
        cls_t, pm_t = torch.from_numpy(f.cls_tokens), torch.from_numpy(f.patch_mean)
        y = torch.from_numpy(labels[it])
        total = 0
        for n, avg, lin in heads:
            x = cls_t[:, 4 - n:].reshape(B, -1)
            if avg:
                x = torch.cat([x, pm_t], -1)
            total = total + torch.nn.functional.cross_entropy(lin(x), y)
        opt.zero_grad()
        total.backward()
        opt.step()
        sched.step()
        assert float(loss) == pytest.approx(total.item(), rel=1e-5)
    i = 0
    for g in range(len(linear.head_configs())):
        for l in range(len(lrs)):
            lin = heads[i][2]
            np.testing.assert_allclose(np.asarray(params[g]["kernel"][l]), lin.weight.detach().numpy().T,
                                       atol=1e-6)
            np.testing.assert_allclose(np.asarray(params[g]["bias"][l]), lin.bias.detach().numpy(), atol=1e-6)
            i += 1


def test_separable_features_reach_high_accuracy():
    rng = np.random.default_rng(0)
    n_cls, D = 4, 8
    centers = rng.normal(size=(n_cls, 4, D)) * 2

    def make(n):
        y = rng.integers(0, n_cls, n)
        cls = centers[y] + 0.3 * rng.normal(size=(n, 4, D))
        return linear.LinearFeatures(cls.astype(np.float32), cls.mean(1).astype(np.float32)), y

    train, ytr = make(400)
    val, yva = make(200)
    params, lrs = linear.train_linear_heads(train, ytr, num_classes=n_cls, batch_size=32, max_iter=150,
                                            progress=False)
    accs = linear.evaluate_heads(params, val, yva, lrs, batch=64)
    assert len(accs) == 52
    best = linear.select_best(accs)
    assert best["accuracy"] >= 0.98
    # the smallest lr barely moves from the N(0, 0.01) init: clearly worse than the best
    assert min(accs.values()) < best["accuracy"]
    assert best["name"] in accs and accs[best["name"]] == best["accuracy"]


def test_select_best_first_strict_max():
    assert linear.select_best({"a": 0.5, "b": 0.7, "c": 0.7}) == {"name": "b", "accuracy": 0.7}


def test_too_small_train_set_is_an_error():
    f = linear.LinearFeatures(np.zeros((5, 4, 2), np.float32), np.zeros((5, 2), np.float32))
    with pytest.raises(ValueError, match="lower --batch-size"):
        linear.train_linear_heads(f, np.zeros(5, int), num_classes=2, batch_size=8, max_iter=1, progress=False)
