import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from minidiff.optimization import adamw, learning_rate_at


def test_learning_rate_over_the_run():
    """Warm-up from 0 to the peak over the first `warmup` of the run, then a half cosine to a tenth of it."""
    at = lambda progress: learning_rate_at(progress, peak=2e-3, warmup=0.2)  # noqa: E731
    assert at(0.0) == 0.0 and math.isclose(at(0.1), 1e-3) and math.isclose(at(0.2), 2e-3)
    assert math.isclose(at(0.6), (2e-3 + 2e-4) / 2)  # half-way through the decay: half-way down the cosine
    assert math.isclose(at(1.0), 2e-4) and math.isclose(at(1.5), 2e-4)
    rates = [at(p) for p in np.linspace(0.2, 1.0, 50)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert math.isclose(learning_rate_at(0.0, peak=2e-3, warmup=0.0), 2e-3)  # no warm-up


def test_adamw_at_a_given_rate_is_optax_adamw():
    """AdamW at rate 1, scaled by the rate given to each update, is optax's AdamW at that rate, gradient
    clipping included, update after update."""
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-3, weight_decay=0.1))
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    ours, theirs = adamw(0.1, 1.0).init(params), reference.init(params)
    for k in range(3):
        grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(k), p.shape) * 2, params)
        ours_update, ours = adamw(0.1, 1.0).update(grads, ours, params, learning_rate=3e-3)
        theirs_update, theirs = reference.update(grads, theirs, params)
        for a, b in zip(jax.tree.leaves(ours_update), jax.tree.leaves(theirs_update)):
            np.testing.assert_allclose(a, b, rtol=1e-6)
