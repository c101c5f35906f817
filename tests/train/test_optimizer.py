import jax
import jax.numpy as jnp
import numpy as np

from dinov2_jax.train.optimizer import apply_updates, clip_by_submodule, make_adam
from dinov2_jax.train.param_groups import ParamMultipliers


def test_two_steps_match_torch_adamw(optim_golden):
    g = optim_golden
    params = {"a": {"0": jnp.asarray(g["opt_p0_a0"]), "1": jnp.asarray(g["opt_p0_a1"])},
              "b": {"0": jnp.asarray(g["opt_p0_b0"])}}
    mults = {"a": {"0": ParamMultipliers(0.3, 1.0, False), "1": ParamMultipliers(1.0, 0.0, False)},
             "b": {"0": ParamMultipliers(1.0, 1.0, True)}}
    adam = make_adam(0.9, 0.999)
    state = adam.init(params)

    @jax.jit
    def step(params, state, grads, hp):
        grads, norms = clip_by_submodule(grads, 3.0)
        return apply_updates(params, grads, state, adam, mults, hp) + (norms,)

    for i in range(2):
        grads = {"a": {"0": jnp.asarray(g[f"opt_g{i}_a0"]), "1": jnp.asarray(g[f"opt_g{i}_a1"])},
                 "b": {"0": jnp.asarray(g[f"opt_g{i}_b0"])}}
        hp = {k: jnp.float32(g[f"opt_hp{i}_{k}"]) for k in ("lr", "wd", "last_layer_lr")}
        params, state, norms = step(params, state, grads, hp)
        if i == 0:  # large grads: both clipped
            assert float(norms["a"]) > 3 and float(norms["b"]) > 3
    assert step._cache_size() == 1  # new hparams values do not recompile
    np.testing.assert_allclose(params["a"]["0"], g["opt_p2_a0"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(params["a"]["1"], g["opt_p2_a1"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(params["b"]["0"], g["opt_p2_b0"], rtol=1e-6, atol=1e-7)


def test_clip_formula_and_disabled():
    grads = {"x": {"w": jnp.full((4,), 2.0)}, "y": {"w": jnp.full((1,), 0.5)}}  # norms 4 and 0.5
    out, norms = clip_by_submodule(grads, 3.0)
    np.testing.assert_allclose(norms["x"], 4.0)
    np.testing.assert_allclose(out["x"]["w"], 2.0 * 3.0 / (4.0 + 1e-6), rtol=1e-7)
    np.testing.assert_allclose(out["y"]["w"], 0.5)  # below the threshold: untouched
    out, _ = clip_by_submodule(grads, 0.0)
    np.testing.assert_allclose(out["x"]["w"], 2.0)
