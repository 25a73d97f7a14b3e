import json

import pytest

from minidiff.checkpoints import Checkpoint
from minidiff.cli import build_parser, main


def test_help_explains_every_command_and_option(capsys):
    parser = build_parser()
    for command in ("demo", "train", "sample", "adherence", "evaluate", "bench"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        for action in parser._subparsers._group_actions[0].choices[command]._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{command} {action.option_strings} has no help text"
                assert action.option_strings[-1] in text


def test_train_then_sample_writes_a_grid(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--image-size", "16", "--num-images", "32", "--steps", "2",
            "--batch-size", "4", "--sample-every", "0", "--out", str(run), "--quiet"]
    # Attention at a size no level has: a clear message, nothing written.
    assert main([*args, "--attention-at", "8", "5"]) == 2
    assert "attention can go at [8, 4]" in capsys.readouterr().err and not run.exists()
    assert main([*args, "--attention-at", "8", "4"]) == 0
    assert (run / "checkpoint.npz").is_file() and (run / "loss.png").is_file()
    assert Checkpoint(run / "checkpoint.npz").header["model_config"]["unet"]["attention_resolutions"] == [8, 4]
    grid = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(run / "checkpoint.npz"), "--caption", "a red flower",
                 "--caption", "a blue bird", "--steps", "2", "--per-caption", "2", "--out", str(grid)]) == 0
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Evaluate: trains a judge once (kept beside the checkpoint), then writes metrics and a grid.
    evaluation = tmp_path / "evaluation"
    args = ["evaluate", "--checkpoint", str(run / "checkpoint.npz"), "--num-samples", "4", "--sampler", "heun",
            "--steps", "2", "--judge-steps", "2", "--out", str(evaluation), "--quiet"]
    assert main(args) == 0
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["nfe"] == 3 and metrics["num_samples"] == 4 and 0 <= metrics["adherence_mean"] <= 1
    assert (run / "judge-toy-16px.npz").is_file() and (evaluation / "samples.png").is_file()

    # Bad input: a clear message and exit status 2, nothing written.
    bad = tmp_path / "bad.png"
    assert main(["sample", "--checkpoint", str(run / "checkpoint.npz"), "--caption", "", "--out", str(bad)]) == 2
    assert "has no words" in capsys.readouterr().err and not bad.exists()
    assert main(["sample", "--checkpoint", str(tmp_path / "none.npz"), "--caption", "a flower"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
