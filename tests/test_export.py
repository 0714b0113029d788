"""ONNX (verified with onnxruntime at another batch size) and torch.export, for every family."""

import subprocess
import sys
import warnings

import pytest
import torch

import visionzoo
from visionzoo.export import export_onnx, export_program, verify_onnx
from visionzoo.testing import calibrate_batch_norms

from checkpoint_layouts import openai_clip_layout
from family_models import shallow_options, small_side, smallest_per_family

FAMILIES = smallest_per_family()


def _calibrated(family: str) -> tuple[torch.nn.Module, int]:
    """The family's smallest model with 10 classes, in eval mode, its BatchNorm statistics those
    of a random batch, and the side it is tested at. Freshly initialised, a deep network's signal
    fades (Inception v3 / v4, GoogLeNet, ConvMixer gave the same logits for every input, to 1e-7
    to 5e-5 of their scale), and an export that broke the backbone would still pass. Stage
    tables at 2 blocks a stage, plain networks at 2 blocks (:func:`family_models.shallow_options`,
    compact: the same operators, a smaller graph to trace and compare)."""
    torch.manual_seed(0)
    model = visionzoo.create_model(FAMILIES[family], num_classes=10, **shallow_options(FAMILIES[family], compact=True))
    side = small_side(model)
    x = torch.randn(4, model.in_chans, side, side, generator=torch.Generator().manual_seed(1))
    return calibrate_batch_norms(model, x), side


def _tolerance(model: torch.nn.Module, x: torch.Tensor) -> float:
    """What an exported copy may differ by, relative to the largest output: 1e-4, or 4x the
    network's own fp32 rounding where that is larger (calibrated Inception v4: 4e-4 between its
    fast and plain CPU paths). Asserts first that the outputs move with the input (>= 5 % of
    their scale), so that a comparison can find a broken backbone."""
    with torch.no_grad():
        y = model(x)
    plain = model(x).detach()  # autograd on: the inference fast paths stand aside
    assert (y - y.mean(0)).abs().max() > 0.05 * y.abs().max()
    return max(1e-4, 4 * float((y - plain).abs().max() / y.abs().max()))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_onnx_export_dynamic_batch(family, tmp_path):
    """The file agrees with the model at another batch (verify_onnx: relative to the largest output).
    Without the exporter's graph optimizer (10-25 % of the time; the other tests of this file run it)."""
    pytest.importorskip("onnxruntime")
    model, S = _calibrated(family)
    tol = _tolerance(model, torch.randn(3, 3, S, S, generator=torch.Generator().manual_seed(2)))
    path = export_onnx(model, tmp_path / f"{FAMILIES[family]}.onnx", img_size=S, batch=2, optimize=False)
    assert verify_onnx(model, path, img_size=S, batch=3) < tol


@pytest.mark.parametrize("pos_embed", ["relative", "relative_2d"])
def test_relative_position_vits_export(pos_embed, tmp_path):
    """The ViT paper's relative position embeddings failed in the ONNX exporter's decomposition
    (SDPA with the query-made bias recorded in a layout it does not give: 'Cannot view a tensor')."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = visionzoo.create_model("vit_tiny_patch16_224", depth=1, pos_embed=pos_embed, img_size=48, num_classes=5).eval()
    path = export_onnx(model, tmp_path / "rel.onnx", optimize=False)
    assert verify_onnx(model, path) < 1e-4
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(export_program(model).module()(x), model(x), rtol=1e-4, atol=1e-5)


def test_exports_leave_the_models_modes_as_they_were(tmp_path):
    """export_onnx and export_program left a model in training in eval mode (dropout off,
    BatchNorm statistics frozen in the training loop that exported it); every module's mode
    comes back, a frozen BatchNorm's eval included."""
    pytest.importorskip("onnxruntime")
    model = visionzoo.create_model("resnet18", num_classes=3).train()
    model.bn1.eval()
    modes = {n: m.training for n, m in model.named_modules()}
    path = export_onnx(model, tmp_path / "r18.onnx", img_size=32, optimize=False)
    assert {n: m.training for n, m in model.named_modules()} == modes
    verify_onnx(model, path, img_size=32)
    export_program(model, img_size=32)
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_onnx_check_is_relative_to_the_outputs_scale(tmp_path):
    """A model whose logits are ~1e-5 (a small classifier init) exported, then changed: every
    output of the file is wrong by about its own size, which an absolute 1e-3 bound passed."""
    pytest.importorskip("onnxruntime")
    model = visionzoo.create_model("resnet18", num_classes=10).eval()
    with torch.no_grad():
        model.fc.weight.mul_(1e-4)
        model.fc.bias.zero_()
    path = export_onnx(model, tmp_path / "r18.onnx", img_size=32)
    assert verify_onnx(model, path, img_size=32) < 1e-4
    with torch.no_grad():
        model.fc.weight.mul_(2.0)  # the PyTorch outputs double; the file's stay
    diff = verify_onnx(model, path, img_size=32)
    assert 0.3 < diff < 0.7, diff  # half the largest output

