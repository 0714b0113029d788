"""The command line's messages and options: outputs checked before the work, one-line errors,
help texts that say what the code does. Tiny runs only (a second or two each), CPU."""

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import visionzoo
from visionzoo.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
# a 2-block ConvMixer of width 16 on 8x8 digits (as in test_train.py)
TINY = ["--model", "convmixer_256_8", "--model-arg", "dim=16", "--model-arg", "depth=2", "--model-arg", "patch_size=2",
        "--img-size", "8", "--batch-size", "32", "--progress", "none"]


def _one_line_error(args, capsys, *needles):
    """The command fails with exit code 2 and one line on stderr, having printed nothing else."""
    rc = main(args)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.strip(), out  # refused before any work
    for n in needles:
        assert n in err, err
    return err


def _image_folder(root: Path, classes=("a", "b"), n=5) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            img = (torch.rand(12, 12, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(img).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """One epoch of a tiny model on digits, trained and evaluated under bf16 autocast."""
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--amp", "bf16", "--output", str(out)]) == 0
    return out


# ---------------------------------------------------------------- eval
@pytest.mark.parametrize("name, needle", [
    ("afile", "pictures are written as"),          # matplotlib would write afile.png
    ("cm.txt", "pictures are written as"),
    ("adir.png", "is a folder"),
    ("nodir/cm.png", "the folder"),
    ("afile.txt/cm.png", "afile.txt is a file, not a folder"),
])
def test_eval_output_is_checked_before_evaluating(bf16_run, tmp_path, capsys, name, needle):
    (tmp_path / "adir.png").mkdir()
    (tmp_path / "afile.txt").write_text("x")
    _one_line_error(["eval", "--checkpoint", str(bf16_run / "model.safetensors"), "--output", str(tmp_path / name)], capsys, needle)
    assert not (tmp_path / "nodir").exists() and not (tmp_path / "afile.png").exists()


def test_eval_prints_the_picture_it_wrote(bf16_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cm.png"
    assert main(["eval", "--checkpoint", str(bf16_run / "model.safetensors"), "--output", str(out)]) == 0
    written = capsys.readouterr().out.split("confusion matrix: ")[1].strip()
    assert Path(written) == out and out.is_file()


def test_eval_amp_reproduces_the_runs_held_out_figures(bf16_run, capsys):
    """Training validates under its --amp; eval --amp bf16 computes the same figures."""
    s = json.loads((bf16_run / "summary.json").read_text())
    ckpt = str(bf16_run / "model.safetensors")
    assert main(["eval", "--checkpoint", ckpt, "--amp", "bf16", "--batch-size", "64", "--output", str(bf16_run / "cm.png")]) == 0
    text = capsys.readouterr().out
    assert f"bf16 autocast): top-1 {s['top1']:.4f}  top-5 {s['top5']:.4f}  loss {s['loss']:.4f}" in text, (text, s)
    if not torch.cuda.is_available():
        _one_line_error(["eval", "--checkpoint", ckpt, "--amp", "fp16"], capsys, "--amp fp16 needs a CUDA device")


def test_eval_on_digits_holds_out_the_runs_own_split(tmp_path, capsys):
    """A run with --val-split 0.1 (and gradient accumulation): eval --data digits scores the
    same held-out images the run did, not the default 20 % (half of them trained on); so do
    the best epoch's weights."""
    pytest.importorskip("sklearn")
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--val-split", "0.1", "--grad-accum-steps", "2", "--output", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["heldout_images"] == 179 and s["grad_accum_steps"] == 2  # 10 % of each class, rounded
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "model.safetensors"), "--data", "digits"]) == 0
    text = capsys.readouterr().out
    assert f"179 images): top-1 {s['top1']:.4f}  top-5 {s['top5']:.4f}  loss {s['loss']:.4f}" in text, (text, s)
    # the best epoch's weights (timm's model_best) score the run's best held-out top-1
    assert main(["eval", "--checkpoint", str(out / "model_best.safetensors"), "--data", "digits"]) == 0
    assert f"179 images): top-1 {s['best_top1']:.4f}" in capsys.readouterr().out and s["best_epoch"] in (1, 2)


def test_eval_of_a_folder_with_train_but_no_val_names_what_eval_takes(bf16_run, tmp_path, capsys):
    """A folder with train/ and no val/ the run did not hold out from: eval used to advise
    --val-split, which only train takes."""
    data = _image_folder(tmp_path / "data" / "train")
    err = _one_line_error(["eval", "--checkpoint", str(bf16_run / "model.safetensors"), "--data", str(data.parent)], capsys,
                          "has train/ but no val/ folder to evaluate on", f"--data {data} to evaluate every image in it")
    assert "--val-split" not in err


@pytest.mark.parametrize("cmd", ["eval", "train"])
def test_workers_must_not_be_negative(tmp_path, capsys, cmd):
    extra = ["--checkpoint", str(tmp_path / "c.safetensors")] if cmd == "eval" else ["--output", str(tmp_path / "o")]
    _one_line_error([cmd, *extra, "--workers", "-1"], capsys, "--workers must be >= 0, got -1")


