"""load_checkpoint: formats, conversion, adaptation, all-or-nothing loading, safety."""

import os
import pickle
import warnings

import pytest
import timm
import torch

import visionzoo
from visionzoo import CheckpointError, load_checkpoint, save_state_dict
from visionzoo.checkpoints.io import unwrap_state_dict
from visionzoo.testing import build_random, max_rel_diff

NAME = "vit_tiny_patch16_224"


def tiny(**kw):
    kw.setdefault("img_size", 32)
    kw.setdefault("num_classes", 5)
    return visionzoo.create_model(NAME, **kw).eval()


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items()), "the model was modified"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_round_trip(tmp_path, suffix):
    src = tiny()
    path = save_state_dict(src.state_dict(), tmp_path / f"w{suffix}")
    assert [p.name for p in tmp_path.iterdir()] == [f"w{suffix}"]  # no temp file left behind
    dst = tiny()
    info = load_checkpoint(dst, path)
    assert info["source"] == ["visionzoo"]
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x))


def test_written_files_have_the_modes_open_gives(tmp_path):
    """Atomic writes go through a temp file; mkstemp makes it 0600, the saved file must not be."""
    from visionzoo.train.checkpoint import write_json_atomic

    umask = os.umask(0o022)
    try:
        paths = [save_state_dict(tiny().state_dict(), tmp_path / f"w{s}") for s in (".safetensors", ".pth")]
        paths.append(write_json_atomic({"a": 1}, tmp_path / "s.json"))
    finally:
        os.umask(umask)
    assert [oct(p.stat().st_mode & 0o777) for p in paths] == [oct(0o644)] * 3


def test_nested_training_checkpoint_with_ddp_prefix(tmp_path):
    src = tiny()
    ckpt = {"model": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3, "optimizer": {}}
    torch.save(ckpt, tmp_path / "train.pth")
    dst = tiny()
    load_checkpoint(dst, tmp_path / "train.pth")
    torch.testing.assert_close(dst.state_dict()["pos_embed"], src.state_dict()["pos_embed"])


def test_checkpoints_of_wrapped_models_load(tmp_path):
    """State dicts saved from torch.compile (``_orig_mod.``), DDP around a compiled model, and
    torch.optim.swa_utils.AveragedModel (torchvision's EMA: ``module.`` plus ``n_averaged``),
    in .pth and .safetensors."""
    from torch.nn.parallel import DataParallel
    from torch.optim.swa_utils import AveragedModel

    src = tiny()
    x = torch.randn(1, 3, 32, 32)
    wrapped = {
        "compiled": torch.compile(src).state_dict(),  # compiles nothing until called
        "dp_compiled": DataParallel(torch.compile(src)).state_dict(),
        "compiled_dp": torch.compile(DataParallel(src)).state_dict(),
        "ema": {"model_ema": AveragedModel(src).state_dict(), "epoch": 3},
    }
    assert any(k.startswith("module._orig_mod.") for k in wrapped["dp_compiled"]) and "n_averaged" in wrapped["ema"]["model_ema"]
    for name, sd in wrapped.items():
        torch.save(sd, tmp_path / f"{name}.pth")
        paths = [tmp_path / f"{name}.pth"]
        if name != "ema":
            paths.append(save_state_dict(sd, tmp_path / f"{name}.safetensors"))
        for path in paths:
            dst = tiny()
            load_checkpoint(dst, path)
            torch.testing.assert_close(dst(x), src(x), msg=str(path))
    with pytest.raises(CheckpointError, match="holds no tensors .'state_dict' empty"):
        unwrap_state_dict({"state_dict": {}})


