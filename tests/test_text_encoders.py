"""The text encoders: one interface, padding ignored, word order seen (or not), pretraining, freezing, caching."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from minidiff.captions import BOS, MASK, PAD, SPECIAL_TOKENS, TextEncoderConfig, Tokenizer
from minidiff.command.cli import main
from minidiff.evaluation.attention_maps import cross_attention_layers, cross_attention_maps
from minidiff.evaluation.word_order import swapped_colour_pairs, swapped_colours_score, word_influence
from minidiff.flows import StraightFlow
from minidiff.loop import TrainConfig, train_step
from minidiff.loss import denoising_loss
from minidiff.machinery.checkpoints import Checkpoint, CheckpointError
from minidiff.model import create_model, preset
from minidiff.text_encoders import TEXT_ENCODERS
from minidiff.text_encoders.frozen import embed_captions, read_text_encoder_file, save_text_encoder, trainable
from minidiff.text_encoders.masked_language_model import CHOSEN_RATE, mask_words, pretrain, read_corpus
from minidiff.training import start_run, train

KINDS = tuple(TEXT_ENCODERS)
SENTENCES = ["a red bird with black wings", "a black bird with red wings", "a blue flower with a yellow centre"]


def encoder(kind: str, tokenizer: Tokenizer, seed: int = 0):
    config = TextEncoderConfig(tokenizer.vocab_size, tokenizer.max_length, dim=16, depth=2, heads=2)
    return TEXT_ENCODERS[kind](config, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def words():
    return Tokenizer.from_captions(SENTENCES, max_length=12)


@pytest.mark.parametrize("kind", KINDS)
def test_every_encoder_has_one_interface_and_ignores_padding(kind, words):
    ids = jnp.asarray(words.encode_batch(SENTENCES))  # (3, 12): the longest caption has 8 tokens
    tokens, mask, pooled = encoder(kind, words)(ids)
    assert tokens.shape == (3, 12, 16) and pooled.shape == (3, 16) and mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask, ids != PAD)
    # The same captions with less padding: the caption's vectors and the pooled one do not change.
    short_tokens, short_mask, short_pooled = encoder(kind, words)(ids[:, :8])
    np.testing.assert_allclose(short_tokens * short_mask[..., None], (tokens * mask[..., None])[:, :8], atol=1e-5)
    np.testing.assert_allclose(short_pooled, pooled, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_bag_of_words_is_blind_to_word_order(kind, words):
    red_bird, black_bird = (jnp.asarray(words.encode_batch([s])) for s in SENTENCES[:2])
    model = encoder(kind, words)
    (_, _, pooled_a), (_, _, pooled_b) = model(red_bird), model(black_bird)
    gap = float(jnp.abs(pooled_a - pooled_b).max())
    if kind == "bag_of_words":
        assert gap < 1e-6  # the same words, so the same bag
    else:
        assert gap > 1e-3


def test_an_lstm_splits_its_width_between_directions(words):
    with pytest.raises(ValueError, match="even dim"):
        TEXT_ENCODERS["lstm"](TextEncoderConfig(words.vocab_size, dim=15), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown text encoder 'gru'"):
        preset("tiny", 20, text_encoder="gru")


def test_masking_follows_bert_rates():
    ids = np.full((4000, 32), PAD, np.int32)
    ids[:, 0] = BOS
    ids[:, 1:25] = np.random.default_rng(0).integers(len(SPECIAL_TOKENS), 500, (4000, 24))
    corrupted, chosen = map(np.asarray, mask_words(jax.random.key(0), jnp.asarray(ids), 500, MASK))
    words = ids > BOS
    assert not chosen[~words].any() and (corrupted[~words] == ids[~words]).all()  # BOS and padding never touched
    assert chosen[words].mean() == pytest.approx(CHOSEN_RATE, abs=0.005)
    assert (corrupted[~chosen] == ids[~chosen]).all()
    masked = (corrupted == MASK)[chosen].mean()
    kept = (corrupted == ids)[chosen].mean()  # left as they are, or (1 in 496) replaced by themselves
    assert masked == pytest.approx(0.8, abs=0.01) and kept == pytest.approx(0.1 + 0.1 / 496, abs=0.01)
    assert 1 - masked - kept == pytest.approx(0.1, abs=0.01)  # a random word
    assert (corrupted >= len(SPECIAL_TOKENS))[chosen & (corrupted != MASK)].all()  # random words are words


def test_read_corpus_reads_files_and_folders_and_says_what_is_missing(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.txt").write_text("a red bird\n\n  a blue bird  \n")
    (tmp_path / "b.txt").write_text("a pink flower\n")
    assert read_corpus(tmp_path / "a", tmp_path / "b.txt") == ["a red bird", "a blue bird", "a pink flower"]
    with pytest.raises(FileNotFoundError, match="no text corpus at"):
        read_corpus(tmp_path / "nowhere")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no sentences"):
        read_corpus(tmp_path / "empty.txt")


def test_pretraining_learns_to_fill_in_words_and_saves_a_file(tmp_path):
    sentences = [f"a {c} bird with {w} wings" for c in ("red", "blue", "green") for w in ("black", "white")] * 20
    tokens = Tokenizer.from_captions(sentences, max_length=8)
    config = TextEncoderConfig(tokens.vocab_size, 8, dim=32, depth=1, heads=2)
    training = TrainConfig(steps=150, batch_size=32, learning_rate=3e-3, ema_decay=0.0, log_every=10)
    run = pretrain(sentences, config, "transformer", tokens, training, progress=False)
    assert run.losses[-1][1] < 0.6 * run.losses[0][1]
    assert run.validation_accuracy > 0.5  # "a", "bird", "with", "wings" are easy; the colours are a guess
    path = save_text_encoder(tmp_path / "text.npz", run.encoder, "transformer", tokens, steps=150)
    loaded = read_text_encoder_file(path)
    assert (loaded.kind, loaded.config, loaded.tokenizer) == ("transformer", config, tokens)


def test_a_training_run_is_not_a_text_encoder_file(tmp_path, dataset, model_config, tokenizer, train_config):
    train(start_run(model_config, train_config), dataset, tokenizer, tmp_path / "run.npz", progress=False)
    with pytest.raises(CheckpointError, match="is a text-to-image run file, not a text encoder's"):
        read_text_encoder_file(tmp_path / "run.npz")
    with pytest.raises(CheckpointError, match="no text encoder file at .*minidiff pretrain-text"):
        read_text_encoder_file(tmp_path / "missing.npz")


@pytest.fixture()
def frozen_config(model_config):
    return dataclasses.replace(model_config, text_encoder_frozen=True)


def test_a_frozen_encoder_gets_no_gradient_and_stays_bit_identical(frozen_config, dataset, tokenizer, train_config):
    run = start_run(frozen_config, train_config)
    model = run.model
    before = jax.tree.map(np.array, nnx.state(model.text_encoder))
    ids = jnp.asarray(tokenizer.encode_batch(["a red flower", "a blue bird"]))
    cached, empty = embed_captions(model.text_encoder, np.asarray(ids), tokenizer.empty(1))
    grads = nnx.grad(lambda m: denoising_loss(m, (jnp.zeros((2, 16, 16, 3)), cached), (empty,), jax.random.key(0))[0],
                     argnums=nnx.DiffState(0, trainable(model.config)))(model)
    paths = ["/".join(map(str, path)) for path, _ in nnx.to_flat_state(grads)]
    assert paths and not any("text_encoder" in p for p in paths)
    optimizer_paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(run.optimizer))]
    assert not any("text_encoder" in p for p in optimizer_paths)
    run = train(run, dataset, tokenizer, progress=False)
    for module in (run.model, run.ema):
        after = nnx.state(module.text_encoder)
        assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    assert not all(np.array_equal(a, b) for a, b in zip(  # while the denoiser did learn
        jax.tree.leaves(nnx.state(create_model(model.config).denoiser, nnx.Param)),
        jax.tree.leaves(nnx.state(run.model.denoiser, nnx.Param))))


def test_cached_caption_embeddings_train_the_same_step(frozen_config, model_config, tokenizer, train_config):
    """A frozen model's step on cached embeddings equals an unfrozen model's step on the ids, in the loss (the
    denoiser reads the same vectors): the cache changes where the encoder runs, not what the denoiser sees."""
    ids = jnp.asarray(tokenizer.encode_batch(["a red flower with a yellow centre", "a blue bird"]))
    empty = tokenizer.empty(1)
    encoder = start_run(frozen_config, train_config).model.text_encoder
    cached, cached_empty = embed_captions(encoder, np.asarray(ids), empty)
    cached = tuple(map(jnp.asarray, cached))
    x0 = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    losses = []
    for config, captions, empty_caption in ((model_config, (ids,), (jnp.asarray(empty[0]),)),
                                            (frozen_config, cached, cached_empty)):
        run = start_run(config, train_config)
        static = (denoising_loss, train_config.precision, train_config.ema_decay, run.trainable)
        loss, _ = nnx.jit(train_step, static_argnames="static")(run.model, run.optimizer, run.ema, (x0, captions),
                                                                (empty_caption,), jax.random.key(1), 1e-3, static=static)
        losses.append(float(loss))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_an_unfrozen_model_trains_its_encoder(model_config, train_config):
    run = start_run(model_config, train_config)
    paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(run.optimizer))]
    assert any("text_encoder" in p for p in paths)


def test_the_swapped_colours_test_holds_every_pair_and_its_swap():
    pairs = swapped_colour_pairs()
    assert len(pairs) == 30 and all((wings, body) in pairs and body != wings for body, wings in pairs)


def test_pretrain_text_then_train_with_it_frozen(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"a {c} flower with a {d} centre" for c in ("red", "pink", "blue")
                                for d in ("yellow", "black")) + "\n")
    assert main(["pretrain-text", "--corpus", str(corpus), "--preset", "tiny", "--min-count", "1", "--steps", "3",
                 "--batch-size", "4", "--out", str(tmp_path / "text"), "--quiet"]) == 0
    text_file = tmp_path / "text" / "text_encoder.npz"
    assert f"wrote {text_file}" in capsys.readouterr().out
    run = ["train", "--recipe", "toy", "--steps", "2", "--out", str(tmp_path / "run"), "--quiet", "--set",
           "model.preset=tiny", "data.image_size=16", "data.num_images=16", "train.batch_size=4",
           "sample.sampling_steps=2", f"model.text_encoder_file={text_file}"]
    assert main(run + ["model.text_encoder=lstm"]) == 2
    assert "holds a transformer encoder, not a lstm" in capsys.readouterr().err
    assert main(run) == 0
    assert "a frozen pretrained transformer text encoder" in capsys.readouterr().out
    assert Checkpoint(tmp_path / "run" / "checkpoint.npz").header["model_config"]["text_encoder_frozen"] is True
    assert main(["pretrain-text", "--corpus", str(tmp_path / "none.txt")]) == 2
    assert "no text corpus at" in capsys.readouterr().err


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_cross_attention_maps_spread_one_unit_over_the_caption_words(backbone, tokenizer):
    process = StraightFlow() if backbone == "dit" else preset("tiny", 10).process
    model = create_model(preset("tiny", tokenizer.vocab_size, image_size=16, max_length=tokenizer.max_length,
                                backbone=backbone, process=process))
    ids = tokenizer.encode_batch(["a red bird with black wings", "a blue flower"])
    maps = cross_attention_maps(model, np.zeros((2, 16, 16, 3), np.uint8), ids)
    assert list(maps) == [4]  # the tiny U-Net reads the caption at 4x4 (its middle); the DiT on its 4x4 patches
    assert maps[4].shape == (2, 4, 4, tokenizer.max_length)
    np.testing.assert_allclose(maps[4].sum(-1), 1.0, rtol=1e-5)
    assert (maps[4][ids[:, None, None, :].repeat(4, 1).repeat(4, 2) == PAD] == 0).all()  # padding never looked at
    assert not any(layer.keep_weights for layer in cross_attention_layers(model))  # and the model is as it was


def test_word_influence_is_a_diagonal_for_the_bag_of_words_only(words):
    ids = words.encode(SENTENCES[0])  # BOS and six words
    for kind in KINDS:
        moved = word_influence(encoder(kind, words), ids, 7)  # (6, 7): word j replaced, token k moved
        off_diagonal = moved.copy()
        off_diagonal[np.arange(6), np.arange(1, 7)] = 0
        assert (moved[np.arange(6), np.arange(1, 7)] > 1e-3).all()  # the replaced word's own vector moves
        assert (off_diagonal.max() < 1e-6) == (kind == "bag_of_words")


def test_swapped_colours_score_counts_whole_birds():
    asked = [("red", "blue"), ("blue", "red"), ("black", "white"), ("white", "black")]
    read = [{"body_colour": b, "wing_colour": w} for b, w in
            [("red", "blue"), ("red", "blue"), ("black", "black"), ("black", "white")]]
    assert swapped_colours_score(read, asked) == (0.25, 0.5)
