"""The Generator: captions in, images out, the same way from a run in memory and from its checkpoint."""

import jax.numpy as jnp
import numpy as np
import pytest

import minidiff
from minidiff.captions import CaptionError
from minidiff.denoiser import upsample_nearest
from minidiff.evaluation.judge import Judge, JudgeConfig, save_judge
from minidiff.generator import Generator
from minidiff.machinery.checkpoints import CheckpointError
from minidiff.machinery.initialisation import initialised
from minidiff.sampling import SamplerSettings
from minidiff.training import start_run, train

CAPTIONS = ["a red flower", "a blue bird", "a yellow flower", "a white bird", "a black bird"]


@pytest.fixture()
def generator(model, tokenizer):
    model.denoiser.out.kernel[...] = 0.05 * jnp.ones_like(model.denoiser.out.kernel[...])  # outputs depend on the input
    return Generator(model, tokenizer)


def test_the_same_seed_gives_the_same_images_and_another_seed_others(generator):
    first = generator.sample(CAPTIONS[:2], sampling_steps=4, seed=0)
    assert first.shape == (2, 16, 16, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first, generator.sample(CAPTIONS[:2], sampling_steps=4, seed=0))
    assert not np.allclose(first, generator.sample(CAPTIONS[:2], sampling_steps=4, seed=1))


def test_an_image_depends_on_its_seed_and_place(generator):
    """Batch k starts from seed + k * batch_size, so an image does not depend on how many are drawn
    after it: the second batch of four captions is what those two captions give from its seed."""
    all_at_once = generator.sample(CAPTIONS[:4], sampling_steps=3, seed=5, batch_size=2)
    np.testing.assert_array_equal(all_at_once[2:4], generator.sample(CAPTIONS[2:4], sampling_steps=3, seed=7, batch_size=2))
    images, trajectory = generator.sample(CAPTIONS, sampling_steps=3, batch_size=2, keep_trajectory=True)
    assert trajectory.x0.shape == trajectory.xt.shape == (3, 5, 16, 16, 3)
    np.testing.assert_array_equal(trajectory.x0[-1], images)


def test_a_stage_after_the_generator_gets_its_images(generator):
    """A cascade or a latent decoder follows the generator: here a stand-in that doubles the size."""
    seen = []

    def double(images, captions, seed):
        seen.append((captions, seed))
        return np.asarray(upsample_nearest(jnp.asarray(images)))

    base = generator.sample(CAPTIONS[:2], sampling_steps=2, seed=3)
    chained = Generator(generator.model, generator.tokenizer, followed_by=[double, double])
    out = chained.sample(CAPTIONS[:2], sampling_steps=2, seed=3)
    assert out.shape == (2, 64, 64, 3) and seen == [(CAPTIONS[:2], 3)] * 2
    np.testing.assert_array_equal(out[:, ::4, ::4], base)


def test_bad_captions_and_settings_are_clear_errors(generator):
    with pytest.raises(CaptionError, match="no words"):
        generator.sample(["a red flower", "{}"])
    with pytest.raises(ValueError, match="at least one"):
        generator.sample([])
    long = " ".join(["red"] * 30)
    with pytest.raises(CaptionError, match="at most 23"):
        generator.sample([long], sampling_steps=2)
    assert generator.sample([long], sampling_steps=2, truncate=True).shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="finite"):
        generator.sample(CAPTIONS[:1], guidance=float("nan"))
    with pytest.raises(TypeError, match="steps"):  # training steps are no sampler setting
        generator.sample(CAPTIONS[:1], steps=2)


def test_a_generator_samples_with_its_own_settings_unless_told_otherwise(generator):
    """Its settings (a recipe's [sample] table) are the defaults of `sample`; x0 clipping is chosen for pixels."""
    own = Generator(generator.model, generator.tokenizer, SamplerSettings(sampling_steps=3, guidance=2.0))
    assert own.sampler_settings() == SamplerSettings(sampling_steps=3, guidance=2.0, x0_clipping="static")
    assert own.sampler_settings(guidance=1.0).guidance == 1.0
    np.testing.assert_array_equal(own.sample(CAPTIONS[:2]), generator.sample(CAPTIONS[:2], sampling_steps=3,
                                                                               guidance=2.0))


def test_a_loaded_checkpoint_draws_what_the_run_in_memory_draws(tmp_path, dataset, tokenizer, model_config,
                                                                 train_config):
    run = train(start_run(model_config, train_config), dataset, tokenizer, tmp_path / "run.npz", progress=False)
    in_memory = Generator.from_training(run, tokenizer).sample(CAPTIONS[:3], sampling_steps=3, guidance=2.0)
    loaded = minidiff.load(tmp_path / "run.npz")
    assert loaded.config == model_config and loaded.tokenizer == tokenizer
    np.testing.assert_array_equal(loaded.sample(CAPTIONS[:3], sampling_steps=3, guidance=2.0), in_memory)
    raw = minidiff.load(tmp_path / "run.npz", use_ema=False)
    assert not np.array_equal(raw.sample(CAPTIONS[:3], sampling_steps=3, guidance=2.0), in_memory)


def test_a_judge_file_is_not_a_generator(tmp_path):
    config = JudgeConfig(image_size=16, heads=(("colour", 3),), widths=(8, 8), groups=4)
    path = save_judge(initialised(Judge, config), tmp_path / "judge.npz")
    with pytest.raises(CheckpointError, match="not a text-to-image run checkpoint"):
        minidiff.load(path)
