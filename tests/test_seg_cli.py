"""visionzoo eval and predict on a segmentation run's checkpoint: eval reproduces the run's held-out
figures, predict writes the network's label maps at each image's own size, bad input is one line.
A 2-epoch run on 32 px images, CPU."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from visionzoo.cli import main
from visionzoo.train.segment import load_segmentation, split_pairs

# test_cli.py's check of a refusal (exit code 2, one line on stderr, nothing on stdout) and
# test_train.py's tiny segmentation folder, shared rather than copied
from test_cli import _one_line_error
from test_train import _seg_folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(data folder, run folder) of a 2-epoch segmentation run."""
    root = tmp_path_factory.mktemp("seg")
    data, out = _seg_folder(root / "data", n=12, size=32), root / "run"
    assert main(["train", "--task", "segment", "--data", str(data), "--img-size", "32", "--epochs", "2", "--batch-size", "4",
                 "--lr", "0.003", "--progress", "none", "--output", str(out)]) == 0
    return data, out


def _eval_json(capsys, *args):
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_reproduces_the_runs_held_out_figures(run, capsys):
    data, out = run
    s = json.loads((out / "summary.json").read_text())
    with open(out / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    ckpt = ["--checkpoint", str(out / "model.safetensors"), "--data", str(data)]
    for batch in ("128", "1"):
        ev = _eval_json(capsys, *ckpt, "--batch-size", batch)
        assert ev["split"] == "held-out split" and ev["images"] == s["heldout_images"] == 2
        for key in ("miou", "mdice", "pixel_acc"):
            assert ev[key] == pytest.approx(s[key], abs=1e-6), key
        assert ev["iou"] == s["iou_per_class"] and ev["dice"] == s["dice_per_class"]
        assert ev["loss"] == pytest.approx(float(last["val_loss"]), rel=1e-5)
    # without --data: the folder the run trained on, as its weights record it
    ev = _eval_json(capsys, "--checkpoint", str(out / "model.safetensors"))
    assert ev["split"] == "held-out split" and ev["miou"] == pytest.approx(s["miou"], abs=1e-6) and ev["data"] == str(data.resolve())
    assert main(["eval", *ckpt]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"convnext_tiny (fpn) on {data} (held-out split, 2 images): mIoU {s['miou']:.4f}  mDice {s['mdice']:.4f}  "
                        f"pixel acc {s['pixel_acc']:.4f}  loss {float(last['val_loss']):.4f}")
    for c, line in enumerate(lines[1:]):
        iou, dice = s["iou_per_class"][c], s["dice_per_class"][c]
        assert line == (f"  class {c}: absent (not in the masks, never predicted)" if iou is None else f"  class {c}: IoU {iou:.4f}  Dice {dice:.4f}")
    assert len(lines) == 1 + 3


def test_run_writes_tensorboard_scalars_and_curves_as_classification_runs_do(run):
    """The epoch's metrics.csv figures (loss, mIoU, mDice, pixel accuracy, learning rate) as
    TensorBoard scalars, one point per epoch, and curves.png."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out = run
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    for key in ("train_loss", "val_loss", "miou", "mdice", "pixel_acc", "lr"):
        points = events.Scalars(key)
        assert [p.step for p in points] == [int(r["epoch"]) for r in rows] == [1, 2], key
        assert [p.value for p in points] == pytest.approx([float(r[key]) for r in rows], rel=1e-5), key
    assert float(rows[0]["lr"]) > 0 and (out / "curves.png").stat().st_size > 0


def test_eval_takes_val_of_a_train_val_folder_and_every_pair_of_another(run, tmp_path, capsys):
    """A folder with train/ and val/ is scored on val/ (here the run's own held-out pairs: the
    run's figures); a folder the run did not train on, on every pair."""
    data, out = run
    s = json.loads((out / "summary.json").read_text())
    train, held_out = split_pairs(data)
    for part, pairs in (("train", train), ("val", held_out)):
        for sub in ("images", "masks"):
            (tmp_path / "tv" / part / sub).mkdir(parents=True)
        for img, mask in pairs:
            shutil.copy(img, tmp_path / "tv" / part / "images")
            shutil.copy(mask, tmp_path / "tv" / part / "masks")
    ckpt = ["--checkpoint", str(out / "model.safetensors")]
    ev = _eval_json(capsys, *ckpt, "--data", str(tmp_path / "tv"))
    assert ev["split"] == "held-out split" and ev["images"] == 2
    assert ev["miou"] == pytest.approx(s["miou"], abs=1e-6) and ev["iou"] == s["iou_per_class"]
    shutil.copytree(data, tmp_path / "copy")
    ev = _eval_json(capsys, *ckpt, "--data", str(tmp_path / "copy"))
    assert ev["split"] == "every image" and ev["images"] == 12 and 0 < ev["pixel_acc"] <= 1


def _reference_maps(checkpoint: Path, images: list[Path]) -> list[torch.Tensor]:
    """The label maps predict should write, computed here: each image resized to the run's
    square, normalized, the network run on all of them at once, its logits resized back."""
    net, meta = load_segmentation(checkpoint)
    p = meta["preprocessing"]
    mean, std = torch.tensor(p["mean"]).view(3, 1, 1), torch.tensor(p["std"]).view(3, 1, 1)
    arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255 for f in images]
    x = torch.cat([F.interpolate(torch.from_numpy(a).permute(2, 0, 1)[None], size=(p["img_size"],) * 2, mode="bilinear") for a in arrays])
    with torch.no_grad():
        logits = net((x - mean) / std)
    return [F.interpolate(z[None], size=a.shape[:2], mode="bilinear")[0].argmax(0) for z, a in zip(logits, arrays)]


def test_predict_writes_the_networks_label_maps_at_each_images_size(run, tmp_path, capsys):
    data, out = run
    wide = Image.open(data / "images" / "3.png").resize((40, 24))
    wide.save(tmp_path / "wide.png")
    wide.convert("L").resize((20, 28)).save(tmp_path / "grey.jpg")
    images = [data / "images" / "0.png", tmp_path / "wide.png", tmp_path / "grey.jpg"]
    ckpt = ["--checkpoint", str(out / "model.safetensors"), "--output-dir", str(tmp_path / "maps")]
    assert main(["predict", *map(str, images), *ckpt, "--json"]) == 0
    rows = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == list(map(str, images))
    for img, row, ref in zip(images, rows, _reference_maps(out / "model.safetensors", images)):
        assert row["label_map"] == str(tmp_path / "maps" / f"{img.stem}.png")
        with Image.open(row["label_map"]) as m:
            assert m.mode == "L" and m.size == Image.open(img).size
            labels = torch.from_numpy(np.array(m)).long()
        assert int(labels.max()) <= 2
        assert torch.equal(labels, ref)
        shares = {c["class"]: c["share"] for c in row["classes"]}
        counts = torch.bincount(labels.view(-1), minlength=3) / labels.numel()
        assert shares == {str(c): pytest.approx(float(v), abs=1e-6) for c, v in enumerate(counts) if v > 0}
    # the text form; an unreadable image among others is reported, the others written, exit code 2
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main(["predict", str(images[0]), str(tmp_path / "bad.png"), str(images[1]), *ckpt, "--batch-size", "2"]) == 2
    o, err = capsys.readouterr()
    assert [line.split(": ")[0] for line in o.splitlines()] == [f"{images[0]} -> {tmp_path / 'maps' / '0.png'}",
                                                                 f"{images[1]} -> {tmp_path / 'maps' / 'wide.png'}"]
    assert "bad.png: not a readable image" in err and "1 of 3 images could not be read" in err


def test_predict_on_a_folder_skips_hidden_files_and_folders(run, tmp_path, capsys):
    data, out = run
    photos = tmp_path / "photos"
    (photos / ".cache").mkdir(parents=True)
    shutil.copy(data / "images" / "0.png", photos / "0.png")
    for junk in ("._0.png", ".cache/1.png"):
        (photos / junk).write_bytes(b"not a png")
    assert main(["predict", str(photos), "--checkpoint", str(out / "model.safetensors"), "--output-dir", str(tmp_path / "maps")]) == 0
    assert capsys.readouterr().out.startswith(f"{photos / '0.png'} -> ")
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["0.png"]


def test_bad_input_is_one_line(run, tmp_path, capsys):
    data, out = run
    ckpt = ["--checkpoint", str(out / "model.safetensors")]
    img = str(data / "images" / "0.png")
    maps = ["--output-dir", str(tmp_path / "maps")]
    _one_line_error(["eval", *ckpt, "--data", "digits"], capsys, "--data digits:", "is a segmentation network (convnext_tiny)", "folder of images/ and masks/")
    (tmp_path / "cls").mkdir()
    _one_line_error(["eval", *ckpt, "--data", str(tmp_path / "cls")], capsys, "no images/ folder")
    _one_line_error(["eval", *ckpt, "--data", str(data), "--output", str(tmp_path / "cm.png")], capsys,
                    "--output is an option of classifiers only")
    _one_line_error(["eval", *ckpt, "--data", str(data), "--img-size", "64", "--crop-pct", "0.9"], capsys,
                    "--img-size, --crop-pct are options of classifiers only")
    labels7 = shutil.copytree(data, tmp_path / "labels7")
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(labels7 / "masks" / "5.png")
    _one_line_error(["eval", *ckpt, "--data", str(labels7)], capsys, "5.png holds label 7")
    ignored = shutil.copytree(data, tmp_path / "ignored")  # every mask 255: scored, mIoU, pixel accuracy and loss 0
    for m in (ignored / "masks").iterdir():
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(m)
    _one_line_error(["eval", *ckpt, "--data", str(ignored)], capsys, f"--data {ignored} (every image): its 12 masks hold no labelled pixel")
    _one_line_error(["predict", img, *ckpt], capsys, "is a segmentation network (convnext_tiny)", "pass --output-dir DIR")
    _one_line_error(["predict", img, *ckpt, *maps, "--topk", "3"], capsys, "--topk is an option of classifiers only")
    _one_line_error(["predict", img, str(tmp_path / "missing.png"), *ckpt, *maps], capsys, f"image not found: {tmp_path / 'missing.png'}")
    (tmp_path / "a").mkdir()
    shutil.copy(img, tmp_path / "a" / "0.jpg")
    _one_line_error(["predict", img, str(tmp_path / "a" / "0.jpg"), *ckpt, *maps], capsys, "would both write", "0.png")
    _one_line_error(["predict", img, *ckpt, "--output-dir", str(data / "images")], capsys, "is one of the images given")
    assert not (tmp_path / "maps").exists()  # refused before anything is written
    (tmp_path / "afile").write_text("x")
    _one_line_error(["predict", img, *ckpt, "--output-dir", str(tmp_path / "afile")], capsys, "afile is a file, not a folder")
    _one_line_error(["predict", img, *ckpt, "--output-dir", str(tmp_path / "nodir" / "maps")], capsys, "does not exist")
    # a classifier's checkpoint takes no --output-dir; Python's classifier loader still refuses a segmentation run's
    from visionzoo.checkpoints import save_state_dict

    save_state_dict({"fc.weight": torch.zeros(2, 3)}, tmp_path / "cls.safetensors")
    _one_line_error(["predict", img, "--checkpoint", str(tmp_path / "cls.safetensors"), *maps], capsys,
                    "--output-dir is where a segmentation network's label maps go")
    # a missing file and a training state are said as such (both were "not a segmentation run's checkpoint")
    _one_line_error(["predict", img, "--checkpoint", str(tmp_path / "none.safetensors"), *maps], capsys, "checkpoint file not found")
    state = next((out / "checkpoints").glob("*.state.pt"))
    _one_line_error(["predict", img, "--checkpoint", str(state), *maps], capsys, "is a training state of visionzoo train", "model.safetensors")
    # every image unreadable: each named, no folder of label maps made
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main(["predict", str(tmp_path / "bad.png"), *ckpt, *maps]) != 0
    assert "bad.png" in capsys.readouterr().err and not (tmp_path / "maps").exists()
    from visionzoo.checkpoints import CheckpointError
    from visionzoo.train.inference import load_trained

    with pytest.raises(CheckpointError, match="load_segmentation rebuilds it .visionzoo eval, predict and export"):
        load_trained(out / "model.safetensors")


def test_export_takes_the_runs_network(run, tmp_path, capsys):
    """visionzoo export read every checkpoint as a classifier's and refused a segmentation run's,
    which eval and predict take: it exports the network the metadata describes, at the run's size."""
    pytest.importorskip("onnxruntime")
    _, out = run
    ckpt = str(out / "model.safetensors")
    assert main(["export", "convnext_tiny", "--checkpoint", ckpt, "--output", str(tmp_path / "seg.onnx"), "--no-optimize"]) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime at batch 3" in printed and "(ok)" in printed
    import onnxruntime as ort

    net, meta = load_segmentation(ckpt)
    x = torch.randn(2, 3, 32, 32)
    sess = ort.InferenceSession(str(tmp_path / "seg.onnx"), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expect = net(x)
    assert got.shape == (2, meta["num_classes"], 32, 32)
    torch.testing.assert_close(torch.from_numpy(got), expect, rtol=1e-4, atol=1e-4)
    _one_line_error(["export", "resnet18", "--checkpoint", ckpt, "--output", str(tmp_path / "r.onnx")], capsys,
                    "is a segmentation network on convnext_tiny, not resnet18")
    _one_line_error(["export", "convnext_tiny", "--checkpoint", ckpt, "--num-classes", "5", "--output", str(tmp_path / "r.onnx")], capsys,
                    "is a segmentation network (convnext_tiny): --num-classes is an option of classifiers only")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.onnx"]


def test_eval_json_of_a_classifier(tmp_path, capsys):
    """--json prints a classifier's figures too: those of the text line."""
    pytest.importorskip("sklearn")
    tiny = ["--model", "convmixer_256_8", "--model-arg", "dim=16", "--model-arg", "depth=1", "--model-arg", "patch_size=2",
            "--img-size", "8", "--batch-size", "64", "--progress", "none"]
    assert main(["train", *tiny, "--epochs", "1", "--output", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    ckpt = ["eval", "--checkpoint", str(tmp_path / "run" / "model.safetensors"), "--output", str(tmp_path / "cm.png")]
    ev = _eval_json(capsys, *ckpt[1:])
    assert ev["top1"] == pytest.approx(s["top1"], abs=1e-6) and ev["images"] == s["heldout_images"] and ev["split"] == "held-out split"
    assert main(ckpt) == 0
    assert f"held-out split, {ev['images']} images): top-1 {ev['top1']:.4f}  top-5 {ev['top5']:.4f}  loss {ev['loss']:.4f}" in capsys.readouterr().out


def test_a_link_to_nothing_in_images_is_named_not_skipped(tmp_path):
    """An image (or mask) that is a link to a deleted file is named when the pairs are checked;
    it used to be left out of the pairs unsaid."""
    from visionzoo.train.data import DataError
    from visionzoo.train.segment import check_pairs, folder_pairs

    data = _seg_folder(tmp_path / "seg", n=2, size=8)
    shutil.copy(data / "masks" / "0.png", data / "masks" / "gone.png")
    (data / "images" / "gone.png").symlink_to(tmp_path / "deleted.png")
    pairs = folder_pairs(data)
    assert [p.name for p, _ in pairs] == ["0.png", "1.png", "gone.png"]
    with pytest.raises(DataError, match="gone.png: not a readable image"):
        check_pairs(pairs)
