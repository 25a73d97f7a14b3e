"""`minidiff pretrain-text`: a text encoder trained on text alone, for a model to read captions with, frozen.

    minidiff pretrain-text --corpus ../shared/data/cub_200_2011_captions/text --out runs/birds_text.npz
    minidiff train --dataset birds --text-encoder-file runs/birds_text.npz

Imagen in miniature (`minidiff.text_encoders.masked_language_model`): the
encoder learns to fill in hidden words of every sentence of the corpus, and
its vocabulary is the corpus's.
"""

from minidiff.captions import TextEncoderConfig, Tokenizer
from minidiff.command.options import at_least, parameter_option, positive_number
from minidiff.model import TEXT_PRESETS
from minidiff.text_encoders import TEXT_ENCODERS
from minidiff.text_encoders.frozen import save_text_encoder
from minidiff.text_encoders.masked_language_model import pretrain, read_corpus


def cmd_pretrain_text(args):
    sentences = read_corpus(*args.corpus)
    tokenizer = Tokenizer.from_captions(sentences, max_length=args.max_length, min_count=args.min_count)
    dim, depth, heads = TEXT_PRESETS[args.preset]
    config = TextEncoderConfig(vocab_size=tokenizer.vocab_size, max_length=args.max_length, dim=dim, depth=depth,
                               heads=heads, kind=args.text_encoder)
    print(f"corpus: {len(sentences)} sentences, {tokenizer.vocab_size} words (those seen at least {args.min_count} "
          f"times); a {args.preset} {args.text_encoder} encoder")
    run = pretrain(sentences, config, tokenizer, steps=args.steps, batch_size=args.batch_size,
                   learning_rate=args.learning_rate, seed=args.seed, progress=not args.quiet)
    print(f"pretrained {args.steps} steps in {run.seconds:.0f} s: of the hidden words of held-out sentences, "
          f"{run.validation_accuracy:.0%} predicted exactly")
    save_text_encoder(args.out, run.encoder, tokenizer, corpus=[str(c) for c in args.corpus],
                      sentences=run.sentences, steps=args.steps, losses=run.losses,
                      validation_accuracy=run.validation_accuracy)
    print(f"wrote {args.out}; train a model that reads captions with it, frozen:\n"
          f"  minidiff train --text-encoder-file {args.out} ...")


def add_pretrain_text_command(commands) -> None:
    p = commands.add_parser("pretrain-text", help="pretrain a text encoder on text alone (a masked language model)",
                            description="Train a text encoder to fill in hidden words of a corpus (Devlin et al. "
                            "2019), and write it to one file; minidiff train --text-encoder-file FILE then trains a "
                            "model that reads captions with it, frozen (as Imagen does with T5).")
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
    for name, kind in (("steps", at_least(1)), ("batch_size", at_least(1)), ("learning_rate", positive_number),
                       ("seed", at_least(0))):
        parameter_option(p, pretrain, name, name.replace("_", " "), type=kind)
    p.add_argument("--out", default="runs/text_encoder.npz", help="the file to write (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_pretrain_text)