def test_onnx_of_a_features_only_model_checks_every_map(tmp_path):
    """A features_only model's file has one output per map, named features.0, ...; the check
    compares each (it unpacked a single output: "too many values to unpack"), so a change in
    the last map's layers alone is found."""
    ort = pytest.importorskip("onnxruntime")
    model = visionzoo.create_model("resnet18", features_only=True).eval()
    path = export_onnx(model, tmp_path / "r18.onnx", img_size=32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == [f"features.{i}" for i in range(5)]
    assert verify_onnx(model, path, img_size=32) < 1e-4
    with torch.no_grad():
        model.layer4[-1].bn2.bias.add_(1.0)  # only the last map changes
    assert verify_onnx(model, path, img_size=32) > 0.1


def test_onnx_external_weights_are_named_after_the_file(tmp_path):
    """Weights in a second file (ONNX's 2 GB limit; forced here) lie beside the model as
    ``<name>.onnx.data``, which the model reads; they used to keep the temporary name."""
    pytest.importorskip("onnxruntime")
    from visionzoo.export import onnx_files

    model = visionzoo.create_model("resnet18", num_classes=10).eval()
    path = export_onnx(model, tmp_path / "r18.onnx", img_size=32, external_data=True)
    assert onnx_files(path) == [path, tmp_path / "r18.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r18.onnx", "r18.onnx.data"]  # nothing temporary left
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in onnx_files(path):
        f.rename(moved / f.name)
    assert verify_onnx(model, moved / "r18.onnx", img_size=32) < 1e-4
    # exported again at the same path without external weights: the stale weights file goes
    export_onnx(model, moved / "r18.onnx", img_size=32)
    assert onnx_files(moved / "r18.onnx") == [moved / "r18.onnx"]


def test_a_failed_export_leaves_nothing_and_says_why(tmp_path):
    """An input size the model refuses is the model's one-line error, not the exporter's trace,
    and leaves no folder behind; folders a successful export needs are made at the end."""
    from visionzoo.base import InputError

    vit = visionzoo.create_model("vit_tiny_patch16_224", num_classes=3)
    with pytest.raises(InputError, match="divisible by 16"):
        export_onnx(vit, tmp_path / "new" / "sub" / "vit.onnx", img_size=100)
    assert list(tmp_path.iterdir()) == []
    pytest.importorskip("onnxruntime")
    path = export_onnx(vit, tmp_path / "new" / "sub" / "vit.onnx", img_size=32)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["new", "sub", "vit.onnx"]  # nothing temporary left
    assert verify_onnx(vit, path, img_size=32) < 1e-4


def test_an_unwritable_folder_is_named_as_asked(tmp_path, monkeypatch):
    """A folder the exporter cannot write in (read-only, no permission; simulated, as root writes
    anywhere) said "[Errno 30] Read-only file system: 'out/.vit.onnx.ge4407nr'", naming a
    temporary folder the user never asked for; the message names the path given."""
    import errno
    import tempfile

    def refuse(prefix, dir):
        raise OSError(errno.EROFS, "Read-only file system", f"{dir}/{prefix}ge4407nr")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    model = visionzoo.create_model("resnet18", num_classes=3)
    path = tmp_path / "out" / "r18.onnx"
    with pytest.raises(OSError, match=rf"^\[Errno {errno.EROFS}\] cannot write {path}: Read-only file system$"):
        export_onnx(model, path, img_size=32)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_torch_export_dynamic_batch(family):
    """Exported under no_grad, as deployment code often is (with autograd on, the inference paths
    stand aside anyway): there the CPU inference paths entered the trace, and 9 of 22 families
    failed ("Constraints violated (batch)": a block size chosen from the token count is a guard
    on the batch; CoAtNet and DINOv3 read a fake tensor's data)."""
    model, S = _calibrated(family)
    with torch.no_grad():
        program = export_program(model, S, batch=2)
    x = torch.randn(3, 3, S, S)
    tol = _tolerance(model, x)
    with torch.no_grad():
        expect = model(x)
        assert (program.module()(x) - expect).abs().max() <= tol * expect.abs().max()


def test_a_batch_the_exporters_cannot_trace_is_refused_by_name():
    """export_program traced on batch 1 failed in torch.export ("Constraints violated (batch)!":
    it fixes a traced size of 1), batch 0 the same way and -1 inside torch.randn."""
    model = visionzoo.create_model("resnet18", num_classes=3)
    for batch in (1, 0, -1, 2.0):
        with pytest.raises(ValueError, match=rf"^batch must be an int >= 2 .*, got {batch}$"):
            export_program(model, 32, batch=batch)
    for fn in (lambda b: export_onnx(model, "unused.onnx", img_size=32, batch=b), lambda b: verify_onnx(model, "unused.onnx", img_size=32, batch=b)):
        with pytest.raises(ValueError, match=r"^batch must be an int >= 1, got 0$"):
            fn(0)


@pytest.mark.parametrize("name, kwargs", [
    ("swin_tiny_patch4_window7_224", dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))),
    ("vit_tiny_patch16_224", dict(depth=2)),
])
def test_features_only_models_export_with_a_dynamic_batch(name, kwargs):
    """The feature maps of the token families are made NCHW by ``to_contiguous``, whose size
    test (maps under 2**20 values) ran before its eager-only test: under torch.export the
    size of a symbolic batch became a guard and the export failed ("Expected op to be '==',
    got < for batch < 128/3")."""
    model = visionzoo.create_model(name, features_only=True, img_size=64, **kwargs).eval()
    program = export_program(model, 64, batch=2)
    for b in (1, 3):
        x = torch.randn(b, 3, 64, 64)
        with torch.no_grad():
            got, ref = program.module()(x), model(x)
        assert len(got) == len(ref) == len(model.feature_info)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backbone, head, in_chans", [("resnet18", "fpn", 1), ("hrnet_w18_small", "hrnetv2", 4)])