def test_a_damaged_image_read_by_a_worker_process_is_one_line(tmp_path, capsys):
    """A truncated image (its header passes the scan before training) read in a DataLoader
    worker: torch raises the worker's error again with the worker's traceback as its message,
    which used to be printed whole; now the worker's own one line, naming the file."""
    data = _image_folder(tmp_path / "imgs")
    png = data / "a" / "0.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    args = ["train", "--data", str(data), *TINY, "--batch-size", "2", "--epochs", "1", "--val-split", "0.4"]
    assert main([*args, "--workers", "1", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == f"visionzoo train: error: {png}: not a readable image (OSError)\n", err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- predict
def test_predict_on_a_folder_skips_hidden_files_and_folders(bf16_run, tmp_path, capsys):
    """Hidden files (macOS's ._ copies) and folders under a folder given are not read, as training
    skips them (predict used to fail on them and exit 2); a hidden file named is read."""
    import shutil

    data = _image_folder(tmp_path / "photos", n=2)
    shutil.copy(data / "a" / "0.png", data / ".real.png")
    for junk in ("._0.png", "a/.hidden.png", ".thumbs/x.png", "b/.cache/y.png"):
        (data / junk).parent.mkdir(exist_ok=True)
        (data / junk).write_bytes(b"not a png")
    ckpt = ["--checkpoint", str(bf16_run / "model.safetensors"), "--json"]
    assert main(["predict", str(data), *ckpt]) == 0
    rows = [json.loads(r)["image"] for r in capsys.readouterr().out.splitlines()]
    assert rows == [str(data / f) for f in ("a/0.png", "a/1.png", "b/0.png", "b/1.png")]
    (data / "a" / "IMG_1.heic").write_bytes(b"x")  # other files are named as skipped (training refuses them)
    (data / "notes.txt").write_text("x")
    assert main(["predict", str(data), *ckpt]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    (data / "a" / "IMG_1.heic").unlink()
    assert main(["predict", str(data), *ckpt]) == 0
    assert capsys.readouterr().err == f"note: {data}: skipped 1 file without an image extension (notes.txt)\n"
    (data / "a" / "IMG_1.heic").write_bytes(b"x")
    assert main(["predict", str(data), *ckpt]) == 0
    assert "skipped 2 files without an image extension (IMG_1.heic, notes.txt)" in capsys.readouterr().err
    assert main(["predict", str(data / ".real.png"), *ckpt]) == 0
    assert json.loads(capsys.readouterr().out)["image"] == str(data / ".real.png")


# ---------------------------------------------------------------- analysis pictures
def test_rf_output_under_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    _one_line_error(["rf", "--rates", "1,2", "--output", str(tmp_path / "afile" / "x.png")], capsys,
                    f"{tmp_path / 'afile'} is a file, not a folder")
    _one_line_error(["rf", "--rates", "1,2", "--output", str(tmp_path / "nodir" / "x.png")], capsys, "does not exist")


@pytest.mark.parametrize("args, needle", [
    (["--rates", "1,2", "--kernel", "0"], "--kernel must be positive, got 0"),  # it said kernel_size
    (["--rates", "0,2"], "--rates must be positive integers, got 0,2"),  # it said 'dilation rates ... [0, 2]'
])
def test_rf_refusals_name_the_option(capsys, args, needle):
    _one_line_error(["rf", *args], capsys, needle)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])
def test_attention_rollout_without_image_is_refused_before_the_model_is_built(tmp_path, capsys, monkeypatch, name):
    def build(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(visionzoo, "create_model", build)
    err = _one_line_error(["attention", "rollout", name, "--output", str(tmp_path / "a.png")], capsys, "--image is required")
    assert "random weights" not in err


def test_attention_refusal_of_a_cnn_is_one_line(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "img.png")
    err = _one_line_error(["attention", "rollout", "resnet18", "--img-size", "32", "--image", str(tmp_path / "img.png"),
                           "--output", str(tmp_path / "a.png")], capsys, "ViT-style")
    assert "random weights" not in err


def _colour_photo(path: Path) -> Path:
    """A 40x48 RGB picture whose channels differ, so a grey conversion is not a channel pick."""
    from PIL import Image

    y, x = torch.meshgrid(torch.arange(40), torch.arange(48), indexing="ij")
    rgb = torch.stack([x * 5, y * 6, (x * y) % 256], -1).to(torch.uint8).numpy()
    Image.fromarray(rgb).save(path)
    return path


def _recording(monkeypatch, fn_name):
    """Replace ``visionzoo.analysis.<fn_name>`` by a wrapper that records (model, input, result)."""
    import visionzoo.analysis as analysis

    calls = []
    fn = getattr(analysis, fn_name)

    def wrapper(model, x, *args, **kwargs):
        out = fn(model, x, *args, **kwargs)
        calls.append((model, x, out))
        return out

    monkeypatch.setattr(analysis, fn_name, wrapper)
    return calls


def test_attention_reads_a_train_runs_checkpoint_as_predict_does(tmp_path, capsys, monkeypatch):
    """A visionzoo train run's checkpoint (architecture overrides, 1-channel 32 px digits, its
    normalisation) is rebuilt as load_trained rebuilds it, and the image (a colour photo)
    converted to grey and normalised as predict does: the maps are those of the trained
    network. attention used create_model(name, checkpoint=...), which refused the file
    (learned_2d keys, depth 2) or drew a fresh 224 px, 3-channel, ImageNet-normalised ViT."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from visionzoo.analysis import attention_rollout, mean_attention_distance
    from visionzoo.train.data import eval_transform, load_image
    from visionzoo.train.inference import load_trained

    run = tmp_path / "run"
    assert main(["train", "--model", "vit_tiny_patch16_224", "--img-size", "32", "--model-arg", "depth=2",
                 "--model-arg", "patch_size=8", "--model-arg", "pos_embed=learned_2d", "--epochs", "1",
                 "--batch-size", "64", "--progress", "none", "--output", str(run)]) == 0
    ckpt = str(run / "model.safetensors")
    expected, info = load_trained(ckpt, "vit_tiny_patch16_224")
    p = info["preprocessing"]
    assert p["in_chans"] == 1 and p["img_size"] == 32 and p["mean"] != [0.0]  # the run's own normalisation
    img = _colour_photo(tmp_path / "photo.png")
    x = eval_transform(32, p["mean"], p["std"], crop_pct=p["crop_pct"], interpolation=p["interpolation"], in_chans=1)(load_image(img))
    assert x.shape == (1, 32, 32)

    rollouts = _recording(monkeypatch, "plot_attention_rollout")
    distances = _recording(monkeypatch, "plot_attention_distance")
    capsys.readouterr()
    for what in ("rollout", "distance", "posembed"):
        assert main(["attention", what, "vit_tiny_patch16_224", "--image", str(img), "--checkpoint", ckpt,
                     "--output", str(tmp_path / f"{what}.png")]) == 0, capsys.readouterr().err
        assert (tmp_path / f"{what}.png").is_file()
    assert "random weights" not in capsys.readouterr().err
    (model, xr, roll), (model_d, xd, dist) = rollouts[0], distances[0]
    for m in (model, model_d):
        assert len(m.blocks) == 2
        sd, ref = m.state_dict(), expected.state_dict()
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
    torch.testing.assert_close(xr, x)
    torch.testing.assert_close(xd, x[None])
    np.testing.assert_allclose(roll, attention_rollout(expected, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dist, mean_attention_distance(expected, x[None]), rtol=1e-5, atol=1e-5)
    assert dist.shape == (2, 3)


def test_attention_reads_a_foreign_checkpoint_with_its_classifier(tmp_path, capsys, monkeypatch):
    """A timm-layout .pth (a state dict, no metadata) is still read: the NAME's architecture,
    the file's 10-class head (not a fresh 1000-class one left initialised, with a warning), the
    model's default_cfg normalisation, at --img-size."""
    import warnings

    pytest.importorskip("matplotlib")
    from visionzoo.analysis import mean_attention_distance

    torch.manual_seed(0)
    full = visionzoo.create_model("vit_tiny_patch16_224", num_classes=10, img_size=64).eval()
    torch.save(full.state_dict(), tmp_path / "vit.pth")
    distances = _recording(monkeypatch, "plot_attention_distance")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["attention", "distance", "vit_tiny_patch16_224", "--checkpoint", str(tmp_path / "vit.pth"),
                     "--img-size", "64", "--output", str(tmp_path / "d.png")]) == 0, capsys.readouterr().err
    model, x, d = distances[0]
    assert model.head.out_features == 10 and x.shape == (1, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), full.state_dict().values()))
    np.testing.assert_allclose(d, mean_attention_distance(full, x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- train
def test_train_help_names_the_default_models_kernel(capsys):
    from visionzoo.train.engine import DEFAULT_MODELS

    k = DEFAULT_MODELS["digits"][1]["kernel_size"]
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{k}x{k} depthwise kernels" in text
    doc = (ROOT / "benchmarks" / "train_digits.py").read_text()
    assert f"{k}x{k} depthwise kernels" in doc and "3x3" not in doc


def test_resume_lists_only_real_flags(tmp_path, capsys):
    from visionzoo.train import TrainConfig
    from visionzoo.train.engine import write_json_atomic

    out = tmp_path / "run"
    out.mkdir()
    write_json_atomic(json.loads(json.dumps(TrainConfig().__dict__)), out / "config.json")
    err = _one_line_error(["train", "--output", str(out), "--resume", "--lr", "0.1"], capsys, "it takes --epochs")
    listed = re.findall(r"--[a-z-]+", err.split("it takes")[1])
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    known = {s for a in sub._actions for s in a.option_strings}
    assert "--log-every" in listed and set(listed) <= known, set(listed) - known
    # the settings it cannot change are named by their flags: "--model-args" was not one
    err = _one_line_error(["train", "--output", str(out), "--resume", "--model-arg", "depth=3", "--lr", "0.1"], capsys,
                          "cannot change --lr (0.01 in the run, 0.1 given), --model-arg ({} in the run, {'depth': 3} given);")
    assert set(re.findall(r"--[a-z-]+", err)) <= known, set(re.findall(r"--[a-z-]+", err)) - known
    from visionzoo.train.segment import SegmentConfig

    write_json_atomic({**json.loads(json.dumps(SegmentConfig(data="x").__dict__)), "task": "segment"}, out / "config.json")
    _one_line_error(["train", "--task", "segment", "--output", str(out), "--resume", "--seg-head", "aspp"], capsys, "cannot change --seg-head (")


def test_train_output_under_a_file_is_refused_first(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    _one_line_error(["train", *TINY, "--output", str(tmp_path / "afile" / "run")], capsys, f"{tmp_path / 'afile'} is a file, not a folder")


@pytest.mark.parametrize("task", [[], ["--task", "segment", "--data", "x"]])
def test_train_output_in_a_read_only_folder_is_refused_first(tmp_path, capsys, monkeypatch, task):
    """An --output in a folder nothing can be written to was refused only once the data and the
    model had been built, with the bare OSError (no option named)."""
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro and mode & os.W_OK else real_access(p, mode, **kw))
    _one_line_error(["train", *TINY, *task, "--output", str(ro / "runs" / "a")], capsys, f"--output {ro / 'runs' / 'a'}: {ro} is not writable")
    assert not any(ro.iterdir())


@pytest.mark.parametrize("args, needle", [
    (["train", "--amp", "bf8"], "visionzoo train: error: argument --amp: invalid choice: 'bf8'"),
    (["train", "--epochs", "abc"], "visionzoo train: error: argument --epochs: invalid int value: 'abc'"),
    (["predict"], "visionzoo predict: error: the following arguments are required: IMAGE, --checkpoint"),
    (["nosuch"], "visionzoo: error: argument COMMAND: invalid choice: 'nosuch'"),
])
def test_argparse_refusals_are_one_line(capsys, args, needle):
    """A value of the wrong type or not among the choices, or a missing argument, is one line
    pointing to --help, as the commands' own refusals; argparse printed its usage above it
    (25 lines for train)."""
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    assert e.value.code == 2 and not out
    assert err.startswith(needle) and err.endswith("--help)\n") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("args, needle", [
    (["--min-lr-ratio", "1"], "--min-lr-ratio must be in [0, 1), got 1.0"),
    (["--min-lr-ratio", "-0.1"], "--min-lr-ratio must be in [0, 1)"),
    (["--log-every", "0"], "--log-every must be at least 1, got 0"),
    (["--seg-head", "aspp"], "--seg-head is an option of --task segment (the head"),
    (["--ema-decay", "0.9"], "--ema-decay is an option of --ema"),  # it used to be recorded and ignored
    (["--freeze-backbone", "--layer-decay", "0.7"], "--layer-decay lowers the learning rate of the backbone's layers, which --freeze-backbone freezes"),  # the same
    # these trained (a label-loss weight of -0.5; a negative temperature) or failed as a NaN loss
    (["--distill-alpha", "0.3"], "--distill-alpha is an option of distillation; give --teacher NAME"),
    (["--teacher", "resnet18", "--teacher-checkpoint", "t.safetensors", "--distill-alpha", "1.5"], "--distill-alpha must be in [0, 1]"),
    (["--teacher", "resnet18", "--teacher-checkpoint", "t.safetensors", "--distill-tau", "0"], "--distill-tau must be a positive temperature, got 0.0"),
    # these failed mid-run: a traceback (OverflowError building the schedule), "cannot convert float NaN to
    # integer", a NaN loss blamed on --lr after the run folder was made, or mixing silently off
    (["--warmup-epochs", "inf"], "--warmup-epochs must be a finite number, got inf"),
    (["--warmup-epochs", "nan"], "--warmup-epochs must be a finite number, got nan"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number, got inf"),
    (["--clip-grad", "nan"], "--clip-grad must be a finite number, got nan"),
    (["--mixup", "nan"], "--mixup must be a finite number, got nan"),
    (["--cutmix", "inf"], "--cutmix must be a finite number, got inf"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
])
def test_train_option_errors(tmp_path, capsys, args, needle):
    err = _one_line_error(["train", *args, "--output", str(tmp_path / "o")], capsys, needle)
    assert "takes its classes" not in err
    assert not (tmp_path / "o").exists()


def test_folder_run_says_what_it_holds_out_and_takes_log_every_and_min_lr_ratio(tmp_path, capsys):
    data = _image_folder(tmp_path / "imgs")
    args = ["train", "--data", str(data), *TINY, "--batch-size", "2", "--epochs", "1", "--progress", "lines", "--log-every", "1",
            "--min-lr-ratio", "0.5"]
    assert main([*args, "--output", str(tmp_path / "a")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"holding out 20% of {data} for validation (--val-split to change; a val/ folder to use your own)"
    assert sum(" step " in line for line in lines) == 3  # steps 1-3 of 4; the epoch's line ends it
    assert json.loads((tmp_path / "a" / "config.json").read_text())["min_lr_ratio"] == 0.5
    assert "after 1 epoch," in lines[-1]
    assert main([*args, "--val-split", "0.4", "--output", str(tmp_path / "b")]) == 0
    assert "holding out" not in capsys.readouterr().out


def test_a_refused_run_prints_its_error_alone(tmp_path, capsys):
    """The run's notes (the held-out split, the --freeze-backbone warning) were printed before
    checks that then refused it: a finished 2-epoch run resumed with --epochs 1 said 'holding out
    20% ...' above its error. They are printed once the run starts; the split's, whose advice
    (--val-split) a resumed run cannot take, only when it begins."""
    data = _image_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), *TINY, "--batch-size", "4", "--epochs", "2", "--output", str(out)]) == 0
    assert "holding out 20%" in capsys.readouterr().out
    _one_line_error(["train", "--output", str(out), "--resume", "--epochs", "1"], capsys, "has already trained 2 epochs, more than the 1")
    _one_line_error(["train", "--data", str(tmp_path / "nowhere"), "--freeze-backbone", *TINY, "--output", str(tmp_path / "b")], capsys,
                    "data folder not found")
    assert main(["train", "--output", str(out), "--resume", "--epochs", "3"]) == 0
    text = capsys.readouterr().out
    assert "holding out" not in text and f"resuming {out} at epoch 3" in text


def test_top5_is_printed_only_where_the_classes_are_more_than_5(tmp_path, capsys):
    """train and eval printed 'top-5 1.0000' for a 2-class folder, where every class is among
    the best 5 whatever the network; summary.json and --json keep the figure (timm's 100 %).
    digits (10 classes) prints it: test_eval_amp_reproduces_the_runs_held_out_figures."""
    data = _image_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), *TINY, "--batch-size", "4", "--epochs", "1", "--progress", "lines", "--output", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    s = json.loads((out / "summary.json").read_text())
    assert s["num_classes"] == 2 and s["top5"] == 1.0
    assert f"held-out loss {s['loss']:.4f} top-1 {s['top1']:.4f} | " in lines[-2], lines
    assert f"held-out top-1 {s['top1']:.4f} after 1 epoch," in lines[-1] and "top-5" not in "".join(lines)
    assert main(["eval", "--checkpoint", str(out / "model.safetensors"), "--output", str(tmp_path / "cm.png")]) == 0
    text = capsys.readouterr().out
    assert f"images): top-1 {s['top1']:.4f}  loss {s['loss']:.4f}" in text and "top-5" not in text, text
    assert main(["eval", "--checkpoint", str(out / "model.safetensors"), "--output", str(tmp_path / "cm.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top5"] == 1.0


def test_resume_from_another_working_folder_reads_the_runs_own_data(tmp_path, capsys, monkeypatch):
    """config.json records a relative --data absolute: --resume from another working folder (as a
    job scheduler's) used to fail as "--data 'imgs': neither a known dataset nor an existing
    folder"; giving the same relative --data where the run began still counts as no change."""
    _image_folder(tmp_path / "imgs")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--data", "imgs", *TINY, "--epochs", "1", "--output", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["data"] == str(tmp_path / "imgs")
    assert main(["train", "--data", "imgs", "--output", str(out), "--resume", "--epochs", "2"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["train", "--output", str(out), "--resume", "--epochs", "3"]) == 0, capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3


def test_freeze_backbone_without_weights_to_keep_is_a_warning(tmp_path, capsys):
    """--freeze-backbone without --pretrained trains a classifier on random features: said once,
    not refused (a baseline may mean it); with the weights to keep, nothing is said."""
    assert main(["train", *TINY, "--epochs", "1", "--freeze-backbone", "--output", str(tmp_path / "random")]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: --freeze-backbone without --pretrained") == 1 and "randomly initialised backbone" in err, err
    assert main(["train", *TINY, "--epochs", "1", "--freeze-backbone", "--pretrained", str(tmp_path / "random" / "model.safetensors"),
                 "--output", str(tmp_path / "kept")]) == 0
    assert "warning" not in capsys.readouterr().err


SEG = ["--task", "segment", "--data", "nowhere"]


@pytest.mark.parametrize("args, needle", [
    # these failed as "create_model() got multiple values for keyword argument"
    (["--model-arg", "in_chans=1"], "--model-arg in_chans: not taken, the data sets it (the images' channels: 1 for digits"),
    (["--model-arg", "num_classes=5"], "--model-arg num_classes: not taken, the data sets it (one output per class"),
    (["--model", "resnet18", "--model-arg", "img_size=64"], "--model-arg img_size: not taken, give --img-size"),
    (["--model-arg", "drop_path_rate=0.1"], "--model-arg drop_path_rate: not taken, give --drop-path"),
    # this failed after the run folder was made ("the model returned 5 outputs in training")
    (["--model", "resnet18", "--model-arg", "features_only=True"], "--model-arg features_only: not taken, a classification run trains the classifier"),
    ([*SEG, "--model-arg", "num_classes=5"], "--model-arg num_classes: not taken, give --num-classes"),
    # and these were overwritten by the run's own values without a word
    ([*SEG, "--model-arg", "img_size=64"], "--model-arg img_size: not taken, give --img-size"),
    ([*SEG, "--model-arg", "head=aspp"], "--model-arg head: not taken, give --seg-head"),
    ([*SEG, "--model-arg", "in_chans=1"], "--model-arg in_chans: not taken, the data sets it (the images are read as RGB"),
    # create_model's own arguments reach it now: these are the run's (a float64 model failed on float32 images)
    (["--model-arg", "dtype=torch.float64"], "--model-arg dtype: not taken, the run keeps float32 weights (give --amp"),
    (["--model-arg", "device=cpu"], "--model-arg device: not taken, give --device"),
])
def test_model_args_the_run_sets_are_refused_saying_what_sets_them(tmp_path, capsys, args, needle):
    _one_line_error(["train", *args, "--output", str(tmp_path / "o")], capsys, needle)
    assert not (tmp_path / "o").exists()


def _tiny_checkpoint(path: Path, classes, in_chans=3) -> Path:
    """A checkpoint as visionzoo train writes it, of the TINY ConvMixer for ``classes`` at 8x8,
    without training one."""
    from visionzoo.checkpoints import save_state_dict
    from visionzoo.train.checkpoint import model_metadata

    overrides = dict(dim=16, depth=2, patch_size=2)
    model = visionzoo.create_model("convmixer_256_8", num_classes=len(classes), in_chans=in_chans, img_size=8, **overrides)
    prep = dict(img_size=8, in_chans=in_chans, mean=[0.5] * in_chans, std=[0.25] * in_chans, interpolation="bilinear",
                crop_pct=1.0, crop_mode="center")
    save_state_dict(model.state_dict(), path, metadata=model_metadata("convmixer_256_8", overrides, list(classes), prep))
    return path


def test_model_arg_checkpoint_starts_from_those_weights(bf16_run, tmp_path, capsys):
    """--model-arg checkpoint=FILE, which the --freeze-backbone warning and the README name, failed
    as "unknown option(s) ['checkpoint'] (did you mean 'checkpoint'?)": default_cfg_of took
    create_model's own arguments for fields of the family's configuration. It starts from FILE as
    --pretrained does (the frozen backbone stays FILE's, bit for bit); the run's metadata does not
    name FILE (eval and --resume read the run's own weights), its config.json names it absolute."""
    from safetensors.torch import load_file

    from visionzoo.factory import default_cfg_of

    start, out = bf16_run / "model.safetensors", tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--freeze-backbone", "--model-arg", f"checkpoint={start}", "--output", str(out)]) == 0
    text, err = capsys.readouterr()
    assert f"fine-tuning from {start} (keys already in visionzoo's layout)" in text and "warning" not in err, (text, err)
    before, after = load_file(str(start)), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in after if not k.startswith("head."))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("head."))
    assert "checkpoint" not in visionzoo.train.checkpoint.read_metadata(out / "model.safetensors")["overrides"]
    assert json.loads((out / "config.json").read_text())["model_args"]["checkpoint"] == str(start.resolve())
    _one_line_error(["train", *TINY, "--pretrained", str(start), "--model-arg", f"checkpoint_path={start}", "--output", str(tmp_path / "b")],
                    capsys, "both name the weights to start from; give one")
    # every keyword create_model takes is set aside from the family's options; an overlay's preprocessing is the model's
    cfg = default_cfg_of("resnet18", dict(checkpoint="x", checkpoint_path=None, exportable=True, no_jit=True, dtype=None,
                                          pretrained_cfg_overlay=dict(mean=(0.5, 0.5, 0.5))))
    assert cfg["mean"] == (0.5, 0.5, 0.5)


def test_eval_on_digits_prepares_the_images_as_the_checkpoint_says(bf16_run, tmp_path, capsys):
    """eval --data digits read every checkpoint's images as training on digits does (grey, mean
    0.3, std 0.4): a 3-channel network failed with "expects 3 input channels, got 1", and
    --mean, --std, --interpolation and --crop-pct changed nothing. The digits now follow the
    checkpoint's preprocessing, as a folder's images do; unsaid, a digits run's is its training's."""
    from visionzoo.train.data import build_data

    ckpt = _tiny_checkpoint(tmp_path / "rgb.safetensors", [str(i) for i in range(10)])
    assert main(["eval", "--checkpoint", str(ckpt), "--data", "digits", "--output", str(tmp_path / "cm.png")]) == 0
    assert "(held-out split, 359 images)" in capsys.readouterr().out
    own = build_data("digits", img_size=8).val[5][0]  # training's: grey, its own mean and std
    rgb = build_data("digits", img_size=8, model_cfg=dict(input_size=(3, 8, 8), mean=(0.5,) * 3, std=(0.25,) * 3)).val[5][0]
    assert own.shape == (1, 8, 8) and rgb.shape == (3, 8, 8) and torch.equal(rgb[0], rgb[2])
    torch.testing.assert_close(rgb[0] * 0.25 + 0.5, own[0] * 0.4 + 0.3)
    ckpt = str(bf16_run / "model.safetensors")
    losses = []
    for extra in ([], ["--mean", "0.9"], ["--crop-pct", "0.5"], ["--crop-pct", "0.5", "--interpolation", "nearest"]):
        assert main(["eval", "--checkpoint", ckpt, "--data", "digits", "--json", *extra]) == 0
        losses.append(json.loads(capsys.readouterr().out)["loss"])
    assert len(set(losses)) == 4, losses


def test_a_torchvision_set_follows_a_checkpoints_preprocessing_too(monkeypatch):
    """As digits: eval --data mnist of a 3-channel network failed on 1-channel images, and the
    preprocessing options changed nothing; without a model_cfg (training) the set is its own."""
    import torchvision.datasets as tvd
    from PIL import Image

    from visionzoo.train.data import build_data

    class Fake:  # MNIST's interface, 28x28 grey images
        classes = [str(i) for i in range(10)]

        def __init__(self, root, train, download):
            self.n = 4

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return Image.fromarray((np.random.default_rng(i).random((28, 28)) * 255).astype(np.uint8), mode="L"), i

    monkeypatch.setattr(tvd, "MNIST", Fake)
    own = build_data("mnist")
    assert own.in_chans == 1 and own.mean == (0.1307,) and own.val[0][0].shape == (1, 28, 28)
    rgb = build_data("mnist", model_cfg=dict(input_size=(3, 28, 28), mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.875))
    assert rgb.in_chans == 3 and rgb.val[0][0].shape == rgb.train[0][0].shape == (3, 28, 28) and rgb.crop_pct == 0.875


def test_a_dataset_name_that_is_also_a_folder_here_is_refused(bf16_run, tmp_path, capsys, monkeypatch):
    """--data digits read the built-in digits where a folder ./digits was meant, without a word;
    --data ./digits reads the folder, and a resumed run's recorded 'digits' is the dataset."""
    monkeypatch.chdir(tmp_path)
    _image_folder(tmp_path / "digits")
    _one_line_error(["train", "--data", "digits", *TINY, "--output", str(tmp_path / "a")], capsys,
                    "--data digits: names the built-in dataset digits and the folder ./digits here; give --data ./digits for the folder")
    assert not (tmp_path / "a").exists()
    assert main(["train", "--data", "./digits", *TINY, "--epochs", "1", "--output", str(tmp_path / "b")]) == 0
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert s["num_classes"] == 2 and s["data"] == "./digits"
    run = shutil.copytree(bf16_run, tmp_path / "run")  # a digits run: its config.json records the name
    assert main(["train", "--output", str(run), "--resume", "--epochs", "2", "--progress", "none"]) == 0
    assert json.loads((run / "summary.json").read_text())["data"] == "digits"


def test_a_teacher_of_other_classes_is_refused(tmp_path, capsys):
    """The teacher's class count was compared, not its class names (as eval compares a checkpoint's):
    a teacher of ['a', 'b'] distilled into data of ['x', 'y'] without a word."""
    data = _image_folder(tmp_path / "xy", classes=("x", "y"))
    teacher = _tiny_checkpoint(tmp_path / "teacher.safetensors", ["a", "b"])
    _one_line_error(["train", "--data", str(data), *TINY, "--teacher", "convmixer_256_8", "--teacher-checkpoint", str(teacher),
                     "--output", str(tmp_path / "o")], capsys, "classes are not the teacher's", "'x' vs 'a', 'y' vs 'b' (data vs teacher")
    assert not (tmp_path / "o").exists()


def test_pretrained_given_a_training_state_names_the_weights(bf16_run, tmp_path, capsys):
    """--pretrained on a step's .state.pt said "entries that are not tensors: ['optimizer', ...]";
    eval, predict and --teacher-checkpoint say what the file is and which weights to give."""
    state = next((bf16_run / "checkpoints").glob("step_*.state.pt"))
    _one_line_error(["train", *TINY, "--pretrained", str(state), "--output", str(tmp_path / "o")], capsys,
                    "is a training state of visionzoo train", f"pass the weights instead: {bf16_run / 'model.safetensors'}")


def test_a_damaged_training_state_is_named_in_whole_sentences(bf16_run, tmp_path, capsys):
    """torch's words for a damaged archive were cut at 160 characters, mid-sentence ("... If you
    are seeing this error, there is a high)"); they end at a sentence's end now."""
    run = shutil.copytree(bf16_run, tmp_path / "run")
    state = next((run / "checkpoints").glob("step_*.state.pt"))
    raw = bytearray(state.read_bytes())
    raw[raw.rfind(b"PK\x05\x06") - 21] ^= 0x55  # the archive's end records (each member's CRC-32 still holds)
    state.write_bytes(bytes(raw))
    err = _one_line_error(["train", "--output", str(run), "--resume", "--epochs", "2"], capsys, "not a readable training state")
    assert err.rstrip().endswith(".)"), err


def test_a_batch_of_one_image_in_a_batchnorm_network_names_the_options(tmp_path, capsys):
    """--batch-size 1 where a BatchNorm layer sees a 1x1 map failed in torch's words ("Expected
    more than 1 value per channel when training"). An epoch's last batch of one image is dropped,
    as timm's loader drops a last partial batch: 9 images in batches of 4 train as 4 and 4."""
    one_by_one = [*TINY, "--model-arg", "patch_size=8", "--epochs", "2"]  # 8x8 images in one 8x8 patch: a 1x1 map
    _one_line_error(["train", *one_by_one, "--batch-size", "1", "--output", str(tmp_path / "a")], capsys,
                    "--batch-size 1: a BatchNorm layer of convmixer_256_8 got one value per channel in training",
                    "give a --batch-size of 2 or more, or a larger --img-size")
    assert not (tmp_path / "a").exists()
    data = tmp_path / "nine"
    _image_folder(data / "train", n=5)
    (data / "train" / "b" / "4.png").unlink()
    _image_folder(data / "val", n=1)
    assert main(["train", "--data", str(data), *one_by_one, "--batch-size", "4", "--epochs", "1", "--output", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["train_images"] == 9
    assert [r["step"] for r in csv.DictReader(open(tmp_path / "b" / "metrics.csv"))] == ["2"]


# ---------------------------------------------------------------- info, bench, README
def test_info_without_a_published_top1_prints_no_placeholder(capsys):
    assert main(["info", "vit_base_patch16_224"]) == 0
    text = capsys.readouterr().out
    assert "- %" not in text and "top-1" not in text
    assert main(["info", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"top-1\s+\d+(\.\d+)? % \(paper\)", out) and "(25.56 M; paper: 25.6 M)" in out
    # a changed configuration has no published figures: a dash, not "- M"
    assert main(["info", "vit_base_patch16_224", "--set", "pos_embed=learned_2d"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^params .* M; paper: -\)$", out, re.M) and "- M" not in out


def test_info_shows_a_crop_mode_other_than_center(capsys, monkeypatch):
    """The input line names crop_mode "squash" (timm's tf_efficientnetv2_m/l/xl); the default
    centre crop is not said, as before."""
    from visionzoo.registry import get_entry

    assert main(["info", "resnet18"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("input"))
    assert "crop_mode" not in line and line.endswith("crop_pct 0.875")
    monkeypatch.setitem(get_entry("resnet18").default_cfg, "crop_mode", "squash")
    assert main(["info", "resnet18"]) == 0
    assert next(x for x in capsys.readouterr().out.splitlines() if x.startswith("input")) == line + ", crop_mode squash"


def test_bench_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: each model's)" in text and "(default: None)" not in text and "(default: 4)" in text


def test_readme_says_what_load_segmentation_returns():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "load_segmentation(path)` rebuilds the network" not in readme
    assert "`(model, metadata)` tuple" in readme


@pytest.mark.parametrize("error, one_line", [
    (MemoryError("Unable to allocate 67.1 GiB for an array"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 72000000000 bytes."), True),
    (RuntimeError("an error of the code, not of the request"), False),
])
def test_out_of_memory_is_one_line(monkeypatch, capsys, error, one_line):
    """A request too large for the machine (visionzoo rf --rates 3000,3000 drew a 6000-px
    picture) ends in one line, where it was a traceback; any other RuntimeError still raises."""
    import visionzoo.cli.analysis as analysis

    def too_big(args):
        raise error

    monkeypatch.setattr(analysis, "cmd_rf", too_big)
    if not one_line:
        with pytest.raises(RuntimeError, match="of the code"):
            main(["rf", "--rates", "1,2"])
        return
    assert main(["rf", "--rates", "1,2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("visionzoo rf: error: out of memory") and "ask for less" in err and "\n" not in err


def test_info_takes_img_size_through_set(capsys):
    """--set img_size=64 failed as model_info() 'got multiple values for keyword argument'."""
    assert main(["info", "vit_tiny_patch16_224", "--set", "img_size=64"]) == 0
    assert "at 64x64 (paper: 1.26 at 224x224)" in capsys.readouterr().out
    _one_line_error(["info", "vit_tiny_patch16_224", "--set", "img_size=64", "--img-size", "32"], capsys, "give the input size once")


@pytest.mark.parametrize("command", [["info", "nest_*"], ["flops", "--table", "nest_*"]])
def test_tables_at_a_size_leave_out_the_models_that_cannot_take_it(command, capsys):
    """At --img-size 40, the six ImageNet NesTs (patch 4, 4x4 blocks of 14x14; the _jx ones too)
    cannot run, the CIFAR ones can: the table lists those and a note names the others (the table
    stopped at the first that could not, with its error); where none can, the first one's reason
    is the error."""
    assert main([*command, "--img-size", "40"]) == 0
    out, err = capsys.readouterr()
    listed = [line.split()[0] for line in out.strip().splitlines()[1:]]
    assert sorted(listed) == ["nest_base_cifar", "nest_small_cifar", "nest_tiny_cifar"]
    assert err.startswith("note: left out 6 models that cannot take 40x40: ") and "nest_tiny_jx" in err and len(err.strip().splitlines()) == 1
    pattern = command[-1].replace("nest_*", "vit_tiny*")
    _one_line_error([*command[:-1], pattern, "--img-size", "40"], capsys, "cannot take img_size 40x40: it needs height and width divisible by 16")


@pytest.mark.parametrize("args, needle", [
    # a pattern that matches nothing was printed on stdout with exit code 1 by list, info and
    # flops --table, and refused on stderr with exit code 2 by bench
    (["list", "zzz*"], "no model matches 'zzz*' (visionzoo list shows the names)"),
    (["list", "resnet*", "--family", "vit"], "no model matches 'resnet*' in family vit"),
    (["list", "mobilenet_v2*"], "no model name matches 'mobilenet_v2*', but aliases do: visionzoo list --aliases shows them"),
    (["info", "zzz*"], "no model matches 'zzz*' (visionzoo list shows the names)"),
    (["flops", "--table", "zzz*"], "no model matches 'zzz*' (visionzoo list shows the names)"),
    (["bench", "zzz*"], "no model matches 'zzz*' (visionzoo list shows the names)"),
    # a name without a close one pointed to visionzoo.list_models(), the Python function
    (["info", "qqqq"], "unknown model 'qqqq'; see visionzoo list"),
    (["flops", "qqqq"], "unknown model 'qqqq'; see visionzoo list"),
    (["bench", "qqqq"], "unknown model 'qqqq'; see visionzoo list"),
    (["export", "qqqq", "--output", "m.onnx"], "unknown model 'qqqq'; see visionzoo list"),
    (["info", " "], "the model name is empty (' '); see visionzoo list"),
])
def test_a_name_or_pattern_without_a_model_is_refused_alike_by_every_command(capsys, args, needle):
    err = _one_line_error(args, capsys, needle)
    assert "list_models()" not in err
    with pytest.raises(visionzoo.UnknownModelError, match=r"; see visionzoo\.list_models\(\)$"):
        visionzoo.create_model("qqqq")  # in Python, the function


@pytest.mark.parametrize("args", [
    ["info", "resnet18"], ["info", "resnet1*"], ["flops", "resnet18"], ["flops", "--table", "resnet1*"], ["bench", "resnet18"],
])
def test_img_size_refusals_name_the_option(capsys, args):
    """info and flops said 'img_size must be positive', the argument of model_info, where bench
    named --img-size."""
    _one_line_error([*args, "--img-size", "0"], capsys, "--img-size must be positive, got 0")


def test_a_folder_given_for_a_file_or_a_file_for_a_folder_is_named(tmp_path, capsys):
    """attention --image on a folder said 'no such file'; train --data-dir on a file tried to
    download into it and reported torch's FileExistsError."""
    _one_line_error(["attention", "distance", "vit_tiny_patch16_224", "--image", str(tmp_path), "--output", str(tmp_path / "a.png")],
                    capsys, f"--image {tmp_path}: a folder, not an image file")
    (tmp_path / "afile").write_text("x")
    _one_line_error(["train", "--data", "cifar10", "--data-dir", str(tmp_path / "afile"), "--output", str(tmp_path / "run")],
                    capsys, f"--data-dir {tmp_path / 'afile'}: a file, not a folder")
    assert not (tmp_path / "run").exists()


def test_eval_beside_a_read_only_checkpoint_prints_its_figures(bf16_run, tmp_path, capsys, monkeypatch):
    """A checkpoint in a folder eval cannot write to: the default confusion-matrix picture beside
    it is skipped with a note and the figures printed (eval failed after evaluating, printing
    none); an --output there is refused before the evaluation."""
    import os

    pytest.importorskip("matplotlib")
    ro = tmp_path / "ro"
    ro.mkdir()
    ckpt = ro / "model.safetensors"
    ckpt.write_bytes((bf16_run / "model.safetensors").read_bytes())
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) in (ro, ro / "cm.png") and mode & os.W_OK else real_access(p, mode, **kw))
    assert main(["eval", "--checkpoint", str(ckpt), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["confusion_matrix"] is None and 0 <= row["top1"] <= 1
    assert main(["eval", "--checkpoint", str(ckpt)]) == 0
    assert f"confusion matrix not drawn: {ro} is not writable (--output PATH draws it elsewhere)" in capsys.readouterr().out
    assert sorted(p.name for p in ro.iterdir()) == ["model.safetensors"]
    _one_line_error(["eval", "--checkpoint", str(ckpt), "--output", str(ro / "cm.png")], capsys, f"--output {ro / 'cm.png'}: {ro} is not writable")


@pytest.mark.parametrize("args, needle", [(["--mean", "nan", "0.5", "0.5"], "--mean must be finite numbers, got nan 0.5 0.5"),
                                          (["--std", "inf", "1", "1"], "--std must be finite numbers, got inf 1.0 1.0")])
def test_eval_and_predict_refuse_non_finite_mean_and_std(bf16_run, tmp_path, capsys, args, needle):
    """--mean nan gave normal-looking predictions (the fused ReLU turned the NaN image finite)."""
    ckpt = ["--checkpoint", str(bf16_run / "model.safetensors")]
    image = _image_folder(tmp_path / "imgs", classes=("a",), n=1) / "a" / "0.png"
    _one_line_error(["eval", *ckpt, *args], capsys, needle)
    _one_line_error(["predict", str(image), *ckpt, *args], capsys, needle)


def test_eval_of_a_digits_run_without_data_reads_the_dataset_beside_a_digits_folder(bf16_run, tmp_path, capsys, monkeypatch):
    """The run recorded the dataset digits: eval without --data evaluates it even where a folder
    named digits is in the working folder (--data digits there is refused as ambiguous)."""
    (tmp_path / "digits").mkdir()
    monkeypatch.chdir(tmp_path)
    ckpt = ["--checkpoint", str(bf16_run / "model.safetensors")]
    assert main(["eval", *ckpt, "--output", str(tmp_path / "cm.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == "digits"
    _one_line_error(["eval", *ckpt, "--data", "digits"], capsys, "names the built-in dataset digits and the folder ./digits here")


def test_a_torchrun_process_whose_peer_stopped_says_so_in_one_line(monkeypatch, capsys, tmp_path):
    """Under torchrun, a process whose peer stopped (on an unreadable image, say, after printing
    why) failed in its next collective with Gloo's 47-line traceback, burying the peer's line."""
    import visionzoo.train

    def broken(cfg):
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:24204. This is typically "
                           "caused by a remote worker crashing.")

    monkeypatch.setattr(visionzoo.train, "train", broken)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--output", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err == "visionzoo train: error: another process of this torchrun run stopped (its own message says why); this one stops too\n"
    monkeypatch.setenv("WORLD_SIZE", "1")  # in one process the error is no peer's
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        main(["train", "--output", str(tmp_path / "run")])


def test_the_resume_hint_of_a_torchrun_run_names_torchrun(monkeypatch):
    """An interrupted run says how to continue it; under torchrun that was `visionzoo train ...`,
    which a resume of a 2-process run refuses (the same number of processes)."""
    from visionzoo.cli.train import _launcher

    assert _launcher(1) == "visionzoo train"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert _launcher(2) == "torchrun --nproc_per_node 2 -m visionzoo train"
    assert _launcher(8) == "torchrun --nnodes 4 --nproc_per_node 2 <this run's rendezvous options> -m visionzoo train"
