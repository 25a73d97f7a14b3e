import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.corruption import (
    Diffusion, cosine_alpha_bar, cosine_schedule, linear_alpha_bar, linear_schedule, loss_weight, make_schedule,
    network_time, prediction_target, q_sample, q_step, recolour_pixels, snr, to_model_range, to_uint8, x0_and_eps,
)


@pytest.mark.parametrize("make", [linear_schedule, cosine_schedule])
def test_alpha_bar_decreases_from_one_to_zero(make):
    s = make(1000)
    ab = np.asarray(s.alpha_bar)
    assert ab.shape == (1000,)
    assert np.all(np.diff(ab) < 0), "alpha_bar must fall at every step"
    assert 0.99 < ab[0] < 1 and ab[-1] < 1e-3
    np.testing.assert_allclose(ab, np.cumprod(1 - np.asarray(s.beta)), rtol=1e-5)
    log_snr = np.log(np.asarray(snr(s.alpha_bar)))
    assert np.all(np.diff(log_snr) < 0)


def test_linear_schedule_matches_ho_et_al():
    s = linear_schedule(1000)
    np.testing.assert_allclose(np.asarray(s.beta)[[0, -1]], [1e-4, 0.02], rtol=1e-6)
    # SNR endpoints: alpha_bar_1 = 1 - 1e-4, and alpha_bar_T = 4.04e-5 for DDPM's schedule.
    np.testing.assert_allclose(snr(s.alpha_bar[0]), (1 - 1e-4) / 1e-4, rtol=1e-3)
    np.testing.assert_allclose(s.alpha_bar[-1], 4.04e-5, rtol=0.02)


def test_discrete_schedules_follow_their_continuous_curves():
    t = np.asarray(network_time(np.arange(1000), 1000))
    np.testing.assert_allclose(cosine_schedule(1000).alpha_bar[:-30], cosine_alpha_bar(t)[:-30], rtol=1e-4)
    # The linear betas are a Riemann sum of the continuous rate: close in log alpha_bar, not equal.
    log_discrete, log_continuous = np.log(linear_schedule(1000).alpha_bar), np.log(linear_alpha_bar(t))
    np.testing.assert_allclose(log_discrete[:900], log_continuous[:900], atol=0.05)
    assert float(cosine_alpha_bar(0.0)) == pytest.approx(1.0)


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of"):
        make_schedule("quadratic")


def test_q_sample_equals_iterated_noising_in_distribution():
    """x_t reached in one jump (eq. 4) has the mean and variance of t single steps (eq. 2)."""
    s = linear_schedule(100)
    x0 = jnp.full((20000, 1, 1, 1), 0.7)
    keys = jax.random.split(jax.random.key(0), 60)
    x = x0
    for t in range(60):
        x = q_step(x, s.beta[t], jax.random.normal(keys[t], x.shape))
    ab = float(s.alpha_bar[59])
    jump = q_sample(x0, jnp.full((20000,), ab), jax.random.normal(jax.random.key(1), x0.shape))
    for samples in (x, jump):
        assert float(samples.mean()) == pytest.approx(np.sqrt(ab) * 0.7, abs=0.02)
        assert float(samples.var()) == pytest.approx(1 - ab, rel=0.04)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_every_prediction_recovers_x0_and_eps(prediction):
    k1, k2 = jax.random.split(jax.random.key(0))
    x0, eps = jax.random.normal(k1, (3, 4, 4, 3)), jax.random.normal(k2, (3, 4, 4, 3))
    ab = jnp.array([0.9, 0.5, 0.01])
    alpha, sigma = jnp.sqrt(ab), jnp.sqrt(1 - ab)
    xt = q_sample(x0, ab, eps)
    target = prediction_target(prediction, x0, eps, alpha, sigma)
    x0_back, eps_back = x0_and_eps(prediction, target, xt, alpha, sigma)
    np.testing.assert_allclose(x0_back, x0, atol=2e-4 if prediction != "eps" else 2e-3)
    np.testing.assert_allclose(eps_back, eps, atol=2e-4)