def test_position_embedding_resized_to_model_size():
    ref = build_random(lambda: timm.create_model(NAME, num_classes=5))  # 224: 14 x 14 grid
    ours = visionzoo.create_model(NAME, img_size=384, num_classes=5).eval()  # 24 x 24 grid
    load_checkpoint(ours, ref.state_dict(), source="timm")
    expect = timm.layers.resample_abs_pos_embed(ref.pos_embed, new_size=(24, 24), num_prefix_tokens=1)
    torch.testing.assert_close(ours.pos_embed, expect)
    # timm, given the same checkpoint at 384, agrees on the logits
    ref384 = timm.create_model(NAME, img_size=384, num_classes=5).eval()
    ref384.load_state_dict({**ref.state_dict(), "pos_embed": expect})
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref384(x)) < 1e-4


@pytest.mark.parametrize("in_chans", [1, 2, 4])
def test_first_convolution_adapted_to_in_chans(in_chans):
    src = tiny()
    dst = tiny(in_chans=in_chans)
    load_checkpoint(dst, src.state_dict())
    w, w3 = dst.patch_embed.proj.weight, src.patch_embed.proj.weight
    assert w.shape[1] == in_chans
    if in_chans == 1:  # a grey image gives the response of the same image in colour
        x = torch.randn(1, 1, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(dst(x), src(x.expand(1, 3, 32, 32)), rtol=1e-4, atol=1e-5)
    else:
        torch.testing.assert_close(w[:, 0], w3[:, 0] * 3 / in_chans)


def test_classifier_of_another_size_is_dropped_with_warning():
    src = tiny(num_classes=5)
    dst = tiny(num_classes=7)
    head_before = dst.head.weight.clone()
    with pytest.warns(UserWarning, match="classifier head"):
        info = load_checkpoint(dst, src.state_dict())
    assert sorted(info["dropped"]) == ["head.bias", "head.weight"]
    assert torch.equal(dst.head.weight, head_before)
    torch.testing.assert_close(dst.pos_embed, src.pos_embed)


def test_num_classes_zero_takes_a_full_checkpoint():
    src = tiny()
    dst = tiny(num_classes=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(dst, src.state_dict())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(dst(x), src.forward_head(src.forward_features(x), pre_logits=True))


def test_headless_checkpoint_leaves_the_classifier_initialised():
    """A backbone checkpoint (timm's with num_classes=0) loads with a warning; the head keeps
    its weights. Any other missing key still refuses the checkpoint."""
    ref = build_random(lambda: timm.create_model(NAME, img_size=32, num_classes=0))
    dst = tiny()
    head_before = dst.head.weight.clone()
    with pytest.warns(UserWarning, match="no classifier head"):
        info = load_checkpoint(dst, ref.state_dict())
    assert info["missing"] == ["head.bias", "head.weight"]
    assert torch.equal(dst.head.weight, head_before)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_rel_diff(dst.forward_head(dst.forward_features(x), pre_logits=True), ref(x)) < 1e-5
    partial = ref.state_dict()
    partial.pop("blocks.0.norm1.weight")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match=r"missing 1 key\(s\).*blocks.0.norm1.weight"):
        load_checkpoint(tiny(), partial)


def test_missing_keys_load_nothing():
    src = tiny().state_dict()
    src.pop("blocks.3.mlp.fc1.weight")
    dst = tiny()
    before = snapshot(dst)
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\).*blocks.3.mlp.fc1.weight"):
        load_checkpoint(dst, src)
    assert_unchanged(dst, before)
    info = load_checkpoint(dst, src, strict=False)
    assert info["missing"] == ["blocks.3.mlp.fc1.weight"]
    torch.testing.assert_close(dst.blocks[3].mlp.fc2.weight, src["blocks.3.mlp.fc2.weight"])


def test_non_finite_weights_refused_and_model_untouched(tmp_path):
    src = tiny().state_dict()
    src["blocks.5.attn.proj.weight"][0, 0] = float("nan")
    save_state_dict(src, tmp_path / "nan.safetensors")
    dst = tiny()
    before = snapshot(dst)
    with pytest.raises(CheckpointError, match=r"nan.safetensors.*blocks.5.attn.proj.weight.*NaN"):
        load_checkpoint(dst, tmp_path / "nan.safetensors")
    assert_unchanged(dst, before)


