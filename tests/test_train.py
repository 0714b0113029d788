"""visionzoo train / eval / predict: exact resume after SIGKILL, Ctrl-C, torchrun (gloo), fine-tuning,
bad input as one line, and a train -> eval -> predict round trip. Tiny models, few steps, CPU."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import visionzoo
from visionzoo.cli import main
from visionzoo.train.inference import load_trained

from processes import child_env

pytest.importorskip("sklearn")

# a 2-block ConvMixer of width 16 on 8x8 digits: a few hundred steps per second
TINY = ["--model", "convmixer_256_8", "--model-arg", "dim=16", "--model-arg", "depth=2", "--model-arg", "patch_size=2",
        "--img-size", "8", "--batch-size", "32", "--progress", "lines"]


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "visionzoo", *args], env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path} appeared: {proc.communicate()}"
        assert time.time() - t0 < timeout
        time.sleep(0.02)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _image_folder(root: Path, classes=("red", "green", "blue"), n=8, size=20) -> Path:
    """Class folders of generated PNGs: one colour channel dominant per class, noise on top."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True)
        for i in range(n):
            img = torch.rand(size, size, 3, generator=g) * 90
            img[..., c % 3] += 150
            if c >= 3:
                img[: size // 2] = 255 - img[: size // 2]
            Image.fromarray(img.clamp(0, 255).to(torch.uint8).numpy()).save(d / f"{i}.png")
    return root


def test_resume_after_sigkill_is_exact(tmp_path, capsys):
    """A run killed with SIGKILL mid-epoch and resumed ends with the weights and metrics of an uninterrupted run."""
    args = [*TINY, "--batch-size", "64", "--epochs", "2", "--save-every-steps", "4", "--ema", "--mixup", "0.2", "--randaugment"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    full = _cli("train", *args, "--output", str(ref))
    killed = _cli("train", *args, "--output", str(cut))
    _wait_for(cut / "checkpoints" / "latest.json", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert full.wait(timeout=300) == 0, full.communicate()
    step = json.loads((cut / "checkpoints" / "latest.json").read_text())["step"]
    assert step < 44, "the run finished before it was killed"
    resumed = _cli("train", "--output", str(cut), "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming" in out
    a, b = _weights(ref / "model.safetensors"), _weights(cut / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    raw = _weights(sorted((ref / "checkpoints").glob("step_*.safetensors"))[-1])  # the last step's own weights
    counters = [k for k in a if k.endswith("num_batches_tracked")]
    assert counters and all(torch.equal(a[k], raw[k]) for k in counters)  # the EMA copy keeps the model's counts
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, cut))
    assert (sa["top1"], sa["top5"], sa["loss"]) == (sb["top1"], sb["top5"], sb["loss"])
    cols = lambda d: [line.split(",")[:8] for line in (d / "metrics.csv").read_text().splitlines()]
    assert cols(ref) == cols(cut)  # per-epoch losses / accuracies equal (timings aside)
    # fewer epochs than the run has trained: refused (it used to print "resuming" and do nothing)
    _one_line_error(["train", "--output", str(ref), "--resume", "--epochs", "1"], capsys, "already trained 2 epochs, more than the 1 asked for",
                    "give --epochs above 2")


def test_ctrl_c_saves_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    p = _cli("train", *TINY, "--epochs", "30", "--save-every-steps", "2", "--output", str(out))
    _wait_for(out / "checkpoints" / "latest.json", p)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    assert "interrupted: checkpoint" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["last_checkpoint"]
    assert main(["train", "--output", str(out), "--resume", "--epochs", "1"]) == 0  # finishes (epoch 1 is done or completes)
    # the run's own settings cannot change on resume (they used to be dropped without a word)
    capsys.readouterr()
    _one_line_error(["train", "--output", str(out), "--resume", "--lr", "0.5", "--ema"], capsys,
                    "--lr (0.01 in the run, 0.5 given)", "--ema (False in the run, True given)")


def test_torchrun_gloo_world_size_2(tmp_path):
    out = tmp_path / "ddp"
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "visionzoo",
         "train", *TINY, "--epochs", "1", "--ema", "--output", str(out)],
        env=child_env(), capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["epochs"] == 1
    assert r.stdout.count("epoch 1/1") == 1 and r.stdout.count("world size 2") == 1  # rank 0 alone prints
    # the reported held-out loss is the saved (EMA) weights': the ranks' BatchNorm statistics are
    # averaged before they evaluate their shards (rank 1 used its own: 2.29590 against 2.29595)
    from torch.utils.data import DataLoader

    from visionzoo.train import distributed as D
    from visionzoo.train.data import build_data
    from visionzoo.train.engine import evaluate
    from visionzoo.train.inference import load_trained

    model, info = load_trained(out / "model.safetensors")
    data = build_data("digits", img_size=8, seed=0)  # prepared as training prepares them (a model_cfg: as it says)
    ev = evaluate(model, DataLoader(data.val, batch_size=64), D.DistInfo(), num_classes=10)
    assert ev["loss"] == pytest.approx(s["loss"], abs=1e-6)



def test_torchrun_with_more_ranks_than_held_out_images_finishes(tmp_path):
    """Each rank evaluates its share of the held-out split; with one held-out image, rank 1's share
    is empty. The ranks evaluated through DistributedDataParallel, whose forward first broadcasts
    rank 0's buffers: rank 1 never joined, and rank 0 waited for it until Gloo's 30-minute timeout.
    (digits' 183-image class alone has round(0.00274 x 183) = 1 image held out)"""
    out = tmp_path / "ddp"
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "visionzoo",
         "train", *TINY, "--epochs", "1", "--val-split", "0.00274", "--output", str(out)],
        env=child_env(), capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["heldout_images"] == 1, s


@pytest.mark.parametrize("num_classes", [3, 10])
def test_evaluate_agrees_with_sklearn_on_tied_logits_and_a_short_last_batch(num_classes):
    """Top-1, the confusion matrix and the loss are scikit-learn's on the same logits, among them
    rows of equal logits (bf16 autocast, a collapsed network): the first of the tied classes is the
    prediction, as argmax (the training accuracy) takes it. Top-5 (all classes for 3) ranks ties by
    class index, as numpy's stable sort. torch.topk, used before, orders ties as its kernel does (on
    CPU, not the first class for 10 classes; on GPU otherwise): another top-1 and confusion matrix."""
    import numpy as np
    from sklearn.metrics import accuracy_score, confusion_matrix, log_loss
    from torch.utils.data import DataLoader, TensorDataset

    from visionzoo.train import distributed as D
    from visionzoo.train.engine import evaluate

    g = torch.Generator().manual_seed(0)
    n, C = 40, num_classes
    logits = torch.randint(0, 3, (n, C), generator=g).float()  # many ties
    logits[:10] = 0.0  # rows with every class tied
    y = torch.randint(0, C, (n,), generator=g)

    class Stored(torch.nn.Module):  # the input is the row index
        def forward(self, x):
            return logits[x[:, 0].long()]

    loader = DataLoader(TensorDataset(torch.arange(n, dtype=torch.float32)[:, None], y), batch_size=7)  # 5 rows last
    reads = _HostReads()
    with reads:
        ev = evaluate(Stored(), loader, D.DistInfo(), num_classes=C, confusion=True)
    # the sums stay on the device until the end, where a read per batch waited for a GPU each time
    assert reads.by_function.get("evaluate", 0) <= 4, reads.by_function
    L, Y = logits.numpy(), y.numpy()
    assert ev["count"] == n
    assert ev["top1"] == pytest.approx(accuracy_score(Y, L.argmax(1)), abs=1e-12)
    assert (ev["confusion"].numpy() == confusion_matrix(Y, L.argmax(1), labels=range(C))).all()
    top5 = np.argsort(-L, axis=1, kind="stable")[:, :5]
    assert ev["top5"] == pytest.approx((top5 == Y[:, None]).any(1).mean(), abs=1e-12)
    assert ev["loss"] == pytest.approx(log_loss(Y, torch.softmax(logits.double(), 1).numpy(), labels=range(C)), rel=1e-6)


# a torchrun rank that stops (as on Ctrl-C) at its STOP_AT-th step check, then saves
STOPPING_RANK = """
import os, sys
import visionzoo.train.engine as engine
from visionzoo.cli import main

class Stop:
    def __init__(self):
        self.checks = 0
    @property
    def requested(self):
        self.checks += 1
        return self.checks >= int(os.environ["STOP_AT"])
    def restore(self):
        pass

engine.StopRequests = Stop
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("case", ["ema", "epoch_end", "segment"])
def test_torchrun_run_stopped_mid_epoch_resumes_exactly(tmp_path, case):
    """Under torchrun, a run stopped part-way into an epoch and resumed ends with the weights and
    per-epoch figures of an uninterrupted one: each rank takes back its own share of the epoch's
    training loss and accuracy, and its own BatchNorm statistics of the weights it evaluates
    (the EMA's, updated by each rank on its own through the epoch; the model's, stopped after an
    epoch's last step, before the ranks average them). They used to come back as rank 0's on every
    rank: epoch 1's train loss 1.74837 against 1.76082, running statistics 2e-6 off."""
    script = tmp_path / "stopping_rank.py"
    script.write_text(STOPPING_RANK)
    task = "segment" if case == "segment" else "classify"
    if task == "classify":  # 22 steps an epoch: stopped in epoch 1, or after its last step
        args = [*TINY, "--epochs", "2", "--save-every-steps", "3", "--progress", "none"] + (["--ema"] if case == "ema" else [])
        stop_at = 5 if case == "ema" else 22
    else:  # 2 steps an epoch: stopped after the last step of epoch 2
        args, stop_at = ["--task", "segment", "--data", str(_seg_folder(tmp_path / "seg")), "--img-size", "32", "--epochs", "2",
                         "--batch-size", "2", "--lr", "0.003", "--scale-range", "0.75", "1.5", "--progress", "none"], 4
    resume = ["--task", "segment"] if task == "segment" else []

    def torchrun(*cli, stop_at=0):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *cli],
                              env={**child_env(), "STOP_AT": str(stop_at or 10**9)}, capture_output=True, text=True, timeout=300)

    ref, cut = tmp_path / "ref", tmp_path / "cut"
    r = torchrun("train", *args, "--output", str(ref))
    assert r.returncode == 0, r.stderr[-2000:]
    torchrun("train", *args, "--output", str(cut), stop_at=stop_at)  # (rank 0 exits 130: torchrun reports a failure)
    assert json.loads((cut / "checkpoints" / "latest.json").read_text())["step"] == stop_at
    r = torchrun("train", *resume, "--output", str(cut), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = _weights(ref / "model.safetensors"), _weights(cut / "model.safetensors")
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    cols = lambda d: [line.split(",")[:8] for line in (d / "metrics.csv").read_text().splitlines()]
    assert cols(ref) == cols(cut)


def test_finetune_to_other_class_count_and_roundtrip(tmp_path, capsys):
    """A 10-class checkpoint fine-tuned onto a 3-class image folder; then eval and predict on it."""
    data = _image_folder(tmp_path / "colours")
    src = visionzoo.create_model("convmixer_256_8", num_classes=10, dim=16, depth=2, patch_size=2)
    visionzoo.save_state_dict(src.state_dict(), tmp_path / "pre.safetensors")
    out = tmp_path / "ft"
    rc = main(["train", "--data", str(data), *TINY, "--img-size", "16", "--epochs", "4", "--lr", "0.02",
               "--pretrained", str(tmp_path / "pre.safetensors"), "--freeze-backbone", "--output", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "new classifier for 3 classes" in text
    s = json.loads((out / "summary.json").read_text())
    assert s["num_classes"] == 3 and s["top1"] is not None
    trained = _weights(out / "model.safetensors")
    # the backbone frozen: weights and BatchNorm statistics (these used to keep updating)
    backbone = {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}
    assert any(k.endswith("running_mean") for k in backbone)
    for k, v in backbone.items():
        assert torch.equal(trained[k], v), k
    assert trained["head.weight"].shape == (3, 16)
    for f in ("metrics.csv", "config.json", "summary.json"):
        assert (out / f).is_file()

    # eval on the run's own folder: its held-out split, the images and top-1 of the run's summary;
    # on a copy of the folder (not trained on): every image; confusion matrix PNG
    assert main(["eval", "--checkpoint", str(out / "model.safetensors"), "--data", str(data), "--output", str(tmp_path / "cm.png")]) == 0
    text = capsys.readouterr().out
    assert f"held-out split, {s['heldout_images']} images): top-1 {s['top1']:.4f}" in text and s["heldout_images"] < 24
    assert main(["eval", "--checkpoint", str(out / "model.safetensors")]) == 0  # no --data: the folder the weights record
    assert f"on {data.resolve()} (held-out split, {s['heldout_images']} images): top-1 {s['top1']:.4f}" in capsys.readouterr().out
    shutil.copytree(data, tmp_path / "copy")
    assert main(["eval", "--checkpoint", str(out / "model.safetensors"), "--data", str(tmp_path / "copy"), "--output", str(tmp_path / "cm.png")]) == 0
    assert "(every image, 24 images)" in capsys.readouterr().out
    (tmp_path / "copy" / "blue").rename(tmp_path / "copy" / "cyan")  # other class names: refused, not scored
    _one_line_error(["eval", "--checkpoint", str(out / "model.safetensors"), "--data", str(tmp_path / "copy")], capsys,
                    "classes are not the checkpoint's: 'cyan' vs 'blue'")
    _one_line_error(["eval", "--checkpoint", str(out / "model.safetensors"), "--data", str(data), "--device", "tpu"], capsys,
                    "--device must be cpu, cuda or cuda:N")
    pytest.importorskip("matplotlib")
    assert (tmp_path / "cm.png").stat().st_size > 0 and (out / "curves.png").is_file()
    # predict: class names come from the checkpoint
    assert main(["predict", "--checkpoint", str(out / "model.safetensors"), str(data / "red" / "0.png"), "--topk", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(data / "red" / "0.png")) and any(c in line for c in ("red", "green", "blue"))
    # a folder (its 8 images), in batches of 3, as JSON lines: the same as one by one; an unreadable
    # file among them is reported on its own line, the others still predicted, and the exit code is 2
    ckpt = ["--checkpoint", str(out / "model.safetensors"), "--topk", "3"]
    assert main(["predict", *ckpt, str(data / "green"), "--batch-size", "3", "--json"]) == 0
    rows = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == sorted(str(p) for p in (data / "green").glob("*.png"))
    assert main(["predict", *ckpt, rows[0]["image"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == rows[0]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main(["predict", *ckpt, str(data / "red" / "0.png"), str(tmp_path / "bad.png"), str(data / "red" / "1.png")]) == 2
    captured = capsys.readouterr()
    assert [r.split(":")[0] for r in captured.out.splitlines()] == [str(data / "red" / "0.png"), str(data / "red" / "1.png")]
    assert "bad.png" in captured.err and "1 of 3 images could not be read" in captured.err
    # export: the run's architecture (dim 16, depth 2, patch 2), 3 classes and 16 px input
    ort = pytest.importorskip("onnxruntime")
    assert main(["export", "convmixer_256_8", "--checkpoint", str(out / "model.safetensors"), "--output", str(tmp_path / "ft.onnx")]) == 0
    assert "(ok)" in capsys.readouterr().out
    x = torch.randn(2, 3, 16, 16)
    (y,) = ort.InferenceSession(str(tmp_path / "ft.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    model, _ = load_trained(out / "model.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=1e-4, atol=1e-4)


def test_a_resolution_override_sets_the_runs_input_size_and_crop(tmp_path, capsys):
    """EfficientNet's ``--model-arg resolution=R`` without ``--img-size``: the run trains and
    evaluates at R with the official crop (resize R + 32, crop R), as the model's default_cfg
    says; the data took the unchanged registry entry's 224 px and 0.875."""
    from visionzoo.train.checkpoint import read_metadata

    data = _image_folder(tmp_path / "colours", n=4)
    args = ["--model", "efficientnet_b0", "--model-arg", "resolution=40", "--model-arg", "width_coefficient=0.25",
            "--model-arg", "depth_coefficient=0.25", "--epochs", "1", "--batch-size", "4", "--progress", "none"]
    assert main(["train", "--data", str(data), *args, "--output", str(tmp_path / "run")]) == 0, capsys.readouterr().err
    p = read_metadata(tmp_path / "run" / "model.safetensors")["preprocessing"]
    assert p["img_size"] == 40 and p["crop_pct"] == pytest.approx(40 / 72, abs=1e-3) and p["crop_mode"] == "center"


def test_finetune_vit_resizes_position_embeddings(tmp_path, capsys):
    """A ViT checkpoint at one size fine-tuned at another: position table resampled, new head."""
    data = _image_folder(tmp_path / "colours", n=4)
    args = ["--model-arg", "embed_dim=16", "--model-arg", "depth=1", "--model-arg", "num_heads=2"]
    src = visionzoo.create_model("vit_tiny_patch16_224", num_classes=10, img_size=64, embed_dim=16, depth=1, num_heads=2)
    visionzoo.save_state_dict(src.state_dict(), tmp_path / "vit.safetensors")
    rc = main(["train", "--data", str(data), "--model", "vit_tiny_patch16_224", *args, "--img-size", "32", "--epochs", "1",
               "--batch-size", "4", "--pretrained", str(tmp_path / "vit.safetensors"), "--grad-checkpointing",
               "--output", str(tmp_path / "vit"), "--progress", "none"])
    assert rc == 0, capsys.readouterr().err
    w = _weights(tmp_path / "vit" / "model.safetensors")
    assert w["pos_embed"].shape == (1, 1 + 4, 16) and w["head.weight"].shape == (3, 16)


def test_distillation_soft_and_deit_hard(tmp_path, capsys):
    """Soft KD into a ConvMixer, hard-label KD through a distilled DeiT's distillation token."""
    assert main(["train", *TINY, "--epochs", "1", "--output", str(tmp_path / "teacher"), "--progress", "none"]) == 0
    t = ["--teacher", "convmixer_256_8", "--teacher-checkpoint", str(tmp_path / "teacher" / "model.safetensors")]
    assert main(["train", *TINY, "--epochs", "1", *t, "--output", str(tmp_path / "kd"), "--progress", "none"]) == 0
    deit = ["--model", "deit_tiny_distilled_patch16_224", "--model-arg", "embed_dim=16", "--model-arg", "depth=1",
            "--model-arg", "num_heads=2", "--model-arg", "patch_size=4", "--img-size", "16", "--batch-size", "64"]
    assert main(["train", *deit, "--epochs", "1", *t, "--output", str(tmp_path / "deit"), "--progress", "none"]) == 0
    s = json.loads((tmp_path / "deit" / "summary.json").read_text())
    assert s["model"] == "deit_tiny_distilled_patch16_224" and s["top1"] is not None
    assert "head_dist.weight" in _weights(tmp_path / "deit" / "model.safetensors")


def test_weight_decay_defaults_to_each_optimizers_own():
    """AdamW's decoupled 0.05 (DeiT's, ConvNeXt's) was also SGD's default, where it is an L2 term
    amplified tenfold by momentum 0.9 (timm's SGD recipes use 1e-5 to 1e-4): SGD now takes 1e-4,
    torchvision's ResNet recipe; a value given is kept, and a resumed run keeps its own."""
    from visionzoo.train.engine import TrainConfig

    assert TrainConfig().weight_decay == 0.05 and TrainConfig(opt="sgd").weight_decay == 1e-4
    assert TrainConfig(opt="sgd", weight_decay=0.05).weight_decay == 0.05
    assert TrainConfig(opt="adamw", weight_decay=0.0).weight_decay == 0.0


def test_segmentation_models_decay_what_their_backbones_do():
    """--task segment's AdamW decayed every parameter (norms, biases, Swin's relative-position
    tables, ViT's position embedding); it now leaves out what classification leaves out, each
    backbone's no_weight_decay() named under its prefix in the segmentation model."""
    from visionzoo.param_groups import weight_decayed
    from visionzoo.tasks.segmentation import create_segmentation_model

    for name, kept in (("swin_tiny_patch4_window7_224", "relative_position_bias_table"), ("vit_tiny_patch16_224", "pos_embed")):
        with torch.device("meta"):
            seg = create_segmentation_model(name, 3)
            net = visionzoo.create_model(name)
        decayed = weight_decayed(seg)
        skipped = {n for n, p in seg.named_parameters() if not decayed(n, p)}
        assert any(kept in n for n in skipped) and any("norm" in n and n.endswith(".weight") for n in skipped), name
        plain = weight_decayed(net)
        inside = {n.removeprefix("backbone.") for n, _ in seg.named_parameters() if n.startswith("backbone.")}  # (no head, no final norm)
        assert {n for n, p in net.named_parameters() if n in inside and not plain(n, p)} == {
            n.removeprefix("backbone.") for n in skipped if n.startswith("backbone.")}, name


def test_ema_leaves_a_constant_tensor_bit_identical():
    """A frozen backbone's weights and BatchNorm statistics stay as loaded under --ema: the
    average is a lerp, where ema * d + p * (1 - d) moved 91 % of such values (up to 4e-6
    relative after 2,000 steps); a changing tensor is averaged by the documented formula."""
    from visionzoo.train.engine import ModelEma

    torch.manual_seed(0)
    net = torch.nn.Module()
    net.w = torch.nn.Parameter(torch.randn(1000))
    net.register_buffer("count", torch.tensor(3))
    const = net.w.detach().clone()
    ema = ModelEma(net, 0.999)
    for _ in range(2000):
        ema.update_parameters(net)
    assert torch.equal(ema.module.w, const) and int(ema.n_averaged) == 2000
    net.count.fill_(7)
    ema.update_parameters(net)
    assert ema.module.count == 7  # num_batches_tracked: copied
    with torch.no_grad():
        net.w.fill_(1.0)
    for n in range(2001, 2004):
        d = min(0.999, (1 + n) / (10 + n))
        expect = ema.module.w.detach() * d + net.w.detach() * (1 - d)
        ema.update_parameters(net)
        torch.testing.assert_close(ema.module.w, expect)


def test_ema_counts_on_the_host_and_keeps_averaged_models_state():
    """--ema's update never reads a value from the model's device (here the meta device, where a
    read raises; torch's AveragedModel compared and copied its count there, two waits for a GPU
    each step), and its state dict is AveragedModel's, so earlier training states resume."""
    from torch.optim.swa_utils import AveragedModel

    from visionzoo.train.engine import ModelEma

    with torch.device("meta"):
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ema = ModelEma(net, 0.9)
    for _ in range(3):
        ema.update_parameters(net)
    assert int(ema.n_averaged) == 3
    cpu = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    old = AveragedModel(cpu, use_buffers=True)
    old.update_parameters(cpu)
    old.update_parameters(cpu)
    resumed = ModelEma(cpu, 0.9)
    assert resumed.state_dict().keys() == old.state_dict().keys()
    resumed.load_state_dict(old.state_dict())
    assert int(resumed.n_averaged) == 2 and resumed.n_averaged.device.type == "cpu"


def test_schedule_is_timms_cosine_with_a_prefixed_warmup_one_step_ahead():
    """The rate of each optimizer step is that of timm's create_scheduler_v2 (cosine, per update,
    warmup_prefix, warmup_lr 0, min_lr --min-lr-ratio x --lr), but for the warm-up, which reaches
    --lr one step sooner: step s of it at (s + 1) / W x --lr, where timm's first step is at 0."""
    from timm.scheduler import create_scheduler_v2

    from visionzoo.train.engine import _schedule

    lr, per_epoch, epochs, warmup_epochs = 0.1, 5, 4, 1
    total, warmup = per_epoch * epochs, per_epoch * warmup_epochs
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    ref, _ = create_scheduler_v2(opt, "cosine", num_epochs=epochs - warmup_epochs, warmup_epochs=warmup_epochs, warmup_prefix=True,
                                 warmup_lr=0.0, min_lr=0.01 * lr, step_on_epochs=False, updates_per_epoch=per_epoch)

    def timm_lr(step: int) -> float:
        ref.step_update(step)
        return opt.param_groups[0]["lr"]

    ours = _schedule(total, warmup, 0.01)
    assert [lr * ours(s) for s in range(warmup)] == pytest.approx([timm_lr(s + 1) for s in range(warmup)])
    assert [lr * ours(s) for s in range(warmup, total)] == pytest.approx([timm_lr(s) for s in range(warmup, total)], rel=1e-12)


def test_ema_is_timms_model_ema_v3_with_a_warmup():
    """--ema's update is timm's ModelEmaV3 (weights and float buffers averaged, BatchNorm's
    counter copied) at the decay min(--ema-decay, (1 + n) / (10 + n)) after n updates, the first a copy."""
    from timm.utils import ModelEmaV3
    from visionzoo.train.engine import ModelEma

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(64, 2))
    ours, ref = ModelEma(model, 0.9), ModelEmaV3(model, decay=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for n in range(25):
        opt.zero_grad()
        model(torch.randn(4, 3, 6, 6)).square().mean().backward()
        opt.step()
        ours.update_parameters(model)
        ref.apply_update_(model, 0.0 if n == 0 else min(0.9, (1 + n) / (10 + n)))
    got, expect = ours.module.state_dict(), ref.module.state_dict()
    assert got.keys() == expect.keys() and "1.running_var" in got
    for k in got:
        torch.testing.assert_close(got[k], expect[k], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(got["1.running_var"], model.state_dict()["1.running_var"])  # (averaged, not copied)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_targets_and_their_smoothed_loss_are_timms(kind, monkeypatch):
    """A batch of two real photos mixed at lambda 0.37: the images, the targets and the label-smoothed
    loss are those of timm's Mixup (the pair mirrored there, rolled here: the same for two) and
    SoftTargetCrossEntropy; CutMix's lambda is corrected to the area of its box, timm's ``correct_lam``."""
    import numpy as np
    from skimage import data as photos
    from timm.data import Mixup
    from timm.data.mixup import mixup_target
    from timm.loss import SoftTargetCrossEntropy

    from visionzoo.train import TrainConfig
    from visionzoo.train.engine import _loss, _mixer

    x = torch.stack([torch.from_numpy(np.ascontiguousarray(p()[:45, :62])).permute(2, 0, 1).float() / 255
                     for p in (photos.chelsea, photos.coffee)])
    y, classes, lam = torch.tensor([1, 3]), 5, 0.37
    mix = _mixer(1.0 if kind == "mixup" else 0.0, 1.0 if kind == "cutmix" else 0.0, classes)
    monkeypatch.setattr(mix, "_dist", type("Fixed", (), {"sample": lambda self, shape=(): torch.tensor(lam)})())
    centre = iter([torch.tensor([50]), torch.tensor([10])])  # CutMix's box centre: x, then y
    monkeypatch.setattr(torch, "randint", lambda *a, **k: next(centre))
    mixed, target = mix(x.clone(), y)
    monkeypatch.undo()
    cfg = TrainConfig(label_smoothing=0.1)
    logits = torch.randn(2, classes)
    loss = _loss(logits, target, mixed, None, cfg, False)[0]
    if kind == "mixup":
        ref = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=classes)
        monkeypatch.setattr(np.random, "beta", lambda *a, **k: lam)
        ref_x, ref_target = ref(x.clone(), y)
        torch.testing.assert_close(mixed, ref_x)
    else:  # timm's box is another size (odd sides allowed): the same lambda correction on this box
        pasted = (mixed != x).any(dim=1)[0]
        assert pasted.any() and torch.equal(pasted, (mixed != x).any(dim=1)[1])
        rows, cols = pasted.any(dim=1).nonzero(), pasted.any(dim=0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == pasted.sum() and int(rows.min()) == 0  # a rectangle, clipped at the top
        ref_target = mixup_target(y, classes, lam=1 - float(box) / (45 * 62), smoothing=0.1)
    torch.testing.assert_close(target * 0.9 + 0.1 / classes, ref_target)
    torch.testing.assert_close(loss, SoftTargetCrossEntropy()(logits, ref_target))


@pytest.mark.parametrize("alpha", [0.5, 0.9])
def test_deit_hard_distillation_takes_distill_alpha(alpha):
    """A distilled DeiT's loss: (1 - alpha) CE(class token, labels) + alpha CE(distillation
    token, the teacher's argmax), as DeiT's code; alpha 0.5 is the paper's 1/2 + 1/2 (it was
    fixed at 1/2, --distill-alpha silently ignored)."""
    from visionzoo.train.engine import TrainConfig, _loss

    torch.manual_seed(0)
    cls, dist, y, x = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), torch.randn(4, 5)
    teacher = torch.nn.Linear(5, 3)
    cfg = TrainConfig(distill_alpha=alpha)
    loss, logits = _loss((cls, dist), y, x, teacher, cfg, True)
    hard = teacher(x).argmax(1)
    expect = (1 - alpha) * torch.nn.functional.cross_entropy(cls, y, label_smoothing=cfg.label_smoothing) + alpha * torch.nn.functional.cross_entropy(dist, hard)
    torch.testing.assert_close(loss, expect)
    torch.testing.assert_close(logits, (cls + dist) / 2)


def _one_line_error(args, capsys, *needles):
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_bad_inputs_are_one_line(tmp_path, capsys):
    o = ["--output", str(tmp_path / "o")]
    _one_line_error(["train", "--data", str(tmp_path / "nope"), *o], capsys, "not found")
    empty = _image_folder(tmp_path / "e", classes=("a", "b"), n=2)
    shutil.rmtree(empty / "b")
    (empty / "b").mkdir()
    _one_line_error(["train", "--data", str(empty), *o], capsys, "empty", "b")
    junk = _image_folder(tmp_path / "j", classes=("a", "b"), n=2)
    (junk / "a" / "notes.txt").write_text("hello")
    _one_line_error(["train", "--data", str(junk), *o], capsys, "notes.txt", "not an image")
    (junk / "a" / "notes.txt").unlink()
    (junk / "a" / "broken.png").write_bytes(b"not a png at all")
    _one_line_error(["train", "--data", str(junk), *o], capsys, "broken.png")
    one = _image_folder(tmp_path / "one", classes=("a",), n=2)  # every image would be scored correct
    _one_line_error(["train", "--data", str(one), *o], capsys, "one class folder (a)", "at least two")
    _one_line_error(["train", "--epochs", "0", *o], capsys, "--epochs")
    _one_line_error(["train", "--batch-size", "-3", *o], capsys, "--batch-size")
    _one_line_error(["train", "--model", "no_such_net", *o], capsys, "no_such_net")
    _one_line_error(["train", "--model", "resnet18", "--drop-path", "1.5", *o], capsys, "--drop-path", "[0, 1)")
    _one_line_error(["train", "--drop-path", "0.1", *o], capsys, "convmixer_256_8 is built without stochastic depth")
    _one_line_error(["train", "--ema-decay", "2", *o], capsys, "--ema-decay")
    _one_line_error(["train", "--warmup-epochs", "-1", *o], capsys, "--warmup-epochs")
    _one_line_error(["train", "--data", "cifar10", "--data-dir", str(tmp_path / "offline"), *o], capsys, "cifar10")
    assert not (tmp_path / "offline").exists()  # (the failed download made it, and left it)
    _one_line_error(["train", "--output", str(tmp_path / "nothing"), "--resume"], capsys, "--resume")
    (tmp_path / "afile.txt").write_text("x")
    _one_line_error(["train", "--output", str(tmp_path / "afile.txt")], capsys, "afile.txt is a file")
    _one_line_error(["train", "--output", str(tmp_path / "afile.txt" / "run")], capsys, "afile.txt is a file, not a folder")
    _one_line_error(["train", "--device", "gpu0", *o], capsys, "--device must be cpu, cuda or cuda:N, got 'gpu0'")
    _one_line_error(["train", "--task", "segment", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "afile.txt")], capsys, "afile.txt is a file")
    _one_line_error(["predict", "x.png", "--checkpoint", str(tmp_path), "--model", "convmixer_256_8"], capsys, "is a directory")
    # a checkpoint of another model
    other = visionzoo.create_model("convmixer_256_8", num_classes=10, dim=16, depth=1, patch_size=2)
    visionzoo.save_state_dict(other.state_dict(), tmp_path / "other.safetensors")
    _one_line_error(["eval", "--checkpoint", str(tmp_path / "other.safetensors"), "--model", "convnext_tiny"], capsys, "other.safetensors")
    _one_line_error(["predict", "--checkpoint", str(tmp_path / "missing.safetensors"), "--model", "convnext_tiny", "x.png"], capsys, "not found")
    ckpt = str(tmp_path / "other.safetensors")
    _one_line_error(["predict", "x.png", "--checkpoint", ckpt, "--model", "convmixer_256_8", "--crop-pct", "1.5"], capsys, "--crop-pct")
    _one_line_error(["predict", "x.png", "--checkpoint", ckpt, "--model", "convmixer_256_8", "--mean", "0.5", "0.5"], capsys, "mean", "3")


def test_class_folder_scan_skips_hidden_folders_and_files(tmp_path):
    """Files in hidden sub-folders of a class folder (Jupyter's .ipynb_checkpoints/) are skipped,
    as hidden files and class folders are: they used to become training images, or stop the run."""
    from visionzoo.train.data import scan_class_folders

    data = _image_folder(tmp_path / "d", classes=("a", "b"), n=2)
    shutil.copytree(data / "a", data / "a" / "more")  # a visible sub-folder's images count
    for junk in ("a/.ipynb_checkpoints/0-checkpoint.png", "a/more/.cache/x.png", "b/.x.png", ".hidden/c.png"):
        (data / junk).parent.mkdir(parents=True, exist_ok=True)
        (data / junk).write_bytes(b"not a png")
    classes, samples = scan_class_folders(data)
    assert classes == ["a", "b"]
    assert [str(p.relative_to(data)) for p, _ in samples] == ["a/0.png", "a/1.png", "a/more/0.png", "a/more/1.png", "b/0.png", "b/1.png"]



def test_class_folder_scan_follows_linked_folders_and_names_a_link_to_nothing(tmp_path, capsys):
    """A linked sub-folder's images count, as in torchvision's ImageFolder (they used to be
    skipped unsaid), a link back up the tree no loop; a link to nothing stops the scan naming
    it, where it used to be skipped unsaid, in training and in predict's folder listing; a
    class folder of hidden files only says it has them."""
    from torchvision.datasets import ImageFolder

    from visionzoo.train.data import DataError, scan_class_folders

    data = _image_folder(tmp_path / "d", classes=("a", "b"), n=2)
    shutil.copytree(data / "a", tmp_path / "elsewhere")
    (data / "a" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    classes, samples = scan_class_folders(data)
    assert (classes, [(str(p), c) for p, c in samples]) == (ImageFolder(str(data)).classes, ImageFolder(str(data)).samples)
    assert len(samples) == 6
    (data / "b" / "up").symlink_to(data, target_is_directory=True)  # os.walk alone would not end
    assert len(scan_class_folders(data)[1]) == 6 + 4  # b: its own, and a's and a/linked's through up/ (b itself once)
    (data / "b" / "up").unlink()
    (data / "b" / "gone.png").symlink_to(tmp_path / "deleted.png")
    with pytest.raises(DataError, match=f"^{data / 'b' / 'gone.png'}: a symbolic link to {tmp_path / 'deleted.png'}, which does not exist$"):
        scan_class_folders(data)
    ckpt = tmp_path / "m.safetensors"
    visionzoo.save_state_dict(visionzoo.create_model("mobilenetv2_035", num_classes=2).state_dict(), ckpt)
    assert main(["predict", str(data), "--checkpoint", str(ckpt), "--model", "mobilenetv2_035", "--img-size", "32"]) == 2
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 6 and "linked/1.png" in out
    assert err.splitlines() == [f"visionzoo predict: error: {data / 'b' / 'gone.png'}: a symbolic link to {tmp_path / 'deleted.png'}, "
                                "which does not exist", "visionzoo predict: 1 of 7 images could not be read"]
    (data / "b" / "gone.png").unlink()
    (data / "c").mkdir()
    (data / "c" / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(DataError, match=f"^class folder {data / 'c'} is empty \\(but for hidden files, which are skipped\\)$"):
        scan_class_folders(data)

def test_predict_says_unreadable_or_training_state_before_asking_for_a_model(tmp_path, capsys):
    """Without --model, a corrupt file is called unreadable (not "does not name its model"),
    and the --resume state of a run names the weights files to pass instead."""
    (tmp_path / "random.pth").write_bytes(os.urandom(5000))
    err = _one_line_error(["predict", "--checkpoint", str(tmp_path / "random.pth"), "x.png"], capsys, "random.pth: not a readable checkpoint")
    assert "--model" not in err
    ckdir = tmp_path / "run" / "checkpoints"
    ckdir.mkdir(parents=True)
    weights = visionzoo.create_model("convmixer_256_8", num_classes=3, dim=16, depth=1, patch_size=2).state_dict()
    visionzoo.save_state_dict(weights, ckdir / "step_00000242.safetensors")
    state = ckdir / "step_00000242.state.pt"
    torch.save({"optimizer": {}, "global_step": 242}, state)  # the layout does not matter: the name says what it is
    for model in ([], ["--model", "convmixer_256_8"]):
        err = _one_line_error(["predict", "--checkpoint", str(state), *model, "x.png"], capsys,
                              "step_00000242.state.pt is a training state of visionzoo train", "--resume", f"instead: {ckdir / 'step_00000242.safetensors'}")
        assert "not written by visionzoo train" not in err
    visionzoo.save_state_dict(weights, tmp_path / "run" / "model.safetensors")  # the run's final weights, named first
    _one_line_error(["eval", "--checkpoint", str(state)], capsys, f"instead: {tmp_path / 'run' / 'model.safetensors'} or {ckdir / 'step_00000242.safetensors'}")
    # one image that cannot be read: its own line only (a second one said "1 of 1 images could not be read")
    visionzoo.save_state_dict(visionzoo.create_model("resnet18", num_classes=3).state_dict(), tmp_path / "r18.safetensors")
    rc = main(["predict", "--checkpoint", str(tmp_path / "r18.safetensors"), "--model", "resnet18", str(tmp_path / "missing.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "missing.png" in err, err


@pytest.mark.parametrize("crop_mode", [None, "squash"])
def test_predict_with_a_timm_checkpoint_and_its_preprocessing(tmp_path, capsys, crop_mode):
    """A checkpoint from timm stores no preprocessing; given on the command line (here 160 px,
    bicubic, crop 0.95 and another mean and std; timm's default centre crop, or --crop-mode
    squash), predict gives timm's own pipeline's probabilities on a real photo. (The classifier's
    weights are scaled up so that the two crops' probabilities differ by 0.03, where the
    comparison's tolerance is 2e-3.)"""
    timm = pytest.importorskip("timm")
    from PIL import Image
    from skimage import data
    from timm.data import create_transform

    torch.manual_seed(0)
    ref = timm.create_model("resnet18", num_classes=4).eval()
    with torch.no_grad():
        ref.fc.weight.mul_(30)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")
    by_mode = {}
    for mode in ("center", "squash"):
        tf = create_transform(input_size=(3, 160, 160), interpolation="bicubic", crop_pct=0.95, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25),
                              crop_mode=mode)
        with torch.no_grad():
            by_mode[mode] = ref(tf(Image.open(tmp_path / "cat.png").convert("RGB"))[None]).softmax(1)[0]
    assert (by_mode["center"] - by_mode["squash"]).abs().max() > 0.01
    probs = by_mode[crop_mode or "center"]
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "cat.png"), "--checkpoint", str(tmp_path / "r18.pth"), "--model", "resnet18", "--topk", "4",
                 "--img-size", "160", "--interpolation", "bicubic", "--crop-pct", "0.95", "--mean", "0.5", "0.4", "0.3", "--std", "0.2", "0.3", "0.25",
                 *(["--crop-mode", crop_mode] if crop_mode else [])]) == 0
    line = capsys.readouterr().out.strip()
    got = dict(kv.rsplit(" ", 1) for kv in line.split(": ", 1)[1].split(", "))
    for cls, p in got.items():
        assert abs(float(p) - float(probs[int(cls)])) < 2e-3, (line, probs)
    assert list(got) == [str(int(i)) for i in probs.argsort(descending=True)]


def test_eval_transform_squash_is_timms_and_center_is_unchanged():
    """crop_mode "squash" (timm's tf_efficientnetv2_m/l/xl) resizes both sides of the photo
    (451 x 300) to floor(S / crop_pct), then centre-crops S: timm's transform on the same PIL
    image to one grey level (timm resizes the PIL image, we the uint8 tensor), where the centre
    crop (the default, unchanged) differs by a fifth of the range on average; "border" and
    unknown modes are refused naming those taken."""
    from PIL import Image
    from skimage import data
    from timm.data import create_transform

    from visionzoo.train.data import eval_transform

    img = Image.fromarray(data.chelsea())
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    grey_level = 1 / 255 / min(std)
    for size, crop_pct, interpolation in ((64, 1.0, "bicubic"), (96, 0.875, "bilinear")):
        squash = eval_transform(size, mean, std, crop_pct=crop_pct, interpolation=interpolation, crop_mode="squash")(img)
        center = eval_transform(size, mean, std, crop_pct=crop_pct, interpolation=interpolation, crop_mode="center")(img)
        theirs = create_transform(input_size=(3, size, size), crop_pct=crop_pct, crop_mode="squash", interpolation=interpolation,
                                  mean=mean, std=std)(img)
        assert squash.shape == theirs.shape == (3, size, size)
        assert (squash - theirs).abs().max() <= 1.01 * grey_level and (squash - theirs).abs().mean() < 1e-3
        assert (center - theirs).abs().mean() > 0.1  # a centre crop would fail the comparison above
        torch.testing.assert_close(center, eval_transform(size, mean, std, crop_pct=crop_pct, interpolation=interpolation)(img), rtol=0, atol=0)
    for bad in ("border", "Squash"):
        with pytest.raises(ValueError, match=f"^crop_mode must be one of 'center', 'squash', got '{bad}'$"):
            eval_transform(64, mean, std, crop_mode=bad)


def test_crop_mode_goes_from_the_default_cfg_to_the_held_out_split_the_saved_preprocessing_load_trained_and_eval(tmp_path, monkeypatch):
    """A model whose default_cfg says crop_mode "squash": a folder's held-out images are
    squashed, and the preprocessing a run saves in its checkpoint records it; load_trained takes
    a checkpoint's crop_mode, else (a checkpoint written before it was recorded, or from
    elsewhere) the model's default_cfg's, else "center", and eval prepares images with it (a
    given --crop-mode overrides both: test_predict_with_a_timm_checkpoint_and_its_preprocessing)."""
    from PIL import Image
    from skimage import data

    from visionzoo.registry import get_entry
    from visionzoo.train.checkpoint import model_metadata
    from visionzoo.train.data import build_data, eval_transform, load_image

    cfg = get_entry("mobilenetv2_035").default_cfg
    assert "crop_mode" not in cfg
    folder = tmp_path / "photos"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(data.chelsea()[::10, ::10]).save(folder / c / f"{i}.png")  # 46 x 30
    bundle = build_data(str(folder), img_size=24, val_split=0.5, model_cfg=dict(cfg))
    assert bundle.crop_mode == bundle.preprocessing()["crop_mode"] == "center"
    bundle = build_data(str(folder), img_size=24, val_split=0.5, model_cfg=dict(cfg, crop_mode="squash"))
    assert bundle.crop_mode == bundle.preprocessing()["crop_mode"] == "squash"
    squashed = eval_transform(24, cfg["mean"], cfg["std"], crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"], crop_mode="squash")
    torch.testing.assert_close(bundle.val[0][0], squashed(load_image(folder / "a" / "0.png")), rtol=0, atol=0)

    weights = visionzoo.create_model("mobilenetv2_035", num_classes=2).state_dict()
    old = {"img_size": 24, "in_chans": 3, "mean": list(cfg["mean"]), "std": list(cfg["std"]), "interpolation": "bicubic", "crop_pct": 1.0}
    for name, prep in (("old", old), ("squash", dict(old, crop_mode="squash")), ("center", dict(old, crop_mode="center"))):
        visionzoo.save_state_dict(weights, tmp_path / f"{name}.safetensors", metadata=model_metadata("mobilenetv2_035", {}, ["a", "b"], prep))
    torch.save(weights, tmp_path / "foreign.pth")

    def crop_mode(name, **kw):
        return load_trained(tmp_path / name, "mobilenetv2_035", **kw)[1]["preprocessing"]["crop_mode"]

    assert [crop_mode(f) for f in ("old.safetensors", "foreign.pth", "squash.safetensors")] == ["center", "center", "squash"]
    monkeypatch.setitem(cfg, "crop_mode", "squash")  # as timm's tf_efficientnetv2_m
    assert [crop_mode(f) for f in ("old.safetensors", "foreign.pth", "center.safetensors")] == ["squash", "squash", "center"]
    assert crop_mode("old.safetensors", preprocessing={"crop_mode": "center"}) == "center"  # --crop-mode
    assert crop_mode("center.safetensors", preprocessing={"crop_mode": "squash"}) == "squash"
    # eval: a folder of class folders (every image), and one with train/ and val/ (build_data)
    from visionzoo.train import data as data_module

    modes = []

    def spy(*args, **kw):
        modes.append(kw.get("crop_mode"))
        return eval_transform(*args, **kw)

    monkeypatch.setattr(data_module, "eval_transform", spy)
    shutil.copytree(folder, tmp_path / "split" / "train")
    shutil.copytree(folder, tmp_path / "split" / "val")
    for where in (folder, tmp_path / "split"):
        assert main(["eval", "--checkpoint", str(tmp_path / "old.safetensors"), "--model", "mobilenetv2_035", "--data", str(where),
                     "--output", str(tmp_path / "cm.png")]) == 0
    assert modes == ["squash", "squash"]


def test_nan_loss_stops_keeping_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "nan"
    err = _one_line_error(["train", *TINY, "--epochs", "3", "--opt", "sgd", "--lr", "1e12", "--label-smoothing", "0",
                           "--warmup-epochs", "0", "--save-every-steps", "1", "--output", str(out)], capsys, "NaN")
    assert "checkpoint" in err
    ck = json.loads((out / "checkpoints" / "latest.json").read_text())
    w = _weights(out / "checkpoints" / ck["weights"])
    assert all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())


def test_model_best_never_holds_nan_weights(tmp_path, capsys, monkeypatch):
    """Weights gone NaN at an epoch's last step, evaluated as the best so far (argmax of NaN
    logits scores the share of class 0; here the evaluation is made to say 0.99): model_best
    keeps the last finite best and the run stops at save()'s check. It was written first."""
    from visionzoo.train import engine

    real, calls = engine.evaluate, []

    def evaluate(model, *args, **kw):
        calls.append(1)
        ev = real(model, *args, **kw)
        if len(calls) == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
            ev = {**ev, "top1": 0.99}
        return ev

    monkeypatch.setattr(engine, "evaluate", evaluate)
    out = tmp_path / "run"
    _one_line_error(["train", *TINY, "--epochs", "2", "--output", str(out)], capsys, "NaN")
    best = _weights(out / "model_best.safetensors")
    assert all(torch.isfinite(v).all() for v in best.values() if v.is_floating_point())


def test_a_new_run_failing_before_its_first_checkpoint_leaves_nothing_behind(tmp_path, capsys):
    """A new run stopped before any checkpoint (here a NaN loss at the second step) removes what
    it wrote (config.json, tensorboard/) and the folders it made; in a folder that held other
    files, those stay. It used to leave a folder nothing could resume."""
    nan = ["train", *TINY, "--epochs", "1", "--opt", "sgd", "--lr", "1e12", "--label-smoothing", "0", "--warmup-epochs", "0"]
    out = tmp_path / "new" / "run"
    _one_line_error([*nan, "--output", str(out)], capsys, "NaN", "none yet")
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("kept")
    _one_line_error([*nan, "--output", str(mine)], capsys, "NaN")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # a segmentation run likewise (a truncated image, read at the first step)
    data = _seg_folder(tmp_path / "seg", n=4)
    png = data / "images" / "0.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size * 3 // 5])
    seg = tmp_path / "segruns" / "run"
    assert main(["train", "--task", "segment", "--data", str(data), "--img-size", "32", "--epochs", "1", "--batch-size", "4",
                 "--output", str(seg)]) != 0
    capsys.readouterr()
    assert not (tmp_path / "segruns").exists()


def _seg_folder(root: Path, n=12, size=32) -> Path:
    """Images with a bright square (class 1) and a dark disc (class 2) on noise; masks as PNG label maps."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        img = torch.rand(size, size, 3, generator=g) * 60 + 90
        mask = torch.zeros(size, size, dtype=torch.uint8)
        x0, y0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
        mask[y0 : y0 + size // 3, x0 : x0 + size // 3] = 1
        cx, cy = (int(v) for v in torch.randint(size // 4, 3 * size // 4, (2,), generator=g))
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 6) ** 2] = 2
        img[mask == 1] = 230
        img[mask == 2] = 20
        Image.fromarray(img.to(torch.uint8).numpy()).save(root / "images" / f"{i}.png")
        Image.fromarray(mask.numpy()).save(root / "masks" / f"{i}.png")
    return root


def test_segmentation_iou_rises(tmp_path, capsys):
    data = _seg_folder(tmp_path / "seg")
    out = tmp_path / "segrun"
    assert main(["train", "--task", "segment", "--data", str(data), "--img-size", "32", "--epochs", "6", "--batch-size", "4",
                 "--lr", "0.003", "--output", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["num_classes"] == 3 and len(s["iou_per_class"]) == 3 and len(s["dice_per_class"]) == 3
    curve = s["miou_per_epoch"]
    assert curve[-1] > curve[0] + 0.1, curve
    # the metadata rebuilds the network (backbone and its overrides, head and its width);
    # predict, which writes label maps for it, asks where (tests/test_seg_cli.py)
    from visionzoo.train.segment import load_segmentation

    net, meta = load_segmentation(out / "model.safetensors")
    assert meta["channels"] == 64 and net(torch.zeros(1, 3, 20, 28)).shape == (1, 3, 20, 28)
    _one_line_error(["predict", str(data / "images" / "0.png"), "--checkpoint", str(out / "model.safetensors")], capsys,
                    "is a segmentation network (convnext_tiny)", "pass --output-dir DIR")
    _one_line_error(["train", "--task", "segment", "--data", str(tmp_path / "nothing")], capsys, "not found")
    _one_line_error(["train", "--task", "segment", "--data", str(data), "--output", str(out)], capsys, "already holds a segmentation run")
    _one_line_error(["train", "--task", "segment", "--data", str(data), "--num-classes", "2", "--output", str(tmp_path / "two")], capsys,
                    "holds label 2, but --num-classes 2 allows labels 0..1")
    assert not (tmp_path / "two").exists()  # refused before anything is written
    _one_line_error(["train", "--task", "segment", "--data", str(data), "--ema", "--mixup", "0.2"], capsys,
                    "--task segment does not take --mixup, --ema")
    _one_line_error(["train", "--seg-head", "aspp"], capsys, "--seg-head is an option of --task segment")


def test_finetuning_note_from_a_timm_file_with_our_keys_names_no_origin(tmp_path, capsys):
    """timm's ResNet has visionzoo's keys, so its file loads as it is: the note said
    '(visionzoo layout)' of a file timm wrote; it now says what was found."""
    timm = pytest.importorskip("timm")

    args = dict(block=timm.models.resnet.BasicBlock, layers=[1, 1, 1, 1], num_classes=10)
    torch.save(timm.models.resnet.ResNet(**args).state_dict(), tmp_path / "timm_resnet.pth")
    data = _image_folder(tmp_path / "colours", n=4)
    rc = main(["train", "--data", str(data), "--model", "resnet18", "--model-arg", "layers=1,1,1,1", "--img-size", "32", "--batch-size", "8",
               "--epochs", "1", "--lr", "1e-9", "--pretrained", str(tmp_path / "timm_resnet.pth"), "--output", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"fine-tuning from {tmp_path / 'timm_resnet.pth'} (keys already in visionzoo's layout); new classifier for 3 classes\n" in out, out

def test_unext_fine_tunes_from_a_released_checkpoint(tmp_path, capsys):
    """--pretrained on a whole network (UNeXt) loads all its weights, here a file in the
    released UNeXt-pytorch layout; its one-class layer is left initialised for 3 classes."""
    import safetensors.torch

    from test_dense import _unext_to_official
    from visionzoo.tasks.unext import unext

    data = _seg_folder(tmp_path / "seg", n=4, size=16)
    src = unext(num_classes=1)
    torch.save(_unext_to_official(src.state_dict()), tmp_path / "official.pth")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="classifier final"):
        rc = main(["train", "--task", "segment", "--data", str(data), "--model", "unext", "--img-size", "16", "--epochs", "1",
                   "--lr", "1e-9", "--pretrained", str(tmp_path / "official.pth"), "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    trained = safetensors.torch.load_file(out / "model.safetensors")
    assert torch.allclose(trained["encoder.0.weight"], src.encoder[0].weight, atol=1e-6)  # loaded (lr ~ 0), not a fresh init
    assert trained["final.weight"].shape[0] == 3


def test_segmentation_masks_and_options_are_checked_before_the_run(tmp_path, capsys):
    """Colour-coded masks used to be read as their red channel (a silent 0 mIoU); grey stored as
    RGB is a label map. Bad pairs and options are refused before the run folder exists."""
    import numpy as np
    from PIL import Image

    from visionzoo.train.segment import read_mask

    data = _seg_folder(tmp_path / "seg", n=4, size=16)
    lab = read_mask(data / "masks" / "0.png")
    Image.fromarray(np.stack([lab] * 3, -1)).save(tmp_path / "grey_rgb.png")
    assert (read_mask(tmp_path / "grey_rgb.png") == lab).all()
    Image.fromarray(lab).convert("LA").save(tmp_path / "grey_alpha.png")  # alpha set aside, as RGBA's
    assert (read_mask(tmp_path / "grey_alpha.png") == lab).all()
    colour = np.zeros((*lab.shape, 3), np.uint8)
    colour[lab == 1], colour[lab == 2] = (128, 0, 0), (0, 128, 0)
    Image.fromarray(colour).save(data / "masks" / "1.png")
    out = tmp_path / "run"
    seg = ["train", "--task", "segment", "--data", str(data), "--img-size", "16", "--epochs", "1", "--output", str(out)]
    _one_line_error(seg, capsys, "is a colour image (mode RGB); a mask must be a label map")
    Image.fromarray(lab[:8]).save(data / "masks" / "1.png")
    _one_line_error(seg, capsys, "is (16, 16) pixels but its mask (8, 16)")
    (data / "masks" / "1.png").unlink()
    Image.fromarray(np.where(lab == 2, -1, lab.astype(np.int32)), "I").save(data / "masks" / "1.tif")  # (PNG cannot hold mode I)
    _one_line_error(seg, capsys, "1.tif holds label -1; labels are class indices")
    (data / "masks" / "1.tif").unlink()
    Image.fromarray(lab).save(data / "masks" / "1.png")
    _one_line_error([*seg, "--num-classes", "0"], capsys, "--num-classes must be at least 2")
    split = tmp_path / "split"  # held-out masks all 255: the run reported mIoU, pixel accuracy and loss 0
    _seg_folder(split / "train", n=3, size=16), _seg_folder(split / "val", n=2, size=16)
    for m in (split / "val" / "masks").iterdir():
        Image.fromarray(np.full((16, 16), 255, np.uint8)).save(m)
    _one_line_error([*seg[:4], str(split), *seg[5:]], capsys, f"{split}'s held-out split: its 2 masks hold no labelled pixel")
    _one_line_error([*seg, "--lr", "0"], capsys, "--lr must be positive")
    _one_line_error([*seg, "--lr", "inf"], capsys, "--lr must be positive and finite, got inf")  # trained to NaN weights, exit 0
    _one_line_error([*seg, "--weight-decay", "-1"], capsys, "--weight-decay must be >= 0, got -1.0")  # torch's words, after the data
    _one_line_error([*seg, "--weight-decay", "nan"], capsys, "--weight-decay must be >= 0, got nan")
    _one_line_error([*seg, "--model", "unext", "--seg-head", "aspp"], capsys, "unext is a whole segmentation network")
    _one_line_error([*seg, "--model", "unext", "--pretrained", str(tmp_path / "none.pth")], capsys, "checkpoint file not found")
    assert not out.exists()


def test_segmentation_mask_files_a_jpeg_and_two_of_one_stem_are_refused_a_note_is_no_mask(tmp_path, capsys):
    """A JPEG mask trained with labels its compression made (a fourth class from three); with
    masks/X.png beside masks/X.jpg the one read followed the folder's order; a note such as
    masks/X.json was taken for X's mask."""
    from PIL import Image

    from visionzoo.train.segment import folder_pairs

    data = _seg_folder(tmp_path / "seg", n=4, size=16)
    (data / "masks" / "0.json").write_text("{}")  # a note beside the mask: no one's mask
    assert [m.name for _, m in folder_pairs(data)] == ["0.png", "1.png", "2.png", "3.png"]
    Image.open(data / "masks" / "1.png").save(data / "masks" / "1.jpg", quality=90)
    out = tmp_path / "run"
    seg = ["train", "--task", "segment", "--data", str(data), "--img-size", "16", "--epochs", "1", "--output", str(out)]
    _one_line_error(seg, capsys, f"{data / 'images' / '1.png'} has 2 masks, 1.jpg and 1.png in {data / 'masks'}: keep one")
    (data / "masks" / "1.png").unlink()
    _one_line_error(seg, capsys, f"{data / 'masks' / '1.jpg'}: a JPEG mask", "save label maps as PNG")
    _one_line_error(["eval", "--checkpoint", str(tmp_path / "none.safetensors"), "--data", str(data)], capsys, "not found")
    assert not out.exists()


def test_segmentation_masks_are_resized_from_the_pixel_under_each_cells_centre(tmp_path):
    """Masks were resized with torch's legacy nearest (each cell the source pixel at its
    top-left corner): half a cell off the bilinear image, which samples at the centres."""
    import numpy as np
    from PIL import Image

    from visionzoo.train.segment import SegFolder

    root = tmp_path
    (root / "images").mkdir(), (root / "masks").mkdir()
    Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.tile(np.arange(8, dtype=np.uint8), (4, 1))).save(root / "masks" / "a.png")  # columns labelled 0..7
    ds = SegFolder([(root / "images" / "a.png", root / "masks" / "a.png")], 4, (0.5,) * 3, (0.5,) * 3, train=False)
    _, y = ds[0]
    assert y.tolist() == [[1, 3, 5, 7]] * 4  # cell centres 1, 3, 5, 7 (legacy nearest: 0, 2, 4, 6)


def test_segmentation_batch_of_ignored_pixels_and_one_value_per_channel(tmp_path, capsys):
    """A training batch whose pixels are all ignored (255) made the mean loss NaN and stopped the
    run ("lower --lr"): it adds 0. A BatchNorm meeting a batch of one image with a 1x1 map gave
    torch's words, which name no option."""
    import numpy as np
    from PIL import Image

    from visionzoo.train.segment import split_pairs

    data = _seg_folder(tmp_path / "seg", n=5, size=16)
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(data / "masks" / "0.png")  # 0.png: in the training split
    out = tmp_path / "run"
    assert main(["train", "--task", "segment", "--data", str(data), "--img-size", "64", "--epochs", "1", "--batch-size", "1",
                 "--progress", "none", "--output", str(out)]) == 0
    assert "0.png" in {m.name for _, m in split_pairs(data)[0]}  # trained on, not held out
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) == 1 and np.isfinite(float(rows[0].split(",")[3]))  # train_loss
    capsys.readouterr()
    _one_line_error(["train", "--task", "segment", "--data", str(data), "--img-size", "16", "--epochs", "1", "--batch-size", "1",
                     "--model", "resnet18", "--output", str(tmp_path / "one")], capsys,
                    "--batch-size 1: a BatchNorm layer of resnet18 got one value per channel", "give a --batch-size of 2 or more")
    assert not (tmp_path / "one").exists()


def test_segmentation_default_backbone_is_small_and_convnext_tiny_named_is_the_whole_network(tmp_path, capsys):
    """Without --model a run trains ConvNeXt-T's layout at a quarter of its width and depth;
    --model convnext_tiny was the same small network (a ConvNeXt-T classification checkpoint
    refused: "shapes do not fit"), and any --model-arg made the default the whole network."""
    import visionzoo
    from visionzoo.checkpoints import save_state_dict
    from visionzoo.train.segment import SMALL_BACKBONE, load_segmentation

    data = _seg_folder(tmp_path / "seg", n=4, size=16)
    seg = ["train", "--task", "segment", "--data", str(data), "--img-size", "32", "--epochs", "1", "--progress", "none"]
    assert main([*seg, "--model-arg", "drop_path_rate=0.1", "--output", str(tmp_path / "small")]) == 0
    capsys.readouterr()
    net, meta = load_segmentation(tmp_path / "small" / "model.safetensors")
    assert meta["overrides"] == {**{k: list(v) for k, v in SMALL_BACKBONE.items()}, "drop_path_rate": 0.1} and sum(p.numel() for p in net.parameters()) < 1_000_000
    torch.manual_seed(0)
    cls = visionzoo.create_model("convnext_tiny", num_classes=5)
    save_state_dict(cls.state_dict(), tmp_path / "cls.safetensors")
    assert main([*seg, "--model", "convnext_tiny", "--pretrained", str(tmp_path / "cls.safetensors"), "--lr", "1e-12", "--output", str(tmp_path / "big")]) == 0
    net, meta = load_segmentation(tmp_path / "big" / "model.safetensors")
    assert meta["overrides"] == {}
    stem = next(v for k, v in net.state_dict().items() if k.endswith("stem.0.weight"))
    assert stem.shape == cls.stem[0].weight.shape and (stem - cls.stem[0].weight).abs().max() < 1e-6  # the classifier's weights, barely moved


def test_segmentation_augmentation_rescales_crops_pads_and_jitters_image_and_mask_together(tmp_path, capsys):
    """--scale-range: image and mask resized by the same factor, then the same window (or the
    same padding: mean colour and the ignore label); --color-jitter changes the image only.
    Draws depend on (seed, epoch, index) alone; held-out images are never augmented."""
    import torch.nn.functional as F

    from visionzoo.train.segment import IGNORE, SegFolder, _normalize, _resize, _rgb, read_mask

    data = _seg_folder(tmp_path / "seg", n=6, size=24)
    pairs = sorted(zip(sorted((data / "images").iterdir()), sorted((data / "masks").iterdir())))
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    size = 20

    def item(ds, i, epoch=0):
        ds.epoch = epoch
        return ds[i]

    # factor 2: a 40x40 rescale, of which one 20x20 window (maybe mirrored) is returned
    ds = SegFolder(pairs, size, mean, std, train=True, scale_range=(2.0, 2.0))
    for i in range(len(pairs)):
        x, y = item(ds, i)
        img, lab = _normalize(_resize(_rgb(pairs[i][0]), (40, 40)), mean, std), torch.from_numpy(read_mask(pairs[i][1]).astype("int64"))
        lab = F.interpolate(lab[None, None].float(), size=(40, 40), mode="nearest-exact")[0, 0].long()
        found = [(t, l, f) for f in (False, True) for t in range(21) for l in range(21)
                 if torch.equal((lab.flip(-1) if f else lab)[t : t + size, l : l + size], y)
                 and torch.allclose((img.flip(-1) if f else img)[:, t : t + size, l : l + size], x, atol=1e-6)]
        assert found, i
    # factor 0.5: a 10x10 square placed in a 20x20 field of mean colour (0) and ignored pixels
    ds = SegFolder(pairs, size, mean, std, train=True, scale_range=(0.5, 0.5))
    x, y = item(ds, 0)
    pad = y == IGNORE
    assert int(pad.sum()) == size * size - 100 and (x[:, pad] == 0).all() and (x[:, ~pad] != 0).any()
    # random factors: the draws repeat for the same (epoch, index) and change with the epoch
    ds = SegFolder(pairs, size, mean, std, train=True, scale_range=(0.5, 2.0), color_jitter=0.4)
    a, b, c = item(ds, 3, 1), item(ds, 3, 1), item(ds, 3, 2)
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not torch.equal(a[0], c[0])
    assert a[0].shape == (3, size, size) and a[1].shape == (size, size)
    # colour jitter alone: the mask is the plain one, the image differs from the plain image
    plain = SegFolder(pairs, size, mean, std, train=True)
    jit = SegFolder(pairs, size, mean, std, train=True, color_jitter=0.4)
    (xp, yp), (xj, yj) = item(plain, 2), item(jit, 2)
    assert torch.equal(yp, yj) and (xp - xj).abs().max() > 0.05
    # the jitter is torchvision's brightness, contrast and saturation adjustments, in that order
    from torchvision.transforms.v2 import functional as TF

    from visionzoo.train.segment import color_jitter

    img = torch.rand(3, 17, 23)
    for seed in range(4):
        f = (1 + 0.5 * (2 * torch.rand(3, generator=torch.Generator().manual_seed(seed)) - 1)).tolist()
        ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(img, f[0]), f[1]), f[2])
        torch.testing.assert_close(color_jitter(img, 0.5, torch.Generator().manual_seed(seed)), ref, atol=1e-6, rtol=0)
    # held-out images: no augmentation whatever the settings
    val = SegFolder(pairs, size, mean, std, train=False)
    val_aug = SegFolder(pairs, size, mean, std, train=False, scale_range=(0.5, 2.0), color_jitter=0.4)
    assert all(torch.equal(u, v) for u, v in zip(val[1], val_aug[1]))
    # the options are checked before the run; a classifier is told they are segmentation's
    out = tmp_path / "run"
    seg = ["train", "--task", "segment", "--data", str(data), "--img-size", "16", "--epochs", "1", "--output", str(out)]
    _one_line_error([*seg, "--scale-range", "0", "2"], capsys, "--scale-range takes LO HI with 0 < LO <= HI, got 0 2")
    _one_line_error([*seg, "--scale-range", "2", "1"], capsys, "--scale-range takes LO HI with 0 < LO <= HI, got 2 1")
    _one_line_error([*seg, "--color-jitter", "1.5"], capsys, "--color-jitter must be in [0, 1), got 1.5")
    _one_line_error(["train", "--color-jitter", "0.4"], capsys, "--color-jitter is an option of --task segment")
    assert not out.exists()


class _StopAtCheck:
    """Stands in for engine.StopRequests: a stop is requested at the ``at``-th check (one per step)."""

    at = 7

    def __init__(self) -> None:
        self.checks = 0

    @property
    def requested(self) -> bool:
        self.checks += 1
        return self.checks >= self.at

    def restore(self) -> None:
        pass


def test_segmentation_run_stopped_mid_epoch_resumes_exactly(tmp_path, capsys, monkeypatch):
    """A segmentation run stopped (Ctrl-C) in its second epoch and resumed ends with the weights
    and per-epoch figures of an uninterrupted run; --resume keeps the run's settings."""
    import visionzoo.train.engine as engine

    data = _seg_folder(tmp_path / "seg")
    seg = ["train", "--task", "segment", "--data", str(data), "--img-size", "32", "--epochs", "3", "--batch-size", "2", "--lr", "0.003",
           "--scale-range", "0.75", "1.5", "--color-jitter", "0.3"]  # (augmented: its draws must repeat on resume)
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert main([*seg, "--output", str(ref)]) == 0
    with monkeypatch.context() as m:
        m.setattr(engine, "StopRequests", _StopAtCheck)
        assert main([*seg, "--output", str(cut)]) == 130
    assert "continue with: visionzoo train --task segment" in capsys.readouterr().err
    assert json.loads((cut / "checkpoints" / "latest.json").read_text())["step"] == 7  # 5 steps an epoch: mid-epoch 2
    assert json.loads((cut / "summary.json").read_text())["interrupted"] and not (cut / "model.safetensors").exists()
    assert main(["train", "--task", "segment", "--output", str(cut), "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    a, b = _weights(ref / "model.safetensors"), _weights(cut / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (ref / "metrics.csv").read_text() == (cut / "metrics.csv").read_text()
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (ref, cut))
    assert sa["miou_per_epoch"] == sb["miou_per_epoch"] and sb["epochs"] == 3
    best = _weights(cut / "model_best.safetensors")  # the epoch of the best held-out mIoU
    assert sb["best_miou"] == max(sb["miou_per_epoch"]) and (sb["best_epoch"] < 3 or all(torch.equal(best[k], b[k]) for k in b))
    _one_line_error(["train", "--task", "segment", "--output", str(cut), "--resume", "--lr", "0.5"], capsys,
                    "--lr (0.003 in the run, 0.5 given)")
    _one_line_error(["train", "--task", "segment", "--output", str(cut), "--resume", "--scale-range", "0.5", "2"], capsys,
                    "--scale-range ((0.75, 1.5) in the run, (0.5, 2.0) given)")
    _one_line_error(["train", "--task", "segment", "--output", str(cut), "--resume", "--epochs", "2"], capsys, "already trained 3 epochs")
    _one_line_error(["train", "--output", str(cut), "--resume"], capsys, "holds a segmentation run; resume it with --task segment")
    _one_line_error(["train", "--task", "segment", "--resume"], capsys, "--resume needs --output DIR")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "config.json").write_text(json.dumps({"data": "digits", "epochs": 1}))
    _one_line_error(["train", "--task", "segment", "--output", str(tmp_path / "cls"), "--resume"], capsys, "holds a classification run")
    _one_line_error([*seg, "--output", str(cut)], capsys, "already holds a segmentation run; pass --resume")
    assert main(["train", "--task", "segment", "--output", str(cut), "--resume", "--epochs", "4"]) == 0  # one more epoch
    assert "note: the schedule now spans 4 epochs, so the learning rate goes from" in capsys.readouterr().out
    assert json.loads((cut / "summary.json").read_text())["epochs"] == 4
    # the new length is the run's now: a plain --resume (the command an interrupted run prints)
    # continues to it; it used to be refused as "--epochs 3: already trained 4 epochs"
    assert json.loads((cut / "config.json").read_text())["epochs"] == 4
    assert main(["train", "--task", "segment", "--output", str(cut), "--resume"]) == 0
    assert main([*seg, "--epochs", "1", "--amp", "bf16", "--output", str(tmp_path / "bf16"), "--progress", "none"]) == 0
    s = json.loads((tmp_path / "bf16" / "summary.json").read_text())
    assert s["amp"] == "bf16" and 0 < s["pixel_acc"] <= 1


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_resume_at_the_epochs_trained_ends_only_an_ended_run(tmp_path, capsys, monkeypatch, task):
    """--resume --epochs N on a run stopped part-way into epoch N + 1 is refused (it used to save
    that step's weights beside the figures of epoch N); on a run that has ended at N it says
    there is nothing to do and leaves the outputs as they are (it used to write them again)."""
    import visionzoo.train.engine as engine
    from visionzoo.train.checkpoint import latest_checkpoint, load_training_state

    if task == "segment":
        run = ["train", "--task", "segment", "--data", str(_seg_folder(tmp_path / "seg")), "--img-size", "32", "--batch-size", "2"]
        again = ["train", "--task", "segment"]
    else:
        run = ["train", "--data", str(_image_folder(tmp_path / "colours", n=5)), *TINY, "--img-size", "16", "--batch-size", "4"]
        again = ["train"]
    out = tmp_path / "run"
    again += ["--output", str(out), "--resume", "--progress", "none"]
    with monkeypatch.context() as m:
        m.setattr(engine, "StopRequests", _StopAtCheck)  # a stop after 7 steps: past epoch 1, mid-epoch (3 or 5 steps an epoch)
        assert main([*run, "--epochs", "3", "--output", str(out)]) == 130
    st = load_training_state(latest_checkpoint(out)[1])
    n = st["epoch"]  # epochs trained and evaluated
    assert n >= 1 and st["batch_in_epoch"] > 0, (n, st["batch_in_epoch"])
    capsys.readouterr()
    _one_line_error([*again, "--epochs", str(n)], capsys, f"has trained {n} epochs and is part-way into epoch {n + 1}",
                    f"give --epochs above {n}")
    assert not (out / "model.safetensors").exists()
    assert main([*again, "--epochs", str(n + 1)]) == 0
    written = {f: (out / f).read_bytes() for f in ("model.safetensors", "summary.json", "metrics.csv", "config.json")}
    capsys.readouterr()
    assert main([*again, "--epochs", str(n + 1)]) == 0
    text = capsys.readouterr().out
    assert "is complete" in text and "nothing to do" in text and f"give --epochs above {n + 1}" in text and "resuming" not in text, text
    assert {f: (out / f).read_bytes() for f in written} == written


def test_segmentation_torchrun_world_size_2(tmp_path):
    """Two processes train one segmentation network; the held-out figures they report together
    are those of the saved weights (each rank evaluates its shard with rank 0's BatchNorm
    statistics averaged over the ranks; without that, rank 1 used its own and the reported
    mIoU was 0.374 where the saved weights score 0.365)."""
    from torch.utils.data import DataLoader

    from visionzoo.train.segment import SegFolder, evaluate_segmentation, load_segmentation, split_pairs

    data, out = _seg_folder(tmp_path / "seg"), tmp_path / "ddp"
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "visionzoo",
         "train", "--task", "segment", "--data", str(data), "--img-size", "32", "--epochs", "3", "--batch-size", "2",
         "--lr", "0.003", "--output", str(out)],
        env=child_env(), capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["epochs"] == 3
    assert r.stdout.count("epoch 3/3") == 1 and r.stdout.count("world size 2") == 1  # rank 0 alone prints
    net, meta = load_segmentation(out / "model.safetensors")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the FPN head's: what the ranks average
    p = meta["preprocessing"]
    ds = SegFolder(split_pairs(data)[1], p["img_size"], p["mean"], p["std"], train=False)
    ev = evaluate_segmentation(net, DataLoader(ds, batch_size=3), meta["num_classes"], torch.device("cpu"))
    assert ev["miou"] == pytest.approx(s["miou"], abs=1e-9) and ev["pixel_acc"] == pytest.approx(s["pixel_acc"], abs=1e-9)


@pytest.mark.slow
def test_default_run_reaches_99_percent_on_digits(tmp_path):
    """`visionzoo train` without arguments: >= 99 % held-out top-1 on digits (about a minute on 2 CPU cores)."""
    r = subprocess.run([sys.executable, "-m", "visionzoo", "train", "--output", str(tmp_path / "default")],
                       env=dict(child_env(), OMP_NUM_THREADS="2"), capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "default" / "summary.json").read_text())
    assert s["data"] == "digits" and s["epochs"] == 10 and s["top1"] >= 0.99, s


def test_16_bit_grayscale_png_is_scaled_to_8_bits(tmp_path):
    """PIL's convert("RGB") clips 16-bit values above 255 to white; load_image scales them."""
    import numpy as np
    from PIL import Image

    from visionzoo.train.data import load_image

    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)  # 0 .. 64491
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    assert Image.open(tmp_path / "ramp16.png").mode.startswith("I")
    out = np.asarray(load_image(tmp_path / "ramp16.png"))
    assert out.dtype == np.uint8 and out.shape == (48, 64)
    assert np.abs(out.astype(np.int64) - np.rint(ramp / 257.0)).max() == 0


def test_float_and_wide_integer_images_are_refused_by_name(tmp_path):
    """PIL's convert("RGB") clips a 32-bit float image (0-1 read black) and a 32-bit integer one
    beyond 255: such files are refused in one line naming them; 32-bit integers within 16 bits
    are read as 16-bit."""
    import numpy as np
    from PIL import Image

    from visionzoo.train.data import DataError, load_image

    ramp = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    Image.fromarray(ramp).save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    with pytest.raises(DataError, match=r"float\.tif: an image of 32-bit floats"):
        load_image(tmp_path / "float.tif")
    wide = (ramp * 200000).astype(np.int32)
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    assert Image.open(tmp_path / "wide.tif").mode == "I"
    with pytest.raises(DataError, match=r"wide\.tif: .* values 0 to 200000, outside 16 bits"):
        load_image(tmp_path / "wide.tif")
    within = (ramp * 65535).astype(np.int32)
    Image.fromarray(within).save(tmp_path / "within.tif")
    out = np.asarray(load_image(tmp_path / "within.tif"))
    assert np.abs(out.astype(np.int64) - np.rint(within / 257.0)).max() == 0


@pytest.mark.parametrize("orientation, quarter_turns", [(6, -1), (8, 1), (3, 2)])
def test_images_are_read_upright(tmp_path, orientation, quarter_turns):
    """A photo stored on its side with an EXIF orientation (6: turn it 90 degrees clockwise to
    view, 8: anticlockwise, 3: half a turn; the EXIF 2.3 table) is read as a viewer shows it,
    in training, eval and predict; it used to be read on its side. Segmentation's images keep
    their stored pixels, which their masks label."""
    import numpy as np
    from PIL import Image

    from visionzoo.train.data import load_image
    from visionzoo.train.segment import image_input

    a = (torch.rand(6, 10, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(tmp_path / "photo.png", exif=exif)
    assert np.array_equal(np.asarray(load_image(tmp_path / "photo.png")), np.rot90(a, quarter_turns))
    assert np.array_equal(np.asarray(load_image(tmp_path / "photo.png", upright=False)), a)
    assert image_input(tmp_path / "photo.png", 8, (0.5,) * 3, (0.5,) * 3)[1] == (6, 10)


@pytest.mark.parametrize("name, n_aux, size", [("googlenet", 2, 96), ("inception_v3", 1, 299)])
def test_auxiliary_classifiers_add_their_weighted_loss(name, n_aux, size):
    """Inception's auxiliary logits are auxiliary losses (GoogLeNet 0.3 each, v3 0.4), not DeiT's
    distillation head: they used to be averaged with the logits as a second head (v3) or to
    stop training with an unpacking error (GoogLeNet's two)."""
    from visionzoo.train.engine import TrainConfig, _loss

    torch.manual_seed(0)
    model = visionzoo.create_model(name, num_classes=3, aux_logits=True).train()
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 2])
    out = model(x)
    assert isinstance(out, tuple) and len(out) == n_aux + 1 == len(model.aux_loss_weights) + 1
    cfg = TrainConfig(label_smoothing=0.0)
    loss, logits = _loss(out, y, x, None, cfg, False, model.aux_loss_weights)
    ce = torch.nn.functional.cross_entropy
    expected = ce(out[0], y) + sum(w * ce(a, y) for w, a in zip(model.aux_loss_weights, out[1:]))
    torch.testing.assert_close(loss, expected)
    assert logits is out[0]
    with pytest.raises(ValueError, match="auxiliary logits"):
        _loss(out, y, x, None, cfg, False, ())


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    """Batches of 32 summed in pairs train the same weights as batches of 64 (a model without
    BatchNorm, the same images in the same order); the schedule counts optimizer steps."""
    from visionzoo.train import TrainConfig, train

    vit = {"depth": 1, "embed_dim": 16, "num_heads": 2, "patch_size": 4}
    runs = {}
    for batch, accum in ((64, 1), (32, 2), (16, 4)):
        out = tmp_path / f"b{batch}"
        summary = train(TrainConfig(model="vit_tiny_patch16_224", model_args=vit, img_size=8, epochs=1, batch_size=batch,
                                    grad_accum_steps=accum, lr=3e-3, progress="lines", output=str(out)))
        assert summary["grad_accum_steps"] == accum
        with open(out / "metrics.csv") as f:
            row = {k: float(v) for k, v in list(csv.DictReader(f))[-1].items()}
        runs[batch] = (_weights(out / "model.safetensors"), row)
    ref, ref_row = runs[64]
    weights, row = runs[32]
    assert row["step"] == ref_row["step"] == 22  # 1438 training digits: 22 steps of 64 (the last 30 dropped)
    assert row["lr"] == pytest.approx(ref_row["lr"])
    for k, v in ref.items():
        if k.endswith("qkv.bias"):  # the key bias shifts every logit of a softmax row alike: its gradient is
            # 0 but for rounding, which AdamW scales up to steps of --lr whose signs depend on the kernels
            # (1.2e-5 apart on one host): the query and value biases only
            d = vit["embed_dim"]
            v, weights[k] = (torch.cat([t[:d], t[2 * d :]]) for t in (v, weights[k]))
        torch.testing.assert_close(weights[k], v, rtol=1e-4, atol=1e-5)
    # 89 batches of 16 in groups of 4: 22 steps and a last one of a single batch
    assert runs[16][1]["step"] == 23 and runs[16][1]["lr"] == pytest.approx(ref_row["lr"])
    moved = max(float((runs[64][0][k] - w).abs().max()) for k, w in visionzoo.create_model(
        "vit_tiny_patch16_224", num_classes=10, in_chans=1, img_size=8, **vit).state_dict().items() if k in ref)
    assert moved > 1e-3  # (the weights did train)


def test_top5_is_shown_with_more_than_5_classes_in_the_text_and_the_curves():
    """One rule (shows_top5) for the printed figures and curves.png's panels: with 5 classes
    top-5 is 1 whatever the network, so neither shows it; with 6 both do."""
    from visionzoo.train.engine import _curves, accuracy_text

    assert accuracy_text(0.5, 1.0, 5) == "top-1 0.5000"
    assert accuracy_text(0.5, 0.75, 6, sep=", ") == "top-1 0.5000, top-5 0.7500"
    plotted = lambda n: [c[0] for _, cols in _curves(n) for c in cols]  # noqa: E731
    assert "val_top5" not in plotted(5) and "val_top5" in plotted(6)


def test_the_command_lines_plural_helper_is_the_librarys():
    from visionzoo import base, cli

    assert cli.count is base.count  # (training's notes use it; engine may not import the command line)
    assert [base.count(n, "step") for n in (0, 1, 2)] == ["0 steps", "1 step", "2 steps"]

def test_schedule_notes_for_a_capped_warmup_and_a_longer_resume(tmp_path, capsys):
    from visionzoo.train import TrainConfig, train

    vit = {"depth": 1, "embed_dim": 16, "num_heads": 2, "patch_size": 4}
    cfg = dict(model="vit_tiny_patch16_224", model_args=vit, img_size=8, batch_size=128, progress="lines", output=str(tmp_path / "r"))
    train(TrainConfig(epochs=1, warmup_epochs=5, **cfg))
    assert "--warmup-epochs 5 is more than half of the run; warming up over its first half (5 steps)" in capsys.readouterr().out
    train(TrainConfig(epochs=2, resume=True, **cfg))  # the cosine is rebuilt over 2 epochs: the lr rises again
    assert "the schedule now spans 2 epochs, so the learning rate goes from 0.0001 to" in capsys.readouterr().out
    one_step = {**cfg, "batch_size": 1024, "output": str(tmp_path / "one")}  # 1438 digits: one step (the rest dropped)
    train(TrainConfig(epochs=1, warmup_epochs=1, **one_step))
    assert "more than half of the run; no warm-up in a run of 1 step\n" in capsys.readouterr().out  # (not "over its first half (0 steps)")


def test_a_longer_resume_steps_at_the_new_schedules_rates_from_its_first_step(tmp_path):
    """A 1-epoch run resumed to 2 epochs takes each step, its first included, at the rate of a
    2-epoch run (the warm-up + cosine rebuilt over the new length); its first step used to
    take the old schedule's last rate (0.0001: --min-lr-ratio x --lr) instead of the new one's 0.01."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from visionzoo.train import TrainConfig, train

    vit = {"depth": 1, "embed_dim": 16, "num_heads": 2, "patch_size": 4}
    cfg = dict(model="vit_tiny_patch16_224", model_args=vit, img_size=8, batch_size=128, progress="none")
    rates: list[float] = []
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: rates.append(opt.param_groups[0]["lr"]))
    try:
        train(TrainConfig(epochs=2, output=str(tmp_path / "ref"), **cfg))
        ref, rates[:] = list(rates), []
        train(TrainConfig(epochs=1, output=str(tmp_path / "r"), **cfg))
        rates.clear()
        train(TrainConfig(epochs=2, resume=True, output=str(tmp_path / "r"), **cfg))
    finally:
        hook.remove()
    assert len(ref) == 22 and len(rates) == 11  # 11 steps of 128 an epoch
    assert rates == ref[11:]


def test_layer_decay_scales_each_depth_groups_learning_rate(tmp_path, capsys):
    """--layer-decay 0.5 on a 2-block ViT: four depth groups (stem, two blocks, head), each
    stepping at 0.5 ** (3 - id) times the head's rate through the whole schedule; the
    checkpointed optimizer holds them, and a resumed run keeps them."""
    from visionzoo.train import TrainConfig, train
    from visionzoo.train.checkpoint import latest_checkpoint, load_training_state

    vit = {"depth": 2, "embed_dim": 16, "num_heads": 2, "patch_size": 4}
    cfg = dict(model="vit_tiny_patch16_224", model_args=vit, img_size=8, batch_size=128, lr=1e-3, layer_decay=0.5,
               progress="lines", output=str(tmp_path / "r"))
    train(TrainConfig(epochs=1, **cfg))
    assert "layer-wise lr decay 0.5: 4 depth groups, lr x 0.125 (stem) to x 1 (head)" in capsys.readouterr().out
    for epochs in (1, 2):
        if epochs == 2:
            train(TrainConfig(epochs=2, resume=True, **cfg))
        groups = load_training_state(latest_checkpoint(tmp_path / "r")[1])["optimizer"]["param_groups"]
        top = max(g["lr"] for g in groups)
        assert sorted({g["layer_id"] for g in groups}) == [0, 1, 2, 3]
        for g in groups:
            assert g["lr"] == pytest.approx(top * 0.5 ** (3 - g["layer_id"]))
            assert g["weight_decay"] in (0.0, 0.05)
    with open(tmp_path / "r" / "metrics.csv") as f:
        assert float(list(csv.DictReader(f))[-1]["lr"]) == pytest.approx(top)  # the head's rate is the one logged


def test_all_finite_reads_every_parameter():
    """The check before each save (one device read for all parameters) finds a NaN or Inf in any of them."""
    from visionzoo.train.engine import all_finite

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    assert all_finite(net) and all_finite(torch.nn.ReLU())
    for p, bad in zip(net.parameters(), (float("nan"), float("inf"), float("-inf"), float("nan"), float("nan"), float("inf"))):
        with torch.no_grad():
            old = p.view(-1)[-1].item()
            p.view(-1)[-1] = bad
            assert not all_finite(net)
            p.view(-1)[-1] = old
    assert all_finite(net)


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts the reads of a tensor's values by the host (each waits for a GPU to finish the work
    queued so far), by the function of engine.py or segment.py that made them."""

    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
             torch.Tensor.__index__, torch.Tensor.cpu, torch.Tensor.numpy}

    def __init__(self):
        super().__init__()
        self.by_function: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            frame = sys._getframe(1)  # the caller, past the dispatch (not torch's optimizers: their step counts live on the host)
            while frame is not None and frame.f_code.co_filename.endswith((f"torch{os.sep}overrides.py", f"torch{os.sep}_tensor.py")):
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.endswith((f"train{os.sep}engine.py", f"train{os.sep}segment.py")):
                name = frame.f_code.co_name
                self.by_function[name] = self.by_function.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("task", ["classify", "segment"])
