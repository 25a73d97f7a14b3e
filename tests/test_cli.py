import functools
import inspect
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from minidiff.autoencoder import file_sha256
from minidiff.command.benchmark import benchmark
from minidiff.command.cli import (DEMO_CAPTIONS, DEMO_GUIDANCE, DEMO_MINUTES, DEMO_RECIPE, build_parser, draw_grid,
                                  main)
from minidiff.command.options import TRAIN_OPTIONS
from minidiff.corruption import PREDICTIONS
from minidiff.datasets import DATASETS, load_dataset
from minidiff.evaluation.evaluate import evaluate
from minidiff.evaluation.pixel_judge import measure_pixel_adherence
from minidiff.flows import FLOW_SAMPLERS, TIME_SAMPLINGS, VELOCITY
from minidiff.generator import Generator
from minidiff.machinery.checkpoints import Checkpoint
from minidiff.model import BACKBONES, OBJECTIVES, PRESETS, preset
from minidiff.sampling import SAMPLERS, X0_CLIPPINGS
from minidiff.training import PRECISIONS, TrainConfig


def defaults_of(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items()}


def subcommand(name):
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[name]


def option(command, flag):
    return next(a for a in subcommand(command)._actions if flag in a.option_strings)


def test_help_explains_every_command_and_option(capsys):
    parser = build_parser()
    for command in ("demo", "train", "train-autoencoder", "sample", "adherence", "evaluate", "bench"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        for action in subcommand(command)._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{command} {action.option_strings} has no help text"
                assert action.option_strings[-1] in text


def test_option_defaults_and_choices_are_the_libraries_own():
    """Every option that sets a config field or a function's parameter has that field's default (but
    for the few a command changes on purpose), and its choices are the module's own tuple."""
    intended = {("train", "sample_every"): 500, ("demo", "sample_every"): 0,
                ("demo", "batch_size"): DEMO_RECIPE["batch_size"],
                ("demo", "learning_rate"): DEMO_RECIPE["learning_rate"]}
    # The demo trains for minutes, whatever the CPU; train for TrainConfig's steps.
    assert subcommand("demo").get_default("default_length") == {"minutes": DEMO_MINUTES}
    assert subcommand("train").get_default("default_length") == {"steps": TrainConfig.steps}
    assert option("demo", "--preset").default == DEMO_RECIPE["preset"]
    assert option("demo", "--attention-at").default == DEMO_RECIPE["attention_at"]
    assert option("train", "--preset").default == "small"
    defaults = TrainConfig()
    for command in ("demo", "train"):
        for name in TRAIN_OPTIONS:
            flag = "--" + name.replace("_", "-")
            expected = intended.get((command, name), getattr(defaults, name))
            assert option(command, flag).default == expected, (command, flag)
        assert option(command, "--prediction").default is None  # the objective's own (OBJECTIVES[objective][0])
        assert option(command, "--backbone").default is None and option(command, "--objective").default is None
        assert tuple(option(command, "--backbone").choices) == tuple(BACKBONES)
        assert tuple(option(command, "--objective").choices) == tuple(OBJECTIVES)
        assert tuple(option(command, "--time-sampling").choices) == TIME_SAMPLINGS
        assert option(command, "--image-size").default == defaults_of(preset)["image_size"]
        assert option(command, "--num-images").default == defaults_of(load_dataset)["num_images"]
        assert option(command, "--data-seed").default == defaults_of(load_dataset)["seed"]
        assert set(option(command, "--prediction").choices) == set(PREDICTIONS) | {VELOCITY}
        assert tuple(option(command, "--preset").choices) == PRESETS
        assert tuple(option(command, "--dataset").choices) == DATASETS
        assert tuple(option(command, "--precision").choices) == PRECISIONS
    assert option("demo", "--guidance").default == DEMO_GUIDANCE
    sample_defaults = defaults_of(Generator.sample)
    for command in ("sample", "evaluate"):
        for name in ("sampler", "steps", "guidance", "seed"):
            assert option(command, "--" + name).default == sample_defaults[name], (command, name)
        assert set(option(command, "--sampler").choices) == set(SAMPLERS) | set(FLOW_SAMPLERS)
    for command in ("sample", "adherence", "evaluate"):
        assert option(command, "--upscaler").default == []
        for flag in ("--upscaler-sampler", "--upscaler-steps", "--upscaler-guidance", "--augmentation-level"):
            assert option(command, flag).default is None  # each upscaler's own: Generator.then's
    assert option("train", "--upscale-from").default is None  # a base model, or a resumed run's own
    assert option("sample", "--eta").default == sample_defaults["eta"]
    assert tuple(option("sample", "--x0-clipping").choices) == X0_CLIPPINGS
    assert option("sample", "--per-caption").default == defaults_of(draw_grid)["per_caption"]
    assert option("adherence", "--num-images").default == defaults_of(measure_pixel_adherence)["num_images"]
    assert option("evaluate", "--num-samples").default == defaults_of(evaluate)["num_samples"]
    assert option("evaluate", "--judge-steps").default is None  # judge_for's, per kind of data
    assert option("train", "--autoencoder").default is None and option("sample", "--autoencoder").default is None
    assert option("train-autoencoder", "--steps").default is None  # AutoencoderTraining's, or a resumed run's
    assert option("train", "--split").default == defaults_of(load_dataset)["split"]
    assert option("bench", "--image-size").default == [defaults_of(preset)["image_size"]]
    assert option("bench", "--precision").default == TrainConfig.precision
    assert option("bench", "--steps").default == defaults_of(benchmark)["steps"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run of `minidiff train`, shared by the tests that need a checkpoint."""
    run = tmp_path_factory.mktemp("cli") / "run"
    args = ["train", "--preset", "tiny", "--image-size", "16", "--num-images", "32", "--steps", "2",
            "--batch-size", "4", "--sample-every", "0", "--out", str(run), "--quiet", "--attention-at", "8", "4"]
    assert main(args) == 0
    return run


def test_the_demo_trains_draws_its_grid_and_grades_itself(tmp_path, capsys, monkeypatch):
    """The demo's --steps and --seed are its training's; its grid and the images it grades itself on
    are drawn with the sampler's own defaults and the demo's guidance, and it prints one line per
    attribute."""
    drawn = []
    original = Generator.sample

    @functools.wraps(original)  # the options read their defaults from its signature
    def recording(self, captions, **settings):
        drawn.append((len(captions), settings))
        return original(self, captions, **settings)

    monkeypatch.setattr(Generator, "sample", recording)
    out = tmp_path / "demo"
    assert main(["demo", "--preset", "tiny", "--image-size", "16", "--num-images", "32", "--steps", "2",
                 "--batch-size", "4", "--seed", "3", "--out", str(out), "--quiet"]) == 0
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "checkpoint.npz").is_file()
    header = Checkpoint(out / "checkpoint.npz").header["model_config"]  # the recipe's model, unless told otherwise
    assert (header["backbone"], header["objective"]) == (DEMO_RECIPE["backbone"], DEMO_RECIPE["objective"])
    printed = capsys.readouterr().out
    assert f"wrote {(out / 'demo.png').resolve()}" in printed
    grid = len(DEMO_CAPTIONS) * defaults_of(draw_grid)["per_caption"]
    assert drawn[0] == (grid, {"guidance": DEMO_GUIDANCE})
    assert [(n, s["guidance"], s["batch_size"]) for n, s in drawn[1:]] == [(96, DEMO_GUIDANCE, grid)] * 2
    lines = [line.strip() for line in printed.splitlines() if "match their caption" in line]
    assert [line.split(":")[0] for line in lines] == ["petal colour", "centre colour", "flower background",
                                                      "body colour", "wing colour", "beak colour", "bird facing",
                                                      "bird background"]
    assert re.fullmatch(r"petal colour: \d+ % of images match their caption, \d+ % for pairs never seen "
                        r"\(chance 14 %\)", lines[0])
    assert re.fullmatch(r"bird facing: \d+ % of images match their caption, \d+ % for pairs never seen \(chance 50 %\)",
                        lines[6])


def test_resume_without_a_length_keeps_the_runs_own(trained, tmp_path, capsys):
    """--resume with neither --steps nor --minutes continues to the end of the run as it was set (here
    2 steps, all done), not to the command's default length."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes((trained / "checkpoint.npz").read_bytes())
    assert main(["train", "--resume", "--out", str(run), "--num-images", "32", "--batch-size", "4", "--sample-every", "0",
                 "--quiet"]) == 0
    assert "at step 2 of 2" in capsys.readouterr().out
    assert Checkpoint(run / "checkpoint.npz").header["step"] == 2


def test_train_then_sample_and_evaluate(trained, tmp_path, capsys):
    assert (trained / "checkpoint.npz").is_file() and (trained / "loss.png").is_file()
    assert Checkpoint(trained / "checkpoint.npz").header["model_config"]["unet"]["attention_resolutions"] == [8, 4]
    grid = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(trained / "checkpoint.npz"), "--caption", "a red flower",
                 "--caption", "a blue bird", "--steps", "2", "--per-caption", "2", "--out", str(grid)]) == 0
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Evaluate: trains a judge once (kept beside the checkpoint), then writes metrics and a grid.
    evaluation = tmp_path / "evaluation"
    args = ["evaluate", "--checkpoint", str(trained / "checkpoint.npz"), "--num-samples", "4", "--sampler", "heun",
            "--steps", "2", "--judge-steps", "2", "--out", str(evaluation), "--quiet"]
    assert main(args) == 0
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["nfe"] == 3 and metrics["num_samples"] == 4 and 0 <= metrics["judge_adherence_mean"] <= 1
    assert (trained / "judge-toy-train-16px.npz").is_file() and (evaluation / "samples.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--caption", ""], "has no words"),
    (["--caption", "a flower", "--guidance", "nan"], "guidance scale must be a finite number"),
    (["--caption", "a flower", "--eta", "2"], "eta must be between 0"),
    (["--caption", "a flower", "--sampler", "euler"], "a diffusion model samples with one of ('ddim'"),
])
def test_bad_sampling_input_is_a_clear_error_and_writes_nothing(trained, tmp_path, capsys, args, message):
    out = tmp_path / "bad.png"
    assert main(["sample", "--checkpoint", str(trained / "checkpoint.npz"), "--out", str(out), *args]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and not out.exists()


def test_a_dit_trained_as_a_flow_samples_with_euler_and_resumes_only_as_itself(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--image-size", "16", "--num-images", "32", "--batch-size", "4", "--sample-every", "0", "--out", str(run),
              "--quiet"]
    assert main(["train", "--preset", "tiny", "--backbone", "dit", "--objective", "flow", "--steps", "2", *common]) == 0
    assert "DiT, 4 blocks of width 64 over 4x4 patches of 4x4 px; flow, predicts velocity" in capsys.readouterr().out
    header = Checkpoint(run / "checkpoint.npz").header["model_config"]
    assert (header["backbone"], header["objective"], header["prediction"]) == ("dit", "flow", "velocity")
    grid = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(run / "checkpoint.npz"), "--caption", "a red flower", "--steps", "3",
                 "--per-caption", "2", "--out", str(grid)]) == 0
    assert grid.is_file()
    evaluation = tmp_path / "evaluation"
    assert main(["evaluate", "--checkpoint", str(run / "checkpoint.npz"), "--num-samples", "4", "--sampler", "heun",
                 "--steps", "2", "--judge-steps", "2", "--out", str(evaluation), "--quiet"]) == 0
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert (metrics["sampler"], metrics["nfe"]) == ("heun", 3)
    for extra, message in ((["--sampler", "ddim"], "a flow model samples with one of ('euler', 'heun'), not 'ddim'"),
                           (["--eta", "0.5"], "a flow's samplers are deterministic")):
        assert main(["sample", "--checkpoint", str(run / "checkpoint.npz"), "--caption", "a red flower",
                     "--out", str(tmp_path / "bad.png"), *extra]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bad.png").exists()
    for extra, message in ((["--backbone", "unet"], "is a run with --backbone dit; it cannot resume with unet"),
                           (["--objective", "diffusion"], "is a run with --objective flow"),
                           (["--upscale-from", "8"], "is a run with --upscale-from none (a base model); it cannot resume with 8")):
        assert main(["train", "--resume", "--steps", "3", *common, *extra]) == 2
        assert message in capsys.readouterr().err
    assert Checkpoint(run / "checkpoint.npz").header["step"] == 2


def test_an_upscaler_trains_and_follows_a_base_model_in_sample_and_evaluate(trained, tmp_path, capsys):
    """`train --upscale-from` makes an upscaler (its sample grids upscale real images); `sample` and
    `evaluate` chain it after a base model's checkpoint, with its own settings; mismatches are refused."""
    upscaler = tmp_path / "sr"
    assert main(["train", "--preset", "tiny", "--image-size", "32", "--upscale-from", "16", "--num-images", "32",
                 "--steps", "2", "--batch-size", "4", "--sample-every", "2", "--out", str(upscaler), "--quiet"]) == 0
    assert "an upscaler from 16 to 32 px" in capsys.readouterr().out
    assert Checkpoint(upscaler / "checkpoint.npz").header["model_config"]["upscale_from"] == 16
    assert (upscaler / "samples_step000002.png").is_file()
    cascade = ["--checkpoint", str(trained / "checkpoint.npz"), "--upscaler", str(upscaler / "checkpoint.npz")]
    grid = tmp_path / "grid.png"
    assert main(["sample", *cascade, "--caption", "a red flower", "--steps", "2", "--upscaler-steps", "3",
                 "--augmentation-level", "0.2", "--per-caption", "2", "--out", str(grid)]) == 0
    assert grid.is_file()
    evaluation = tmp_path / "evaluation"
    assert main(["evaluate", *cascade, "--num-samples", "4", "--steps", "2", "--upscaler-steps", "2",
                 "--judge-steps", "2", "--out", str(evaluation), "--quiet"]) == 0
    assert (trained / "judge-toy-train-32px.npz").is_file()  # the judge of the cascade's output size
    for extra, message in (
            (["--checkpoint", str(upscaler / "checkpoint.npz")], "is an upscaler (from 16 px): give a base model's"),
            ([*cascade, "--upscaler", str(upscaler / "checkpoint.npz")], "takes 16 px images of 3 channels, but the "
             "stage before it makes 32 px"),
            ([*cascade, "--upscaler-steps", "2", "3"], "--upscaler-steps has 2 values for 1 upscaler(s)"),
            ([*cascade, "--augmentation-level", "2"], "the augmentation level is a noise level between 0"),
            (["--checkpoint", str(trained / "checkpoint.npz"), "--upscaler-guidance", "2"],
             "--upscaler-guidance sets upscalers, and no --upscaler was given")):
        assert main(["sample", *extra, "--caption", "a red flower", "--out", str(tmp_path / "bad.png")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bad.png").exists()


def test_a_latent_model_trains_on_its_autoencoders_latents_and_samples_like_any(tmp_path, capsys, monkeypatch):
    """`train-autoencoder` (and its resume), then `train --autoencoder`; `sample` finds the autoencoder the
    checkpoint records, and refuses another."""
    monkeypatch.setenv("MINIDIFF_CACHE_DIR", str(tmp_path / "cache"))
    data = ["--image-size", "16", "--num-images", "32", "--batch-size", "4", "--quiet"]
    autoencoder = tmp_path / "ae"
    assert main(["train-autoencoder", *data, "--steps", "2", "--out", str(autoencoder)]) == 0
    out = capsys.readouterr().out
    assert "16 px images to 4x4x4 latents (f = 4)" in out and "dB PSNR" in out
    assert all((autoencoder / name).is_file() for name in ("autoencoder.npz", "reconstructions.png", "loss.png"))
    assert main(["train-autoencoder", *data, "--steps", "3", "--resume", "--out", str(autoencoder)]) == 0
    assert "resuming" in capsys.readouterr().out and Checkpoint(autoencoder / "autoencoder.npz").header["step"] == 3
    assert main(["train-autoencoder", *data, "--factor", "8", "--resume", "--out", str(autoencoder)]) == 2
    assert "--factor is the resumed autoencoder's own" in capsys.readouterr().err
    file = autoencoder / "autoencoder.npz"

    run = tmp_path / "latent"
    assert main(["train", *data, "--autoencoder", str(file), "--preset", "tiny", "--steps", "2", "--sample-every", "2",
                 "--out", str(run)]) == 0
    assert "a latent model: it diffuses 4x4x4 latents" in capsys.readouterr().out
    assert (run / "samples_step000002.png").is_file()
    assert Checkpoint(run / "checkpoint.npz").header["model_config"]["autoencoder_sha256"] == file_sha256(file)
    assert len(list((tmp_path / "cache").glob("latents-*.npy"))) == 1
    sample = ["sample", "--checkpoint", str(run / "checkpoint.npz"), "--caption", "a red flower", "--steps", "2",
              "--per-caption", "2"]
    assert main([*sample, "--out", str(tmp_path / "grid.png")]) == 0 and (tmp_path / "grid.png").is_file()

    other = tmp_path / "other"
    assert main(["train-autoencoder", *data, "--steps", "2", "--seed", "1", "--out", str(other)]) == 0
    capsys.readouterr()
    for extra, message in ((["--autoencoder", str(other / "autoencoder.npz")], "not the autoencoder this model was "
                             "trained with"),
                           (["--autoencoder", str(tmp_path / "gone.npz")], "no file at"),
                           (["--x0-clipping", "static"], "no range to clip to")):
        assert main([*sample, *extra, "--out", str(tmp_path / "bad.png")]) == 2
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error and not (tmp_path / "bad.png").exists(), extra
    assert main(["train", *data, "--image-size", "32", "--autoencoder", str(file), "--steps", "1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "the autoencoder encodes 16 px images" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_bad_options_are_refused_before_any_work(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["train", "--preset", "tiny", "--image-size", "16", "--num-images", "32", "--out", str(run), "--quiet"]
    base = [*common, "--steps", "2"]
    for extra, message in ((["--batch-size", "0"], "batch_size must be a whole number of at least 1, got 0"),
                           (["--learning-rate", "-1"], "learning_rate must be a positive number, got -1.0"),
                           (["--learning-rate", "nan"], "learning_rate must be a positive number"),
                           (["--attention-at", "8", "5"], "attention can go at [8, 4]"),
                           (["--backbone", "dit", "--attention-at", "8"], "every block of a DiT attends"),
                           (["--objective", "flow", "--prediction", "eps"], "a flow model cannot predict 'eps'"),
                           (["--time-sampling", "beta"], None)):
        if message is None:  # a choice argparse refuses itself
            with pytest.raises(SystemExit):
                main([*base, *extra])
            assert "invalid choice: 'beta'" in capsys.readouterr().err and not run.exists()
            continue
        assert main([*base, *extra]) == 2, extra
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error, (extra, error)
        assert not run.exists()
    # A run lasts --steps or --minutes, not both; minutes are a positive number.
    for command in ([*base, "--minutes", "1"], [*common, "--minutes", "0"], [*common, "--minutes", "nan"],
                    [*common, "--minutes", "soon"]):
        with pytest.raises(SystemExit) as exit_:
            main(command)
        assert exit_.value.code == 2 and "error: argument --minutes" in capsys.readouterr().err, command
        assert not run.exists()
    # The demo checks its grid's guidance before minutes of training.
    assert main(["demo", "--guidance", "inf", "--out", str(run)]) == 2
    assert "guidance scale must be a finite number" in capsys.readouterr().err and not run.exists()
    # Options only the command has are checked by argparse, with usage and exit status 2.
    for command in (["sample", "--checkpoint", "x.npz", "--caption", "a flower", "--per-caption", "0"],
                    ["sample", "--checkpoint", "x.npz", "--caption", "a flower", "--steps", "-3"],
                    ["evaluate", "--checkpoint", "x.npz", "--num-samples", "1"],
                    ["sample", "--checkpoint", "x.npz", "--caption", "a flower", "--sampler", "rk4"]):
        with pytest.raises(SystemExit) as exit_:
            main(command)
        assert exit_.value.code == 2 and "error: argument" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path / "none.npz"), "--caption", "a flower"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_a_multi_host_run_starts_jax_distributed_before_the_devices(tmp_path):
    """--multi-host with one process (a coordinator on this machine): jax.distributed must be started
    before anything starts JAX's devices, which the CPU's one-device-per-core set-up does."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="1", JAX_PROCESS_ID="0")
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "minidiff.command.cli", "train", "--multi-host", "--preset", "tiny",
                             "--image-size", "16", "--num-images", "32", "--steps", "2", "--batch-size", "4",
                             "--sample-every", "0", "--out", str(run), "--quiet"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and (run / "checkpoint.npz").is_file(), result.stderr[-3000:]
