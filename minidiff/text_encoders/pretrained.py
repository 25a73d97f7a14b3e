"""Loading released text encoders: CLIP's and T5's, from the files their releases ship.

A release folder (as on the Hugging Face hub) holds three files:

  config.json        the architecture, in transformers' words (`CLIPTextConfig`, `T5Config`)
  model.safetensors  the weights under transformers' names: a JSON header and raw
                     arrays, read without PyTorch and without unpickling anything
  tokenizer.json     the tokenizer, read by the `tokenizers` library

Loading builds the encoder with shapes only (no random initialisation to pay
for), then fills each parameter with its tensor, checked by name and shape. A
PyTorch `Linear` stores its weight as (out, in); flax's `nnx.Linear` kernel is
(in, out), so those are transposed. Whatever the file's dtype (float16,
bfloat16), the encoder computes in float32.
"""

import json
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (teaches numpy bfloat16, the dtype some releases are stored in)
import numpy as np
import tokenizers
from flax import nnx
from safetensors import SafetensorError, safe_open

from minidiff.captions import CaptionError
from minidiff.machinery.initialisation import shapes_only
from minidiff.text_encoders.clip import CLIPTextConfig, CLIPTextEncoder
from minidiff.text_encoders.t5 import T5Config, T5TextEncoder

FILES = ("config.json", "model.safetensors", "tokenizer.json")
# config.json's model_type -> which encoder reads it.
KINDS = {"clip_text_model": "clip", "clip": "clip", "t5": "t5", "mt5": "t5"}
# The pad token when neither tokenizer.json nor tokenizer_config.json names one: what
# Stable Diffusion 1.x pads CLIP's captions with, and T5's own.
PAD_TOKENS = {"clip": "<|endoftext|>", "t5": "<pad>"}
# T5 reads any length (its positions are relative); 77 tokens, CLIP's length, hold most captions.
T5_MAX_LENGTH = 77


class PretrainedEncoderError(ValueError):
    """A release folder that cannot be loaded: the message says what is wrong and what to do."""


# --- Where each parameter lies in transformers' files --------------------------------


def _add(names: dict, ours: str, theirs: str, weight: str = "kernel", bias: bool = True) -> None:
    """Name a layer's weight ("kernel" of a Linear, "scale" of a norm) and bias after its PyTorch twin's."""
    names[f"{ours}.{weight}"] = theirs + ".weight"
    if bias:
        names[f"{ours}.bias"] = theirs + ".bias"


def clip_names(config: CLIPTextConfig, available: set[str]) -> dict[str, str]:
    """{our parameter's path: its tensor's name} for CLIPTextEncoder."""
    # CLIPModel files (and CLIPTextModel files written by transformers 4) prefix the text
    # encoder's names with "text_model."; transformers 5 writes CLIPTextModel's without it.
    prefix = "text_model." if "text_model.final_layer_norm.weight" in available else ""
    names = {"token_embedding.embedding": "embeddings.token_embedding.weight",
             "position_embedding.embedding": "embeddings.position_embedding.weight"}
    _add(names, "final_norm", "final_layer_norm", "scale")
    for i in range(config.num_hidden_layers):
        ours, theirs = f"layers.{i}.", f"encoder.layers.{i}."
        _add(names, ours + "attention_norm", theirs + "layer_norm1", "scale")
        _add(names, ours + "mlp_norm", theirs + "layer_norm2", "scale")
        for our_name, their_name in [("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"),
                                     ("output", "out_proj")]:
            _add(names, ours + "attention." + our_name, theirs + "self_attn." + their_name)
        _add(names, ours + "mlp_in", theirs + "mlp.fc1")
        _add(names, ours + "mlp_out", theirs + "mlp.fc2")
    return {ours: prefix + theirs for ours, theirs in names.items()}