def test_checkpoint_of_another_architecture(tmp_path):
    other = visionzoo.create_model("vit_small_patch16_224", img_size=32).state_dict()
    save_state_dict(other, tmp_path / "small.pth")
    dst = tiny()
    before = snapshot(dst)
    with pytest.raises(CheckpointError, match="small.pth.*shapes do not fit"):
        load_checkpoint(dst, tmp_path / "small.pth")
    assert_unchanged(dst, before)
    resnet_like = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}
    with pytest.raises(CheckpointError, match="does not look like a checkpoint"):
        load_checkpoint(dst, resnet_like)


def test_missing_empty_truncated_and_corrupt_files(tmp_path):
    dst = tiny()
    before = snapshot(dst)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(dst, tmp_path / "nope.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth.*empty"):
        load_checkpoint(dst, tmp_path / "empty.pth")
    good = save_state_dict(dst.state_dict(), tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_checkpoint(dst, tmp_path / "cut.pth")
    st = save_state_dict(dst.state_dict(), tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(st[: len(st) // 3])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_checkpoint(dst, tmp_path / "cut.safetensors")
    (tmp_path / "junk.pth").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="junk.pth: not a readable checkpoint") as err:
        load_checkpoint(dst, tmp_path / "junk.pth")
    assert "weights_only" not in str(err.value)  # not torch's advice to load it unsafely
    assert_unchanged(dst, before)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_training_script_checkpoints_with_args_and_ema(tmp_path):
    """timm's train.py (and DeiT's, Swin's, ConvNeXt's) saves its argparse options beside the
    weights; an EMA-only file nests them under model_ema. Both load; a Namespace carrying an
    object is still refused."""
    import argparse

    src = tiny()
    sd = src.state_dict()
    torch.save({"epoch": 9, "arch": "vit", "state_dict": sd, "state_dict_ema": {k: v + 1 for k, v in sd.items()},
                "args": argparse.Namespace(lr=0.1, model="vit", sizes=[1, 2])}, tmp_path / "model_best.pth.tar")
    torch.save({"model_ema": sd, "epoch": 1}, tmp_path / "ema.pth")
    for name in ("model_best.pth.tar", "ema.pth"):
        dst = tiny()
        load_checkpoint(dst, tmp_path / name)
        torch.testing.assert_close(dst.state_dict()["pos_embed"], sd["pos_embed"])  # the plain copy first
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=evil)}, tmp_path / "evil_args.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tiny(), tmp_path / "evil_args.pth")
    assert not marker.exists()


def test_checkpoint_never_executes_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:  # a legacy pickle file whose unpickling would run a command
        pickle.dump({"pos_embed": torch.zeros(1), "payload": evil}, f)
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": evil}, tmp_path / "evil2.pth")
    dst = tiny()
    for p in (path, tmp_path / "evil2.pth"):
        with pytest.raises(CheckpointError, match="refused|not a readable"):
            load_checkpoint(dst, p)
    with pytest.raises(CheckpointError, match=r"evil2.pth: refused, .*\(global \w+\.system\)"):
        load_checkpoint(dst, tmp_path / "evil2.pth")  # torch.save's pickle: the global is named
    assert not marker.exists()


def test_unknown_source_and_missing_converter():
    dst = tiny()
    with pytest.raises(CheckpointError, match="unknown checkpoint source"):
        load_checkpoint(dst, dst.state_dict(), source="keras")


def test_create_model_with_checkpoint_path(tmp_path):
    src = tiny()
    path = save_state_dict(src.state_dict(), tmp_path / "w.safetensors")
    dst = visionzoo.create_model(NAME, img_size=32, num_classes=5, checkpoint=path).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x))


def test_interrupted_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    import safetensors.torch

    path = save_state_dict({"w": torch.ones(3)}, tmp_path / "w.safetensors")
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")  # a partial write, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_state_dict({"w": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
