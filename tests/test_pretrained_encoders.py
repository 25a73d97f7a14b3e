"""CLIP's and T5's text encoders against transformers' PyTorch models, with tiny random weights.

Each model is saved by transformers (config.json + model.safetensors) beside a
tiny tokenizer.json built with the tokenizers library, loaded by minidiff, and
its outputs compared with PyTorch's for the same ids.
"""

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from minidiff.captions import CaptionError  # noqa: E402
from minidiff.text_encoders.pretrained import PretrainedEncoderError, load_pretrained_encoder  # noqa: E402

WORDS = ("a red yellow white purple pink orange flower bird with petals wings centre and small large "
         "green leaves black beak long short tail the of in").split()
CAPTIONS = ["a red flower", "a small bird with black wings and a long tail",
            "the flower has pink petals and a yellow centre"]
TOLERANCE = 1e-5


def word_tokenizer(vocabulary, unknown, template, special_tokens) -> "tokenizers.Tokenizer":
    """A word-level tokenizer.json: lower-cased words, and the special tokens the release's post-processor adds."""
    ids = {token: i for i, token in enumerate(vocabulary)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(ids, unk_token=unknown))
    tokenizer.normalizer = tokenizers.normalizers.Lowercase()
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single=template, special_tokens=[(token, ids[token]) for token in special_tokens])
    tokenizer.add_special_tokens(list(special_tokens))
    return tokenizer


# CLIP's vocabulary ends with its two special tokens (49406, 49407 in the real one).
CLIP_VOCABULARY = ["<unk>", *WORDS, "<|startoftext|>", "<|endoftext|>"]
BOS, EOS = len(CLIP_VOCABULARY) - 2, len(CLIP_VOCABULARY) - 1
T5_VOCABULARY = ["<pad>", "</s>", "<unk>", *WORDS]


def clip_tokenizer(vocabulary=CLIP_VOCABULARY):
    return word_tokenizer(vocabulary, "<unk>", "<|startoftext|> $A <|endoftext|>", ["<|startoftext|>", "<|endoftext|>"])


def t5_tokenizer(vocabulary=T5_VOCABULARY):
    return word_tokenizer(vocabulary, "<unk>", "$A </s>", ["</s>", "<pad>"])


def save_clip(folder, hidden_act="quick_gelu", eos_token_id=EOS, full_model=False):
    torch.manual_seed(0)
    text = dict(vocab_size=len(CLIP_VOCABULARY), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=16, hidden_act=hidden_act, bos_token_id=BOS,
                eos_token_id=eos_token_id, pad_token_id=0)
    if full_model:  # a whole CLIPModel: the text encoder's tensors among the vision encoder's
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      image_size=32, patch_size=16)
        model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision))
    else:
        model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**text))
    model.eval().save_pretrained(folder, safe_serialization=True)
    clip_tokenizer().save(str(folder / "tokenizer.json"))
    return model.text_model if full_model else model


def save_t5(folder, feed_forward_proj="relu", full_model=False):
    torch.manual_seed(0)
    # Few buckets over a short distance, so that 24 tokens reach the logarithmic and the last buckets.
    config = transformers.T5Config(vocab_size=len(T5_VOCABULARY) + 4, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                   num_decoder_layers=1, num_heads=4, relative_attention_num_buckets=8,
                                   relative_attention_max_distance=16, feed_forward_proj=feed_forward_proj)
    model_class = transformers.T5ForConditionalGeneration if full_model else transformers.T5EncoderModel
    model = model_class(config)
    model.eval().save_pretrained(folder, safe_serialization=True)
    t5_tokenizer().save(str(folder / "tokenizer.json"))
    return model.get_encoder() if full_model else model


def torch_outputs(model, ids, attention_mask=None):
    with torch.no_grad():
        mask = None if attention_mask is None else torch.tensor(np.asarray(attention_mask), dtype=torch.long)
        out = model(input_ids=torch.tensor(np.asarray(ids), dtype=torch.long), attention_mask=mask)
    pooled = getattr(out, "pooler_output", None)
    return out.last_hidden_state.numpy(), None if pooled is None else pooled.numpy()