def t5_names(config: T5Config, available: set[str]) -> dict[str, str]:
    """{our parameter's path: its tensor's name} for T5TextEncoder; decoder tensors are not read."""
    # The input embedding is shared with the decoder: files hold it as "shared.weight",
    # some also (or only) as the encoder's "encoder.embed_tokens.weight".
    embedding = "shared.weight" if "shared.weight" in available else "encoder.embed_tokens.weight"
    # The position bias lives in the first layer's attention, which computes it for all layers.
    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    names = {"token_embedding.embedding": embedding, "relative_attention_bias.embedding": bias}
    _add(names, "final_norm", "encoder.final_layer_norm", "scale", bias=False)
    for i in range(config.num_layers):
        ours, theirs = f"layers.{i}.", f"encoder.block.{i}.layer."
        _add(names, ours + "attention_norm", theirs + "0.layer_norm", "scale", bias=False)
        for our_name, their_name in [("query", "q"), ("key", "k"), ("value", "v"), ("output", "o")]:
            _add(names, ours + "attention." + our_name, theirs + "0.SelfAttention." + their_name, bias=False)
        _add(names, ours + "mlp_norm", theirs + "1.layer_norm", "scale", bias=False)
        feed_forward = theirs + "1.DenseReluDense."
        if config.feed_forward_proj.startswith("gated"):
            _add(names, ours + "feed_forward.mlp_gate", feed_forward + "wi_0", bias=False)
            _add(names, ours + "feed_forward.mlp_in", feed_forward + "wi_1", bias=False)
        else:
            _add(names, ours + "feed_forward.mlp_in", feed_forward + "wi", bias=False)
        _add(names, ours + "feed_forward.mlp_out", feed_forward + "wo", bias=False)
    return names


# --- Reading the folder -----------------------------------------------------------


def _require_files(folder: Path) -> None:
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        problem = "does not exist" if not folder.is_dir() else f"has no {', '.join(missing)}"
        raise PretrainedEncoderError(
            f"{folder} {problem}: a text encoder's folder must hold {', '.join(FILES)}, as the releases on the "
            "Hugging Face hub do (e.g. openai/clip-vit-large-patch14, google/flan-t5-base); a transformers model "
            "saved with save_pretrained, and its tokenizer's tokenizer.json beside it, makes one too")


def _read_config(folder: Path, kind: str | None) -> tuple[str, CLIPTextConfig | T5Config]:
    path = folder / "config.json"
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PretrainedEncoderError(f"{path} is not JSON ({error})") from error
    found = KINDS.get(d.get("model_type")) or kind
    if found is None:
        raise PretrainedEncoderError(f"{path} describes a {d.get('model_type')!r} model; minidiff loads CLIP's and "
                                     f"T5's text encoders (model_type one of {sorted(KINDS)})")
    if kind is not None and kind != found:
        raise PretrainedEncoderError(f"{path} describes a {found} model, not a {kind} one")
    try:
        return found, (CLIPTextConfig if found == "clip" else T5Config).from_hf_dict(d)
    except (TypeError, ValueError) as error:
        raise PretrainedEncoderError(f"{path}: {error}") from error


def _fill(encoder: nnx.Module, names_for, path: Path) -> None:
    """Give each of the shapes-only `encoder`'s parameters its tensor from the safetensors file at `path`."""
    flat = nnx.to_flat_state(nnx.state(encoder))
    try:
        file = safe_open(path, framework="numpy")  # reads only the tensors asked for
    except SafetensorError as error:
        raise PretrainedEncoderError(f"{path} is not a safetensors file ({error}); if it is a small text file, "
                                     "it is a Git LFS pointer: fetch the file itself (git lfs pull)") from error
    with file:
        available = set(file.keys())
        names = names_for(encoder.config, available)
        for our_path, variable in flat:
            name = names[".".join(map(str, our_path))]
            if name not in available:
                raise PretrainedEncoderError(
                    f"{path} has no tensor {name!r}: the weights are not those of the model config.json "
                    "describes; use the model.safetensors released with this config.json")
            tensor = file.get_tensor(name)
            is_kernel = our_path[-1] == "kernel"
            expected = variable.shape[::-1] if is_kernel else variable.shape  # in PyTorch's layout, as stored
            if tuple(tensor.shape) != tuple(expected):
                raise PretrainedEncoderError(
                    f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, but config.json describes "
                    f"{tuple(expected)}: the two files come from different models")
            value = np.asarray(tensor, np.float32)
            variable.set_value(jnp.asarray(value.T if is_kernel else value))
    nnx.update(encoder, nnx.from_flat_state(flat))


# --- The tokenizer ------------------------------------------------------------------