def test_segmentation_models_of_any_channel_count_export(backbone, head, in_chans, tmp_path):
    """The segmentation wrappers give their backbone's in_chans to the exporters, which traced
    them on 3 channels (InputError: resnet18 expects 1 input channels, got 3). One count other
    than 3 per head: each export of the HRNet model takes ~15 s."""
    from visionzoo.tasks import create_segmentation_model

    torch.manual_seed(0)
    model = create_segmentation_model(backbone, 3, head=head, in_chans=in_chans).eval()
    assert model.in_chans == in_chans
    x = torch.randn(3, in_chans, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(export_program(model, 64).module()(x), model(x), rtol=1e-4, atol=1e-4)
    pytest.importorskip("onnxruntime")
    path = export_onnx(model, tmp_path / "seg.onnx", img_size=64)
    assert verify_onnx(model, path, img_size=64) < 1e-4


def test_export_takes_the_channel_count_of_a_model_without_one(tmp_path):
    """A module with no in_chans attribute is traced on in_chans channels when given (3 when not)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(3, 2, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(export_program(model, 20, in_chans=2).module()(x), model(x))
    with pytest.raises(RuntimeError, match="expected input.* to have 2 channels"):
        export_program(model, 20)
    pytest.importorskip("onnxruntime")
    path = export_onnx(model, tmp_path / "conv.onnx", img_size=20, in_chans=2)
    assert verify_onnx(model, path, img_size=20, in_chans=2) < 1e-4


def test_export_cli(tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "vit.onnx"
    r = subprocess.run(
        [sys.executable, "-m", "visionzoo", "export", "vit_tiny_patch16_224", "--img-size", "32", "--output", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert out.exists() and "(ok)" in r.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "visionzoo", "export", "vit_tiny_patch16_224", "--output", str(tmp_path / "x.onnx"), "--checkpoint", str(tmp_path / "none.pth")],
        capture_output=True, text=True, timeout=600,
    )
    assert bad.returncode == 2 and "checkpoint file not found" in bad.stderr and "Traceback" not in bad.stderr


def test_export_cli_builds_the_checkpoints_classifier(tmp_path, capsys):
    """A foreign checkpoint with 10 classes exports with its 10-class head (not a fresh
    1000-class one); what the exporter cannot write is refused with one line."""
    ort = pytest.importorskip("onnxruntime")
    from visionzoo.cli import main

    torch.manual_seed(0)
    model = visionzoo.create_model("resnet18", num_classes=10).eval()
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    out = tmp_path / "r18.onnx"
    assert main(["export", "resnet18", "--checkpoint", str(tmp_path / "r18.pth"), "--img-size", "64", "--output", str(out)]) == 0
    x = torch.randn(2, 3, 64, 64)
    (y,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=1e-4, atol=1e-4)
    # --no-optimize: the exporter's graph as traced (more nodes: no constant folding), still checked
    raw = tmp_path / "r18_raw.onnx"
    assert main(["export", "resnet18", "--checkpoint", str(tmp_path / "r18.pth"), "--img-size", "64", "--output", str(raw), "--no-optimize"]) == 0
    assert "(ok)" in capsys.readouterr().out
    onnx = pytest.importorskip("onnx")
    assert len(onnx.load(str(raw)).graph.node) > len(onnx.load(str(out)).graph.node)
    (tmp_path / "dir.onnx").mkdir()
    for args, message in [
        (["--checkpoint", str(tmp_path / "r18.pth"), "--num-classes", "5"], "does not have 5 outputs"),
        (["--opset", "13"], "between 18 and 23"),  # torch.onnx failed to convert and wrote opset 18
    ]:
        assert main(["export", "resnet18", *args, "--output", str(tmp_path / "x.onnx")]) == 2
        assert message in capsys.readouterr().err
    assert main(["export", "resnet18", "--output", str(tmp_path / "dir.onnx")]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")  # (PyTorch deprecates it for torch.export; still widely used)
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_jit_trace_passes_its_own_check_and_equals_eager(family, grad):
    """``torch.jit.trace(model.eval(), x)`` as users call it: the trace checks itself by
    tracing again under no_grad, so a path chosen by grad mode or a cache filled during the
    first trace failed that check ("Graphs differed across invocations"). The traced module
    computes the model's logits, also for another batch of another batch size."""
    model, S = _calibrated(family)
    x = torch.randn(2, 3, S, S)
    with torch.set_grad_enabled(grad), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, x)  # check_trace=True: raises TracingCheckError on a mismatch
    # the input checks read sizes as Python values: no TracerWarning from them
    assert not [w for w in seen if issubclass(w.category, torch.jit.TracerWarning) and w.filename.endswith("visionzoo/base.py")]
    x3 = torch.randn(3, 3, S, S)
    tol = _tolerance(model, x3)
    with torch.no_grad():
        expect = model(x3)
        got = traced(x3)
    assert (got - expect).abs().max() <= tol * expect.abs().max()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fx_symbolic_trace_is_refused_naming_what_works(family):
    """torch.fx.symbolic_trace (torchvision's create_feature_extractor) cannot follow the
    networks' shape-dependent Python; it gets one InputError naming the ways that work, not
    'expects a torch.Tensor, got Proxy' or a TraceError from deep inside."""
    from torchvision.models.feature_extraction import create_feature_extractor

    model = visionzoo.create_model(FAMILIES[family], num_classes=10).eval()
    with pytest.raises(visionzoo.InputError, match="torch.fx.symbolic_trace.*features_only.*torch.jit.trace"):
        torch.fx.symbolic_trace(model)
    with pytest.raises(visionzoo.InputError, match="create_feature_extractor"):
        create_feature_extractor(model, return_nodes=["head"])