def max_difference(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.mark.parametrize("hidden_act, eos_token_id, full_model", [
    ("quick_gelu", EOS, False),
    ("gelu", 2, False),  # configs from before transformers' fix: pooled at the largest id
    ("quick_gelu", EOS, True),
])
def test_clip_equals_transformers(tmp_path, hidden_act, eos_token_id, full_model):
    model = save_clip(tmp_path, hidden_act, eos_token_id, full_model)
    encoder, tokenizer = load_pretrained_encoder(tmp_path)
    ids = np.concatenate([tokenizer.encode_batch(CAPTIONS), tokenizer.empty(1)])  # (4, 16)
    tokens, mask, pooled = encoder(jax.numpy.asarray(ids))
    expected_tokens, expected_pooled = torch_outputs(model, ids)  # no attention_mask, as CLIP's users call it
    assert tokens.shape == (4, 16, 32) and pooled.shape == (4, 32)
    assert max_difference(tokens, expected_tokens) <= TOLERANCE
    assert max_difference(pooled, expected_pooled) <= TOLERANCE
    # The mask keeps each caption up to and including its first EOS.
    first_eos = np.argmax(ids == EOS, axis=1)
    np.testing.assert_array_equal(mask, np.arange(16)[None] <= first_eos[:, None])


@pytest.mark.parametrize("feed_forward_proj, full_model", [("relu", False), ("gated-gelu", False),
                                                          ("gated-gelu", True)])
def test_t5_equals_transformers(tmp_path, feed_forward_proj, full_model):
    model = save_t5(tmp_path, feed_forward_proj, full_model)
    encoder, tokenizer = load_pretrained_encoder(tmp_path, max_length=24)
    ids = np.concatenate([tokenizer.encode_batch(CAPTIONS), tokenizer.empty(1)])  # (4, 24)
    tokens, mask, pooled = encoder(jax.numpy.asarray(ids))
    expected_tokens, _ = torch_outputs(model, ids, attention_mask=ids != 0)
    np.testing.assert_array_equal(mask, ids != 0)
    assert max_difference(tokens, expected_tokens) <= TOLERANCE
    weights = (ids != 0)[..., None]
    expected_pooled = (expected_tokens * weights).sum(1) / weights.sum(1)
    assert max_difference(pooled, expected_pooled) <= TOLERANCE


def test_padding_changes_no_caption_output(tmp_path):
    clip_folder, t5_folder = tmp_path / "clip", tmp_path / "t5"
    save_clip(clip_folder)
    save_t5(t5_folder, "gated-gelu")
    for folder, short, long in [(clip_folder, 13, 16), (t5_folder, 12, 24)]:
        encoder, tokenizer = load_pretrained_encoder(folder, max_length=long)
        ids = tokenizer.encode_batch(CAPTIONS[:2])
        long_tokens, long_mask, long_pooled = encoder(jax.numpy.asarray(ids))
        short_tokens, short_mask, short_pooled = encoder(jax.numpy.asarray(ids[:, :short]))
        assert int(long_mask.sum()) == int(short_mask.sum()) and not long_mask[:, short:].any()
        caption = np.asarray(short_mask)[..., None]
        assert max_difference(np.asarray(long_tokens)[:, :short] * caption, np.asarray(short_tokens) * caption) <= 1e-6
        assert max_difference(long_pooled, short_pooled) <= 1e-6


def test_tokenizer_encodes_like_the_releases(tmp_path):
    clip_folder, t5_folder = tmp_path / "clip", tmp_path / "t5"
    save_clip(clip_folder)
    save_t5(t5_folder)
    clip = load_pretrained_encoder(clip_folder, max_length=8)[1]
    t5 = load_pretrained_encoder(t5_folder, max_length=8)[1]
    red, flower = CLIP_VOCABULARY.index("red"), CLIP_VOCABULARY.index("flower")
    # CLIP: BOS, the words, EOS, then padding with EOS (Stable Diffusion 1.x's pad token).
    np.testing.assert_array_equal(clip.encode("A red flower"), [BOS, 1, red, flower, EOS, EOS, EOS, EOS])
    np.testing.assert_array_equal(clip.empty(2), [[BOS, EOS] + [EOS] * 6] * 2)
    # T5: the words, EOS (1), then padding (0).
    assert t5.encode("a red flower").tolist() == [3, 4, 10, 1, 0, 0, 0, 0]
    assert t5.empty(1).tolist() == [[1, 0, 0, 0, 0, 0, 0, 0]]
    assert clip.encode("a red flower").dtype == np.int32 and clip.vocab_size == len(CLIP_VOCABULARY)
    for tokenizer in (clip, t5):
        assert tokenizer.max_length == 8 and tokenizer.encode_batch(CAPTIONS[:2], truncate=True).shape == (2, 8)
        with pytest.raises(CaptionError, match="empty"):
            tokenizer.encode("  ")
        with pytest.raises(CaptionError, match="longer than the 8 tokens"):
            tokenizer.encode(CAPTIONS[1])
    # Truncation keeps the special tokens: a cut caption still ends in EOS.
    assert clip.encode(CAPTIONS[1], truncate=True)[-1] == EOS
    assert t5.encode(CAPTIONS[1], truncate=True)[-1] == 1
    assert clip.decode(clip.encode("a red flower")) == "a red flower"


def rewrite_tensors(folder, change):
    path = folder / "model.safetensors"
    tensors = safetensors_numpy.load_file(str(path))
    change(tensors)
    safetensors_numpy.save_file(tensors, str(path))


def test_clear_errors(tmp_path):
    save_clip(tmp_path)
    (tmp_path / "tokenizer.json").rename(tmp_path / "elsewhere.json")
    with pytest.raises(PretrainedEncoderError, match="has no tokenizer.json.*must hold config.json, model.safetensors"):
        load_pretrained_encoder(tmp_path)
    clip_tokenizer(CLIP_VOCABULARY + ["zebra", "giraffe"]).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(PretrainedEncoderError, match=f"has {len(CLIP_VOCABULARY) + 2} tokens.*has "
                                                     f"{len(CLIP_VOCABULARY)} rows"):
        load_pretrained_encoder(tmp_path)
    clip_tokenizer().save(str(tmp_path / "tokenizer.json"))

    name = "encoder.layers.1.mlp.fc2.weight"
    rewrite_tensors(tmp_path, lambda tensors: tensors.update({name: tensors[name][:, :10]}))
    misshapen = rf"{name}' has shape \(32, 10\), but config.json describes \(32, 64\)"
    with pytest.raises(PretrainedEncoderError, match=misshapen):
        load_pretrained_encoder(tmp_path)
    rewrite_tensors(tmp_path, lambda tensors: tensors.pop(name))
    with pytest.raises(PretrainedEncoderError, match=f"has no tensor '{name}'"):
        load_pretrained_encoder(tmp_path)
    with pytest.raises(PretrainedEncoderError, match="describes a clip model, not a t5 one"):
        load_pretrained_encoder(tmp_path, "t5")
    (tmp_path / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\nsize 123\n")
    with pytest.raises(PretrainedEncoderError, match="not a safetensors file.*Git LFS pointer"):
        load_pretrained_encoder(tmp_path)

    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(PretrainedEncoderError, match="hidden_act 'relu'"):
        load_pretrained_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "t5", "feed_forward_proj": "swish"}))
    with pytest.raises(PretrainedEncoderError, match="feed_forward_proj 'swish'"):
        load_pretrained_encoder(tmp_path)
    with pytest.raises(PretrainedEncoderError, match="does not exist"):
        load_pretrained_encoder(tmp_path / "nowhere")