def test_recolour_pixels_replaces_the_asked_fraction():
    x0 = jnp.zeros((4, 32, 32, 3))
    key = jax.random.key(0)
    assert jnp.array_equal(recolour_pixels(key, x0, 0.0), x0)
    changed = jnp.any(recolour_pixels(key, x0, jnp.array([0.0, 0.3, 0.7, 1.0])) != 0, axis=-1).mean(axis=(1, 2))
    np.testing.assert_allclose(changed, [0.0, 0.3, 0.7, 1.0], atol=0.05)


def test_pixel_range_round_trip():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
    x = to_model_range(images)
    assert x.dtype == np.float32 and x.min() == -1 and x.max() == 1
    assert np.array_equal(to_uint8(x), images)
    # The same rule inside a compiled program, on JAX arrays.
    np.testing.assert_allclose(jax.jit(to_model_range)(jnp.asarray(images)), x, atol=1e-6)  # XLA may round differently


def test_the_diffusion_process_trains_on_its_schedule_and_samples_between_its_steps():
    """Training times are steps of the schedule, told to the network as (step + 1) / T, with alpha^2 = alpha_bar;
    between steps, the levels a sampler visits interpolate log alpha_bar, and `time_of` inverts them."""
    process = Diffusion(num_timesteps=1000)
    schedule = cosine_schedule(1000)
    t, alpha, sigma = process.training_times(jax.random.key(0), 4096)
    steps = np.round(np.asarray(t) * 1000).astype(int) - 1
    assert steps.min() >= 0 and steps.max() <= 999 and len(np.unique(steps)) > 900
    np.testing.assert_allclose(np.asarray(alpha) ** 2, np.asarray(schedule.alpha_bar)[steps], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(alpha) ** 2 + np.asarray(sigma) ** 2, 1.0, rtol=1e-5)
    grid_alpha, grid_sigma = process.alpha_sigma(np.array([0.001, 0.5, 1.0]))
    np.testing.assert_allclose(grid_alpha**2, np.asarray(schedule.alpha_bar, np.float64)[[0, 499, 999]], rtol=1e-5)
    between = np.array([0.0123, 0.4567, 0.987])
    a, s = process.alpha_sigma(between)
    np.testing.assert_allclose(process.time_of(s / a), between, rtol=1e-9)
    assert process.t_min == pytest.approx(1e-3)


def test_the_diffusion_process_weighs_errors_as_its_weighting_says():
    alpha = jnp.sqrt(jnp.array([0.99, 0.5, 0.01]))
    sigma = jnp.sqrt(1 - alpha**2)
    for weighting in ("clipped_snr", "min_snr", "none"):
        process = Diffusion(prediction="v", loss_weighting=weighting)
        np.testing.assert_allclose(process.loss_weight(alpha, sigma),
                                   loss_weight(weighting, "v", alpha**2 / sigma**2, 5.0), rtol=1e-6)
    # clipped SNR: the x0 weight min(SNR, 5) floored at 1, on v's error divided by SNR + 1.
    expected = np.array([5.0 / 100.0, 1.0 / 2.0, 1.0 / (0.01 / 0.99 + 1)])
    np.testing.assert_allclose(Diffusion().loss_weight(alpha, sigma), expected, rtol=1e-4)


@pytest.mark.parametrize("fields, message", [
    (dict(schedule="quadratic"), "schedule must be one of"),
    (dict(num_timesteps=1), "at least 2"),
    (dict(prediction="velocity"), "prediction must be one of"),
    (dict(loss_weighting="snr"), "loss_weighting must be one of"),
    (dict(min_snr_gamma=float("nan")), "positive"),
])
def test_a_diffusion_process_that_cannot_be_is_a_clear_error(fields, message):
    with pytest.raises(ValueError, match=message):
        Diffusion(**fields)
