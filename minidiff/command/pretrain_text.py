"""`minidiff pretrain-text`: a text encoder trained on text alone, for a model to read captions with, frozen.

    minidiff pretrain-text --corpus ../shared/data/cub_200_2011_captions/text --out runs/birds_text
    minidiff train --recipe toy --set data.dataset=birds model.text_encoder_file=runs/birds_text/text_encoder.npz

Imagen in miniature (`minidiff.text_encoders.masked_language_model`): the
encoder learns to fill in hidden words of every sentence of the corpus, and
its vocabulary is the corpus's. It trains in the loop everything trains in
(`minidiff.loop`), without a moving average.
"""

import dataclasses
from pathlib import Path

from minidiff.captions import TextEncoderConfig, Tokenizer
from minidiff.command.options import at_least, positive_number
from minidiff.loop import TrainConfig
from minidiff.model import TEXT_PRESETS
from minidiff.text_encoders import TEXT_ENCODERS
from minidiff.text_encoders.frozen import save_text_encoder
from minidiff.text_encoders.masked_language_model import pretrain, read_corpus

# How a text encoder pretrains unless told otherwise.
PRETRAINING = TrainConfig(steps=2000, batch_size=128, learning_rate=1e-3, ema_decay=0.0, log_every=20)


def cmd_pretrain_text(args):
    sentences = read_corpus(*args.corpus)
    tokenizer = Tokenizer.from_captions(sentences, max_length=args.max_length, min_count=args.min_count)
    dim, depth, heads = TEXT_PRESETS[args.preset]
    config = TextEncoderConfig(vocab_size=tokenizer.vocab_size, max_length=args.max_length, dim=dim, depth=depth,
                               heads=heads)
    train_config = dataclasses.replace(PRETRAINING, steps=args.steps, batch_size=args.batch_size,
                                       learning_rate=args.learning_rate, seed=args.seed)
    print(f"corpus: {len(sentences)} sentences, {tokenizer.vocab_size} words (those seen at least {args.min_count} "
          f"times); a {args.preset} {args.text_encoder} encoder")
    run = pretrain(sentences, config, args.text_encoder, tokenizer, train_config, progress=not args.quiet)
    print(f"pretrained {args.steps} steps in {run.seconds:.0f} s: of the hidden words of held-out sentences, "
          f"{run.validation_accuracy:.0%} predicted exactly")
    path = Path(args.out) / "text_encoder.npz"
    save_text_encoder(path, run.encoder, args.text_encoder, tokenizer, corpus=[str(c) for c in args.corpus],
                      sentences=run.sentences, steps=args.steps, losses=run.losses,
                      validation_accuracy=run.validation_accuracy)
    print(f"wrote {path}; train a model that reads captions with it, frozen:\n"
          f"  minidiff train --recipe ... --set model.text_encoder_file={path}")


def add_pretrain_text_command(commands) -> None:
    p = commands.add_parser("pretrain-text", help="pretrain a text encoder on text alone (a masked language model)",
                            description="Train a text encoder to fill in hidden words of a corpus (Devlin et al. "
                            "2019), and write it to OUT/text_encoder.npz; a recipe's model.text_encoder_file then "
                            "trains a model that reads captions with it, frozen (as Imagen does with T5).")
    p.add_argument("--corpus", nargs="+", required=True, metavar="PATH", help="text files (one sentence per line) "
                   "or folders of them, e.g. ../shared/data/cub_200_2011_captions/text")
    p.add_argument("--text-encoder", choices=tuple(TEXT_ENCODERS), default="transformer",
                   help="the kind of encoder (default: %(default)s)")
    p.add_argument("--preset", choices=tuple(TEXT_PRESETS), default="small",
                   help="its size, as the model presets' text encoders (default: %(default)s)")
    p.add_argument("--max-length", type=at_least(2), default=32, help="tokens per sentence, BOS included; longer "
                   "sentences are cut (default: %(default)s)")
    p.add_argument("--min-count", type=at_least(1), default=2, help="keep words seen at least this often; rarer "
                   "ones read as <unk> (default: %(default)s)")
    p.add_argument("--steps", type=at_least(1), default=PRETRAINING.steps, help="training steps (default: %(default)s)")
    p.add_argument("--batch-size", type=at_least(1), default=PRETRAINING.batch_size,
                   help="sentences per step (default: %(default)s)")
    p.add_argument("--learning-rate", type=positive_number, default=PRETRAINING.learning_rate,
                   help="the peak AdamW learning rate (default: %(default)s)")
    p.add_argument("--seed", type=at_least(0), default=PRETRAINING.seed, help="seed of initialisation, batches and "
                   "masking (default: %(default)s)")
    p.add_argument("--out", default="runs/text_encoder", help="the folder to write text_encoder.npz to "
                   "(default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_pretrain_text)
