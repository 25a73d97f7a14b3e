import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minidiff.attention import attention
from minidiff.captions import BOS, PAD, UNK, CaptionError, Tokenizer
from minidiff.model import create_model, preset


@pytest.fixture()
def tok():
    return Tokenizer.from_captions(["a red flower", "a blue bird with red wings"], max_length=8)


def test_round_trip_and_layout(tok):
    ids = tok.encode("A red, red Flower!")
    assert ids[0] == BOS and ids.dtype == np.int32 and ids.shape == (8,)
    assert tok.decode(ids) == "a red red flower"
    assert list(ids[5:]) == [PAD] * 3


def test_unknown_words_map_to_unk(tok):
    ids = tok.encode("a purple flower")
    assert ids[2] == UNK and tok.decode(ids) == "a <unk> flower"
    assert tok.unknown_words("a purple flower") == ["purple"]


def test_empty_and_too_long_captions_are_clear_errors(tok):
    for empty in ("", "   ", "?!"):
        with pytest.raises(CaptionError, match="no words"):
            tok.encode(empty)
    too_long = "a red flower with a blue bird and red wings"
    with pytest.raises(CaptionError, match="at most 7"):
        tok.encode(too_long)
    assert tok.decode(tok.encode(too_long, truncate=True)) == "a red flower with a blue bird"


def test_empty_caption_ids_and_serialisation(tok):
    empty = tok.empty(2)
    assert empty.shape == (2, 8) and list(empty[0]) == [BOS] + [PAD] * 7
    assert Tokenizer.from_dict(tok.to_dict()) == tok


def test_attention_ignores_masked_keys():
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 5, 2, 4))
    mask = jnp.array([[True, True, True, False, False]] * 2)
    garbage = k.at[:, 3:].set(1e3), v.at[:, 3:].set(-1e3)
    np.testing.assert_allclose(attention(q, k, v, mask), attention(q, *garbage, mask), atol=1e-5)


def test_text_encoder_shapes_and_padding_mask():
    model = create_model(preset("tiny", 20, max_length=8))
    encoder = model.text_encoder
    ids = jnp.array([[BOS, 5, 6, PAD, PAD, PAD, PAD, PAD], [BOS, 7, 8, 9, 10, 11, 12, 13]])
    tokens, mask, pooled = encoder(ids)
    assert tokens.shape == (2, 8, 32) and pooled.shape == (2, 32)
    assert mask.tolist()[0] == [True, True, True] + [False] * 5
