"""The command line's messages and options: outputs checked before the work, one-line errors,
help texts that say what the code does. Tiny runs only (a second or two each), CPU."""

import json
import re
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


def test_train_output_under_a_file_is_refused_first(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    _one_line_error(["train", *TINY, "--output", str(tmp_path / "afile" / "run")], capsys, f"{tmp_path / 'afile'} is a file, not a folder")


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
])
def test_model_args_the_run_sets_are_refused_saying_what_sets_them(tmp_path, capsys, args, needle):
    _one_line_error(["train", *args, "--output", str(tmp_path / "o")], capsys, needle)
    assert not (tmp_path / "o").exists()


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