class PretrainedTokenizer:
    """A release's own tokenizer (its tokenizer.json), with the interface of `minidiff.captions.Tokenizer`.

    A caption becomes max_length ids: its tokens inside the release's special
    tokens (CLIP: BOS ... EOS; T5: ... EOS), then padding. The tokenizers
    library does the padding and the truncation.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, max_length: int, pad_token: str):
        self.pad_id = tokenizer.token_to_id(pad_token)
        if self.pad_id is None:
            raise PretrainedEncoderError(f"the tokenizer has no pad token {pad_token!r}: name the token to pad "
                                         "with as 'pad_token' in a tokenizer_config.json beside tokenizer.json")
        self.max_length = max_length
        self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())  # a copy, to set padding on
        # Truncation leaves room for the special tokens, so a cut caption still ends in EOS.
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding(length=max_length, pad_id=self.pad_id, pad_token=pad_token)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def encode_batch(self, captions, truncate: bool = False) -> np.ndarray:
        """Captions -> (B, max_length) int32 ids. As for `minidiff.captions.Tokenizer`, an empty
        caption is an error, and so is one too long for the model unless `truncate`."""
        captions = list(captions)
        for caption in captions:
            if not caption.strip():
                raise CaptionError(f"caption {caption!r} is empty; write a sentence such as 'a red flower "
                                   "with a yellow centre' (for no caption at all, use empty())")
        encodings = self._tokenizer.encode_batch(captions)
        for caption, encoding in zip(captions, encodings):
            if encoding.overflowing and not truncate:  # what truncation cut off
                raise CaptionError(f"caption is longer than the {self.max_length} tokens this model reads "
                                   f"(special tokens included); shorten it: {caption!r}")
        return np.array([encoding.ids for encoding in encodings], np.int32)

    def encode(self, caption: str, truncate: bool = False) -> np.ndarray:
        """Caption -> (max_length,) int32 ids."""
        return self.encode_batch([caption], truncate)[0]

    def empty(self, batch_size: int = 1) -> np.ndarray:
        """The ids of the empty caption "" (CLIP's: BOS, EOS, padding): Stable Diffusion's unconditional caption."""
        ids = np.array(self._tokenizer.encode("").ids, np.int32)
        return np.tile(ids, (batch_size, 1))

    def decode(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


def _pad_token(folder: Path, tokenizer: tokenizers.Tokenizer, kind: str) -> str:
    """tokenizer.json's own padding token, else tokenizer_config.json's, else the release's usual one."""
    if tokenizer.padding:
        return tokenizer.padding["pad_token"]
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        pad_token = json.loads(config_path.read_text()).get("pad_token")
        pad_token = pad_token.get("content") if isinstance(pad_token, dict) else pad_token  # an AddedToken
        if pad_token:
            return pad_token
    return PAD_TOKENS[kind]


def _read_tokenizer(folder: Path, kind: str, max_length: int) -> PretrainedTokenizer:
    path = folder / "tokenizer.json"
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as error:  # the tokenizers library raises a bare Exception
        raise PretrainedEncoderError(f"{path} is not a tokenizer.json the tokenizers library reads "
                                     f"({error})") from error
    return PretrainedTokenizer(tokenizer, max_length, _pad_token(folder, tokenizer, kind))


# --- Loading ------------------------------------------------------------------------


def load_pretrained_encoder(folder, kind: str | None = None, max_length: int | None = None
                            ) -> tuple[CLIPTextEncoder | T5TextEncoder, PretrainedTokenizer]:
    """(encoder, tokenizer) from a release folder. `kind`, "clip" or "t5", is read from config.json when
    not given; `max_length` is the caption length in tokens (CLIP: its 77 positions; T5: 77)."""
    folder = Path(folder)
    _require_files(folder)
    kind, config = _read_config(folder, kind)
    if kind == "clip":
        encoder_class, names_for = CLIPTextEncoder, clip_names
        max_length = max_length or config.max_position_embeddings
        if max_length > config.max_position_embeddings:
            raise PretrainedEncoderError(f"max_length {max_length}: CLIP's text encoder has positions for "
                                         f"{config.max_position_embeddings} tokens")
    else:
        encoder_class, names_for = T5TextEncoder, t5_names
        max_length = max_length or T5_MAX_LENGTH
    tokenizer = _read_tokenizer(folder, kind, max_length)
    if tokenizer.vocab_size > config.vocab_size:
        raise PretrainedEncoderError(
            f"{folder / 'tokenizer.json'} has {tokenizer.vocab_size} tokens, but the model's embedding table "
            f"(config.json's vocab_size) has {config.vocab_size} rows, so some ids would have no vector: "
            "use the tokenizer.json released with this model")
    if kind == "t5" and tokenizer.pad_id != config.pad_token_id:
        raise PretrainedEncoderError(
            f"the tokenizer pads with id {tokenizer.pad_id}, the model's padding mask takes id "
            f"{config.pad_token_id} (config.json's pad_token_id) for padding: use the tokenizer released with it")
    encoder = shapes_only(encoder_class, config)
    _fill(encoder, names_for, folder / "model.safetensors")
    return encoder, tokenizer

