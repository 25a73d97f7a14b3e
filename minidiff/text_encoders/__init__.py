"""Text encoders: what the words mean to the denoiser (chapter 5).

Every encoder has the interface of `minidiff.captions.TextEncoder`: token ids
(B, L) in, and out one vector per token (B, L, D) for cross-attention, the
padding mask (B, L), and a pooled vector (B, D) for the noise-level embedding.

  bag_of_words.py           the mean of word vectors: order forgotten
  lstm.py                   a bidirectional LSTM (Reed et al. 2016's era)
  (captions.py)             the transformer, the course's default
  masked_language_model.py  pretraining an encoder on text alone (Devlin et al. 2019)
  frozen.py                 that encoder, frozen, and the caption embeddings cached
  clip.py  t5.py            the real ones: CLIP's (Stable Diffusion 1.x) and T5's (Imagen)
  pretrained.py             loading those from the safetensors and tokenizer.json releases ship
"""

from minidiff.captions import TextEncoder
from minidiff.text_encoders.bag_of_words import BagOfWords
from minidiff.text_encoders.lstm import BiLSTMEncoder

# The encoders a model can be built with (`ModelConfig.text_encoder`, a recipe's model.text_encoder).
TEXT_ENCODERS = {"transformer": TextEncoder, "lstm": BiLSTMEncoder, "bag_of_words": BagOfWords}
