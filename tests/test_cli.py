"""The command: every option explained and each flag meaning one thing, recipes and their fields refused
when they do not exist or do not apply, runs of every kind (`conftest.trained`, made through the command)
sampled, evaluated, resumed and chained, and bad input stopped before any work with one line."""

import functools
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from minidiff.autoencoder import file_sha256
from minidiff.command.cli import DEMO_CAPTIONS, PER_CAPTION, build_parser, main
from minidiff.command.options import SAMPLING_SETTINGS
from minidiff.generator import Generator, load
from minidiff.machinery.checkpoints import Checkpoint
from minidiff.model import BACKBONES, PRESETS
from minidiff.recipe import describe_recipes, load_recipe, recipe_names, what_it_trains
from minidiff.sampling import SAMPLERS, SPACINGS, X0_CLIPPINGS, SamplerSettings

PNG = b"\x89PNG\r\n\x1a\n"


def subcommand(name):
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices[name]


def option(command, flag):
    return next(a for a in subcommand(command)._actions if flag in a.option_strings)


def flags(command) -> set[str]:
    return {flag for action in subcommand(command)._actions for flag in action.option_strings}


def test_help_explains_every_command_and_option(capsys):
    parser = build_parser()
    for command in ("demo", "recipes", "train", "train-autoencoder", "pretrain-text", "sample", "adherence",
                    "evaluate", "bench"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        for action in subcommand(command)._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{command} {action.option_strings} has no help text"
                assert action.option_strings[-1] in text


def test_a_run_is_set_by_its_recipe_and_the_command_has_few_options():
    """What a run trains comes from its recipe and --set alone: train and demo have the same few options,
    none of which says what to train (preset, backbone, batch size... are recipe fields)."""
    run_flags = {"--set", "--steps", "--minutes", "--out", "--resume", "--data-parallel", "--multi-host", "--quiet",
                 "--data-dir", "--download", "--no-cache", "-h", "--help"}
    assert flags("train") == run_flags | {"--recipe"}
    assert flags("demo") == run_flags  # the demo's recipe is its own
    assert flags("train-autoencoder") == run_flags - {"--data-parallel", "--multi-host"} | {"--recipe"}
    assert subcommand("train").get_default("default_recipe") == "toy"
    assert subcommand("demo").get_default("default_recipe") == "demo"
    assert subcommand("train-autoencoder").get_default("default_recipe") == "autoencoder"


def test_sampling_options_are_the_sampler_settings_and_default_to_the_models_own():
    assert SAMPLING_SETTINGS == tuple(f for f in SamplerSettings.__dataclass_fields__)
    for command in ("sample", "evaluate"):
        for name in SAMPLING_SETTINGS:
            assert option(command, "--" + name.replace("_", "-")).default is None, (command, name)
        assert option(command, "--seed").default == 0
        assert tuple(option(command, "--sampler").choices) == SAMPLERS
        assert tuple(option(command, "--x0-clipping").choices) == X0_CLIPPINGS
        assert tuple(option(command, "--spacing").choices) == SPACINGS
    for command in ("sample", "adherence", "evaluate"):
        assert option(command, "--upscaler").default == []
        for flag in ("--upscaler-sampler", "--upscaler-sampling-steps", "--upscaler-guidance", "--augmentation-level"):
            assert option(command, flag).default is None  # each upscaler's own
    assert tuple(option("bench", "--preset").choices) == PRESETS
    assert tuple(option("bench", "--backbone").choices) == tuple(BACKBONES)


def test_each_flag_means_one_thing_in_every_command():
    """--out is the folder a command writes into; --steps training steps; --sampling-steps a sampler's."""
    for command in ("demo", "train", "train-autoencoder", "pretrain-text", "sample", "adherence", "evaluate", "bench"):
        assert "folder" in option(command, "--out").help.lower() or "out/" in option(command, "--out").help.lower(), command
    for command in ("demo", "train", "train-autoencoder", "pretrain-text", "bench"):
        assert "step" in option(command, "--steps").help and "sampl" not in option(command, "--steps").help
    for command in ("sample", "adherence", "evaluate"):
        assert "--steps" not in flags(command) and "--sampling-steps" in flags(command)


def test_recipes_lists_every_recipe_with_one_line(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == describe_recipes() and len(lines) == len(recipe_names())
    assert {"demo", "demo-unet", "toy", "first-model", "words", "autoencoder"} <= set(recipe_names())
    for name in recipe_names():  # every recipe file reads as what it trains, in both modes
        for smoke in (False, True):
            load_recipe(name, smoke=smoke, trains=what_it_trains(name))


def test_the_demo_trains_draws_its_grid_and_grades_itself(tmp_path, capsys, monkeypatch):
    """The demo trains its recipe (here shortened with --set); its grid and the images it grades itself on
    are drawn with the recipe's [sample] settings, and it prints one line per attribute."""
    drawn = []
    original = Generator.sample

    @functools.wraps(original)
    def recording(self, captions, **settings):
        drawn.append((len(captions), self.sampler_settings(**{k: v for k, v in settings.items() if k != "seed"
                                                                and k != "batch_size"})))
        return original(self, captions, **settings)

    monkeypatch.setattr(Generator, "sample", recording)
    out = tmp_path / "demo"
    assert main(["demo", "--steps", "2", "--out", str(out), "--quiet", "--set", "data.image_size=16",
                 "data.num_images=32", "train.batch_size=4", "train.seed=3", "sample.sampling_steps=2"]) == 0
    assert (out / "demo.png").read_bytes()[:8] == PNG and (out / "checkpoint.npz").is_file()
    header = Checkpoint(out / "checkpoint.npz").header
    assert header["recipe"]["name"] == "demo" and header["recipe"]["train"]["seed"] == 3
    assert (header["model_config"]["backbone"], header["model_config"]["process"]["kind"]) == ("dit", "flow")
    printed = capsys.readouterr().out
    assert f"wrote {(out / 'demo.png').resolve()}" in printed
    demo = load_recipe("demo").sample
    expected = SamplerSettings(sampler=demo.sampler, sampling_steps=2, guidance=demo.guidance, x0_clipping="static")
    assert drawn == [(len(DEMO_CAPTIONS) * PER_CAPTION, expected), (96, expected), (96, expected)]
    lines = [line.strip() for line in printed.splitlines() if "match their caption" in line]
    assert [line.split(":")[0] for line in lines] == ["petal colour", "centre colour", "flower background",
                                                      "body colour", "wing colour", "beak colour", "bird facing",
                                                      "bird background"]


def test_a_run_records_its_recipe_and_model_and_draws_a_grid_at_its_end(trained):
    unet = Checkpoint(trained["unet"] / "checkpoint.npz").header
    assert unet["recipe"]["name"] == "toy" and unet["model_config"]["denoiser"]["attention_resolutions"] == [8, 4]
    assert (trained["unet"] / "loss.png").read_bytes()[:8] == PNG
    assert (trained["unet"] / "samples_step000002.png").is_file()  # report_every 0: a grid at the end only


def test_a_dit_flow_run_says_what_it_trains(trained):
    dit = Checkpoint(trained["dit"] / "checkpoint.npz").header["model_config"]
    assert (dit["backbone"], dit["process"]["kind"]) == ("dit", "flow")
    assert "DiT, 4 blocks of width 64 over 4x4 patches of 4x4 px; flow, predicts velocity" in \
        (trained["dit"] / "printed.txt").read_text()


def test_an_upscaler_run_upscales_real_images_in_its_grids(trained):
    assert "an upscaler from 16 to 32 px" in (trained["upscaler"] / "printed.txt").read_text()
    assert (trained["upscaler"] / "samples_step000002.png").is_file()  # real images downsampled and upscaled


def test_an_autoencoder_run_and_a_latent_run_on_its_latents(trained):
    printed = (trained["autoencoder"] / "printed.txt").read_text()
    assert "16 px images to 4x4x4 latents (f = 4)" in printed and "dB PSNR" in printed
    assert all((trained["autoencoder"] / name).is_file() for name in ("autoencoder.npz", "reconstructions.png",
                                                                      "loss.png"))
    assert "a latent model of 4x4x4 latents" in (trained["latent"] / "printed.txt").read_text()
    latent = Checkpoint(trained["latent"] / "checkpoint.npz").header["model_config"]
    assert latent["autoencoder_sha256"] == file_sha256(trained["autoencoder"] / "autoencoder.npz")


def test_sample_and_evaluate_a_run(trained, tmp_path, capsys):
    checkpoint = str(trained["unet"] / "checkpoint.npz")
    assert main(["sample", "--checkpoint", checkpoint, "--caption", "a red flower", "--caption", "a blue bird",
                 "--sampling-steps", "2", "--per-caption", "2", "--out", str(tmp_path / "grid")]) == 0
    assert (tmp_path / "grid" / "samples.png").read_bytes()[:8] == PNG
    # Evaluate: trains a judge once (kept beside the checkpoint), then writes metrics and a grid.
    run = tmp_path / "run"
    shutil.copytree(trained["unet"], run)
    evaluation = tmp_path / "evaluation"
    assert main(["evaluate", "--checkpoint", str(run / "checkpoint.npz"), "--num-samples", "4", "--sampler", "heun",
                 "--sampling-steps", "2", "--judge-steps", "2", "--out", str(evaluation), "--quiet"]) == 0
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert (metrics["sampler"], metrics["nfe"], metrics["num_samples"]) == ("heun", 3, 4)
    assert 0 <= metrics["judge_adherence_mean"] <= 1
    assert 0 <= metrics["r_precision_generated"] <= 1 and 0 <= metrics["r_precision_real"] <= 1
    assert (run / "judge-toy-train-16px.npz").is_file() and (evaluation / "samples.png").is_file()
    assert (run / "caption-judge-toy-train-16px.npz").is_file()  # the caption judge is kept beside it too
    assert "R-precision (caption first of 100)" in capsys.readouterr().out


def test_every_sampler_draws_from_a_flow_model_too(trained, tmp_path):
    """One sampler loop for both processes: DDPM, DDIM, Heun and DPM-Solver++ on the DiT trained as a flow."""
    for sampler in SAMPLERS:
        out = tmp_path / sampler
        assert main(["sample", "--checkpoint", str(trained["dit"] / "checkpoint.npz"), "--caption", "a red flower",
                     "--sampler", sampler, "--sampling-steps", "2", "--per-caption", "2", "--out", str(out)]) == 0
        assert (out / "samples.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--caption", ""], "has no words"),
    (["--caption", "a flower", "--guidance", "nan"], "guidance scale must be a finite number"),
    (["--caption", "a flower", "--eta", "2"], "eta must be between 0"),
    (["--caption", "a flower", "--sampler", "heun", "--eta", "0.5"], "eta is DDIM's noise; heun adds none"),
])
def test_bad_sampling_input_is_a_clear_error_and_writes_nothing(trained, tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    assert main(["sample", "--checkpoint", str(trained["unet"] / "checkpoint.npz"), "--out", str(out), *args]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and not out.exists()


def test_resume_continues_a_run_with_its_own_recipe_and_refuses_any_other(trained, tmp_path, capsys):
    """--resume with neither --steps nor --minutes continues to the end of the run as it was set (here 2
    steps, all done); with --steps, further; a recipe or any other field is refused."""
    run = tmp_path / "run"
    shutil.copytree(trained["dit"], run)
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert "at step 2 of 2 steps" in capsys.readouterr().out
    assert main(["train", "--resume", "--out", str(run), "--steps", "3", "--quiet"]) == 0
    assert Checkpoint(run / "checkpoint.npz").header["step"] == 3
    for extra, message in ((["--recipe", "demo"], "continues the run in"),
                           (["--set", "model.backbone=unet"], "only its length (--steps, --minutes) may change, not "
                            "model.backbone"),
                           (["--set", "train.batch_size=8"], "not train.batch_size")):
        assert main(["train", "--resume", "--out", str(run), "--steps", "4", *extra]) == 2
        assert message in capsys.readouterr().err
    assert Checkpoint(run / "checkpoint.npz").header["step"] == 3
    assert main(["train", "--resume", "--out", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert "no run to resume" in capsys.readouterr().err


def test_an_upscaler_follows_a_base_model_in_sample_and_evaluate(trained, tmp_path, capsys):
    """`sample` and `evaluate` chain an upscaler after a base model's checkpoint, with its own settings;
    mismatches are refused."""
    base = tmp_path / "base"
    shutil.copytree(trained["unet"], base)
    cascade = ["--checkpoint", str(base / "checkpoint.npz"), "--upscaler", str(trained["upscaler"] / "checkpoint.npz")]
    assert main(["sample", *cascade, "--caption", "a red flower", "--sampling-steps", "2", "--upscaler-sampling-steps",
                 "3", "--augmentation-level", "0.2", "--per-caption", "2", "--out", str(tmp_path / "grid")]) == 0
    assert (tmp_path / "grid" / "samples.png").is_file()
    evaluation = tmp_path / "evaluation"
    assert main(["evaluate", *cascade, "--num-samples", "4", "--sampling-steps", "2", "--upscaler-sampling-steps", "2",
                 "--judge-steps", "2", "--out", str(evaluation), "--quiet"]) == 0
    assert (base / "judge-toy-train-32px.npz").is_file()  # the judge of the cascade's output size
    for extra, message in (
            (["--checkpoint", str(trained["upscaler"] / "checkpoint.npz")], "is an upscaler (from 16 px): give a base"),
            ([*cascade, "--upscaler", str(trained["upscaler"] / "checkpoint.npz")], "takes 16 px images of 3 channels, "
             "but the stage before it makes 32 px"),
            ([*cascade, "--upscaler-sampling-steps", "2", "3"], "--upscaler-sampling-steps has 2 values for 1 upscaler"),
            ([*cascade, "--augmentation-level", "2"], "the augmentation level is a noise level between 0"),
            (["--checkpoint", str(base / "checkpoint.npz"), "--upscaler-guidance", "2"],
             "--upscaler-guidance sets upscalers, and no --upscaler was given")):
        assert main(["sample", *extra, "--caption", "a red flower", "--out", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_a_latent_model_samples_like_any_and_needs_its_own_autoencoder(trained, tmp_path, capsys):
    """`sample` finds the autoencoder the checkpoint records, and refuses another; the autoencoder's run
    resumes as any run does."""
    assert len(list((trained["latent"].parent / "cache").glob("latents-*.npy"))) == 1
    sample = ["sample", "--checkpoint", str(trained["latent"] / "checkpoint.npz"), "--caption", "a red flower",
              "--sampling-steps", "2", "--per-caption", "2"]
    assert main([*sample, "--out", str(tmp_path / "grid")]) == 0 and (tmp_path / "grid" / "samples.png").is_file()
    autoencoder = tmp_path / "ae"
    shutil.copytree(trained["autoencoder"], autoencoder)
    assert main(["train-autoencoder", "--resume", "--steps", "3", "--out", str(autoencoder), "--quiet"]) == 0
    assert "resuming" in capsys.readouterr().out and Checkpoint(autoencoder / "autoencoder.npz").header["step"] == 3
    assert main(["train-autoencoder", "--resume", "--set", "autoencoder.factor=8", "--out", str(autoencoder)]) == 2
    assert "not autoencoder.factor" in capsys.readouterr().err
    for extra, message in ((["--autoencoder", str(autoencoder / "autoencoder.npz")], "not the autoencoder this model "
                             "was trained with"),
                           (["--autoencoder", str(tmp_path / "gone.npz")], "no file at"),
                           (["--x0-clipping", "static"], "no range to clip to")):
        assert main([*sample, *extra, "--out", str(tmp_path / "bad")]) == 2
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error and not (tmp_path / "bad").exists(), extra
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "bad"), "--set", "data.image_size=32",
                 f"model.autoencoder={trained['autoencoder'] / 'autoencoder.npz'}"]) == 2
    assert "encodes 16 px images: set data.image_size = 16" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_fields_that_do_not_exist_or_do_not_apply_are_refused_before_any_work(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--recipe", "toy", "--steps", "2", "--out", str(run), "--quiet", "--set", "model.preset=tiny",
            "data.image_size=16"]
    for extra, message in (
            (["train.batch_size=0"], "batch_size must be a whole number of at least 1, got 0"),
            (["train.learning_rate=-1"], "learning_rate must be a positive number, got -1.0"),
            (["train.learning_rate=nan"], "learning_rate must be a positive number"),
            (["train.batchsize=8"], "train.batchsize is not a setting here; [train] has steps, minutes, batch_size"),
            (["model.denoiser.attention_resolutions=[8,5]"], "attention can go at [8, 4]"),
            (["model.backbone=dit", "model.denoiser.attention_resolutions=[8]"], "a dit has no setting "
             "attention_resolutions"),
            (["process.time_sampling=uniform"], "process.time_sampling is not a setting of a diffusion process"),
            (["process.kind=flow", "process.loss_weighting=none"], "not a setting of a flow process"),
            (["process.prediction=velocity"], "prediction must be one of"),
            (["data.dataset=flowers", "data.num_images=10"], "data.num_images is the embedded set's"),
            (["sample.sampler=euler"], "unknown sampler 'euler'"),
            (["train.warmup=soon"], "train.warmup must be float, got 'soon'"),
            (["train.steps=3"], "--steps and --set train.steps both set the run's length: give one"),
            (["model.upscale_from=16"], "upscales from a smaller whole number of pixels"),
            (["sampling.steps=3"], "'sampling.steps' names no recipe field")):
        assert main([*base, *extra]) == 2, extra
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error, (extra, error)
        assert not run.exists()
    assert main(["train", "--recipe", "nope"]) == 2
    assert "no recipe 'nope': choose one of" in capsys.readouterr().err
    assert main(["train", "--recipe", "autoencoder", "--out", str(run)]) == 2
    assert "trains an autoencoder: run it with minidiff train-autoencoder" in capsys.readouterr().err
    assert main(["demo", "--data-dir", str(tmp_path), "--out", str(run)]) == 2
    assert "--data-dir finds flowers, birds or a folder" in capsys.readouterr().err and not run.exists()
    # A run lasts --steps or --minutes, not both; minutes are a positive number; --set wants TABLE.FIELD=VALUE.
    for command in ([*base, "--minutes", "1"], ["train", "--minutes", "0"], ["train", "--minutes", "soon"],
                    ["train", "--set", "train.steps"]):
        with pytest.raises(SystemExit) as exit_:
            main(command)
        assert exit_.value.code == 2 and "error: argument" in capsys.readouterr().err, command
        assert not run.exists()
    # Options only the command has are checked by argparse, with usage and exit status 2.
    for command in (["sample", "--checkpoint", "x.npz", "--caption", "a flower", "--per-caption", "0"],
                    ["sample", "--checkpoint", "x.npz", "--caption", "a flower", "--sampling-steps", "-3"],
                    ["sample", "--checkpoint", "x.npz", "--caption", "a flower", "--steps", "3"],
                    ["evaluate", "--checkpoint", "x.npz", "--num-samples", "1"],
                    ["sample", "--checkpoint", "x.npz", "--caption", "a flower", "--sampler", "rk4"]):
        with pytest.raises(SystemExit) as exit_:
            main(command)
        assert exit_.value.code == 2 and "error: " in capsys.readouterr().err
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
    result = subprocess.run([sys.executable, "-m", "minidiff.command.cli", "train", "--multi-host", "--recipe", "toy",
                             "--steps", "1", "--out", str(run), "--quiet", "--set", "model.preset=tiny",
                             "data.image_size=16", "data.num_images=32", "train.batch_size=4", "sample.sampling_steps=2",
                             "model.denoiser.attention_resolutions=[8,4]"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and (run / "checkpoint.npz").is_file(), result.stderr[-3000:]


def test_a_grid_can_end_each_row_with_the_real_image_its_caption_describes(trained, tmp_path, monkeypatch):
    """Real-data runs draw held-out captions with their real images beside the samples (runs.draw_grid)."""
    import numpy as np

    from minidiff.command import runs

    generator = load(trained["unet"] / "checkpoint.npz")
    size = generator.image_shape[0]
    real = np.zeros((2, size, size, 3), np.uint8)
    real[1] = 255  # a white image: its place in the grid is checked below
    shown = {}
    monkeypatch.setattr(runs, "captioned_grid", lambda images, captions, title: shown.update(
        images=images, captions=captions, title=title))
    monkeypatch.setattr(runs, "save_figure", lambda figure, path: None)
    runs.draw_grid(generator, ["a red flower", "a blue bird"], tmp_path / "grid.png", per_caption=2, real_images=real,
                   sampling_steps=2)
    assert shown["images"].shape == (6, size, size, 3) and shown["title"].endswith("last column: the real image")
    assert (shown["images"][5] == 255).all() and (shown["images"][2] == 0).all()  # each row: 2 samples, its real one