def test_a_training_step_reads_the_device_once(tmp_path, capsys, task):
    """Every .item() waits for a GPU to finish the step, which keeps the host from queueing the
    next: the loss's NaN check, its value and the accuracy are read together, once a step (the
    NaN and stop flags reduced over the ranks on the device under torchrun). Three reads a step
    (two for segmentation) before."""
    if task == "classify":
        args = ["train", *TINY, "--data", str(_image_folder(tmp_path / "data", n=10)), "--batch-size", "4", "--epochs", "1"]
    else:
        args = ["train", "--task", "segment", "--data", str(_seg_folder(tmp_path / "seg")), "--model", "resnet18", "--img-size", "32",
                "--epochs", "1", "--batch-size", "2"]
    reads = _HostReads()
    with reads:
        assert main([*args, "--output", str(tmp_path / "run")]) == 0
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        steps = int(list(csv.DictReader(f))[-1]["step"])
    per_step = reads.by_function.get("read_step", 0) + reads.by_function.get("_train", 0) + reads.by_function.get("train_segmentation", 0)
    assert steps > 4 and per_step <= steps + 2, (steps, reads.by_function)


def test_segmentation_evaluation_reads_the_device_once_and_counts_labelled_pixels_only():
    """The held-out loss, the confusion matrix over labelled pixels (255 ignored) and the pixel
    count are those of a per-batch computation, with the sums read from the device at the end,
    not per batch (boolean indexing and bincount each read a GPU as well)."""
    from torch.utils.data import DataLoader, TensorDataset

    from visionzoo.train.segment import IGNORE, evaluate_segmentation, seg_metrics

    g = torch.Generator().manual_seed(0)
    C, n = 4, 11
    x = torch.randn(n, 3, 6, 5, generator=g)
    y = torch.randint(0, C, (n, 6, 5), generator=g)
    y[torch.rand(n, 6, 5, generator=g) < 0.3] = IGNORE
    net = torch.nn.Conv2d(3, C, 1)
    reads = _HostReads()
    with reads:
        ev = evaluate_segmentation(net, DataLoader(TensorDataset(x, y), batch_size=3), C, torch.device("cpu"))
    assert reads.by_function.get("evaluate_segmentation", 0) <= 4, reads.by_function
    with torch.no_grad():
        out = net(x)
    keep = y != IGNORE
    conf = torch.bincount(y[keep] * C + out.argmax(1)[keep], minlength=C * C).view(C, C)
    loss = torch.nn.functional.cross_entropy(out, y, ignore_index=IGNORE, reduction="sum") / keep.sum()
    assert ev["loss"] == pytest.approx(float(loss), rel=1e-5)
    for key, value in seg_metrics(conf).items():
        assert ev[key] == pytest.approx(value, nan_ok=True), key