def test_a_plain_state_dict_is_rebuilt_with_its_channel_count(tmp_path):
    """load_trained (export, eval, predict) rebuilt a 1-channel state dict without visionzoo's
    metadata as a 3-channel network; now its channels, and one mean and std per channel."""
    from visionzoo.train.inference import load_trained

    torch.manual_seed(0)
    model = visionzoo.create_model("resnet18", num_classes=10, in_chans=1).eval()
    torch.save(model.state_dict(), tmp_path / "gray.pth")
    loaded, info = load_trained(tmp_path / "gray.pth", "resnet18", img_size=32)
    assert loaded.in_chans == info["preprocessing"]["in_chans"] == 1
    assert info["preprocessing"]["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.slow
def test_export_cli_keeps_a_plain_state_dicts_channel_count(tmp_path, capsys):
    """A plain 1-channel state dict (no visionzoo metadata) was rebuilt as a 3-channel model, its
    stem adapted to RGB: the file took (batch, 3, H, W) images, which the user's model does not.
    The channel count is now read from the checkpoint's first convolution, as the classes are
    from its classifier."""
    ort = pytest.importorskip("onnxruntime")
    from visionzoo.cli import main

    torch.manual_seed(0)
    model = visionzoo.create_model("resnet18", num_classes=10, in_chans=1).eval()
    torch.save(model.state_dict(), tmp_path / "gray.pth")
    out = tmp_path / "gray.onnx"
    assert main(["export", "resnet18", "--checkpoint", str(tmp_path / "gray.pth"), "--img-size", "32", "--output", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 1, 32, 32]
    x = torch.randn(2, 1, 32, 32)
    (y,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), model(x), rtol=1e-4, atol=1e-4)


def test_a_backbone_checkpoint_without_classifier_exports_its_features(tmp_path):
    """A foreign checkpoint with no classifier (the DINOv2 authors' layout: mask_token, register
    tokens, a class row in the position table) builds the variant's default head, none for
    DINOv2, as timm does: the model gives pooled features, not 1000 untrained logits."""
    from visionzoo.train.inference import load_trained

    torch.manual_seed(0)
    src = visionzoo.create_model("vit_small_patch14_reg4_dinov2", img_size=56)
    sd = src.state_dict()
    sd["mask_token"] = torch.zeros(1, 384)
    sd["register_tokens"] = sd.pop("reg_token")
    sd["pos_embed"] = torch.cat([torch.zeros(1, 1, 384), sd["pos_embed"]], 1)
    torch.save(sd, tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    model, info = load_trained(tmp_path / "dinov2_vits14_reg4_pretrain.pth", "vit_small_patch14_reg4_dinov2", img_size=56)
    assert info["num_classes"] == model.num_classes == 0
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src.eval()(x))


def test_a_foreign_checkpoint_s_classifier_is_read_in_the_model_s_layout(tmp_path):
    """OpenAI CLIP's layout names its projection visual.proj (D, E), not head.weight: the class
    count comes from the checkpoint converted as loading converts it (E = 24 here), where it was
    the variant's default (512) and the load then refused the file."""
    from visionzoo.train.inference import load_trained

    torch.manual_seed(0)
    src = visionzoo.create_model("vit_xsmall_patch16_clip_224", img_size=64, num_classes=24).eval()
    with torch.no_grad():
        src.head.bias.zero_()
    official = openai_clip_layout({k: v.detach() for k, v in src.state_dict().items()})
    torch.save(official, tmp_path / "clip.pt")
    model, info = load_trained(tmp_path / "clip.pt", "vit_xsmall_patch16_clip_224", img_size=64)
    assert info["num_classes"] == model.num_classes == 24
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))
