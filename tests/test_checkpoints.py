"""load_checkpoint: formats, conversion, adaptation, all-or-nothing loading, safety."""

import os
import pickle
import warnings

import pytest
import timm
import torch

import visionzoo
from visionzoo import CheckpointError, load_checkpoint, save_state_dict
from visionzoo.checkpoints.io import read_state_dict, unwrap_state_dict
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


def test_the_format_is_read_from_the_file_not_its_suffix(tmp_path):
    """A safetensors file named .pth, torch's files named .safetensors, .npz or nothing load:
    the reader is chosen by the first bytes. By the suffix alone they were refused with the
    wrong reader's error ("Unsupported operand 80", "header too large")."""
    src = tiny()
    sd = src.state_dict()
    x = torch.randn(1, 3, 32, 32)
    save_state_dict(sd, tmp_path / "st.safetensors").rename(tmp_path / "st.pth")
    save_state_dict(sd, tmp_path / "pt.pth").rename(tmp_path / "blob")
    for name in ("pt.safetensors", "pt.npz"):
        torch.save(sd, tmp_path / name)
    torch.save(sd, tmp_path / "legacy.safetensors", _use_new_zipfile_serialization=False)
    for name in ("st.pth", "blob", "pt.safetensors", "pt.npz", "legacy.safetensors"):
        dst = tiny()
        load_checkpoint(dst, tmp_path / name)
        torch.testing.assert_close(dst(x), src(x), msg=name)


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


def test_checkpoints_load_into_wrapped_models():
    """A model inside torch.compile, DataParallel or both takes a plain checkpoint (its keys,
    family and configuration are the wrapped model's); it used to be refused as "not a
    checkpoint of" the model, the wrapper's ``_orig_mod.`` / ``module.`` names matching no key."""
    from torch.nn.parallel import DataParallel

    src = tiny()
    x = torch.randn(1, 3, 32, 32)
    for wrap in (torch.compile, DataParallel, lambda m: DataParallel(torch.compile(m))):
        dst = tiny()
        info = load_checkpoint(wrap(dst), src.state_dict())
        assert info["source"] == ["visionzoo"]
        torch.testing.assert_close(dst(x), src(x))


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


@pytest.mark.parametrize(
    "checkpoint, model, message",
    [
        (("deit_tiny_distilled_patch16_224", {}), ("deit_tiny_patch16_224", {}), r"has a distillation token \(dist_token, head_dist\).*distilled DeiT"),
        (("deit_tiny_patch16_224", {}), ("deit_tiny_distilled_patch16_224", {}), r"has no distillation token.*not a distilled DeiT"),
        ((NAME, {}), (NAME, dict(class_token=False, global_pool="avg")), r"has a class token \(cls_token\).*class_token=False"),
        ((NAME, dict(class_token=False, global_pool="avg")), (NAME, {}), r"has no class token \(cls_token\)"),
        ((NAME, dict(reg_tokens=4)), (NAME, {}), r"has 4 register tokens \(reg_token\), this model 0: build it with reg_tokens=4"),
        ((NAME, {}), (NAME, dict(reg_tokens=1)), r"has 0 register tokens \(reg_token\), this model 1: build it with reg_tokens=0"),
        ((NAME, dict(no_embed_class=True)), (NAME, {}), r"4 rows, one per patch of this model and none for the class .*build it with no_embed_class=True"),
        ((NAME, {}), (NAME, dict(no_embed_class=True)), r"5 rows, 1 of them for the class / distillation token, which this model \(no_embed_class=True\) gives none"),
    ],
)
def test_checkpoint_with_other_prefix_tokens_names_the_token(checkpoint, model, message):
    """A checkpoint of a variant with another class / distillation token is refused for that
    reason, not with an error about its position embedding's grid; the model is untouched."""
    sd = timm.create_model(checkpoint[0], img_size=32, **checkpoint[1]).state_dict()
    dst = visionzoo.create_model(model[0], img_size=32, **model[1])
    before = snapshot(dst)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(dst, sd)
    assert "grid" not in str(info.value)
    assert_unchanged(dst, before)
    # a partial checkpoint (no position embedding, no tokens) is only missing keys
    blocks = {k: v for k, v in sd.items() if k.startswith("blocks.")}
    with pytest.warns(UserWarning, match="no classifier head"):  # (the head too is left as it is)
        load_checkpoint(dst, blocks, strict=False)
    torch.testing.assert_close(dst.blocks[0].attn.qkv.weight, blocks["blocks.0.attn.qkv.weight"])


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


def test_a_first_convolution_of_other_than_rgb_or_grey_channels_is_refused():
    """A kernel of 4 channels (RGB + NIR) went into a 3-channel model as 4/3 of its first three
    channels, the fourth dropped without a word (timm refuses it); a grey kernel still goes
    into a 3-channel model: it answers an RGB image as the grey one to the image's mean."""
    src, dst = tiny(in_chans=4), tiny()
    before = snapshot(dst)
    with pytest.raises(CheckpointError, match=r"patch_embed.proj.weight takes 4 input channels and the model's 3.*in_chans=4"):
        load_checkpoint(dst, src.state_dict())
    assert_unchanged(dst, before)
    grey = tiny(in_chans=1)
    load_checkpoint(dst, grey.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), grey(x.mean(1, keepdim=True)), rtol=1e-4, atol=1e-5)


def test_classifier_of_another_size_is_dropped_with_warning():
    src = tiny(num_classes=5)
    dst = tiny(num_classes=7)
    head_before = dst.head.weight.clone()
    with pytest.warns(UserWarning, match="classifier head") as record:
        info = load_checkpoint(dst, src.state_dict())
    assert sorted(info["dropped"]) == ["head.bias", "head.weight"]
    assert torch.equal(dst.head.weight, head_before)
    torch.testing.assert_close(dst.pos_embed, src.pos_embed)
    # reported at the caller's line, through create_model too (not torch's no_grad wrapper)
    assert record[0].filename == __file__
    with pytest.warns(UserWarning, match="classifier head") as record:
        visionzoo.create_model(NAME, img_size=32, num_classes=7, checkpoint=src.state_dict())
    assert record[0].filename == __file__


def test_num_classes_zero_takes_a_full_checkpoint():
    src = tiny()
    dst = tiny(num_classes=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(dst, src.state_dict())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(dst(x), src.forward_head(src.forward_features(x), pre_logits=True))


def test_features_only_skips_only_the_pruned_layers_of_a_checkpoint():
    """A features_only model ignores the keys of the layers it pruned (classifier, later
    stages), but a deeper variant's extra blocks are not pruned layers: refused."""
    whole = visionzoo.create_model("resnet18", num_classes=5).state_dict()
    two = visionzoo.create_model("resnet18", features_only=True, out_indices=(0, 1))
    load_checkpoint(two, whole)
    assert all(torch.equal(v, whole[k]) for k, v in two.state_dict().items())
    assert "layer4.0.conv1.weight" in two.pruned_keys and "fc.weight" in two.pruned_keys
    deeper = visionzoo.create_model("resnet34").state_dict()
    for dst in (visionzoo.create_model("resnet18", features_only=True), two):
        before = snapshot(dst)
        with pytest.raises(CheckpointError, match=r"unexpected key\(s\) such as \['layer1\.2\."):
            load_checkpoint(dst, deeper)
        assert_unchanged(dst, before)


@pytest.mark.parametrize(
    "name, kw, size",
    [  # the first seven: timm's feature wrapper flattens their names (stem.0 -> stem_0)
        ("convnext_tiny", {}, 64),
        ("swin_tiny_patch4_window7_224", dict(img_size=64, window_size=4), 64),
        ("densenet121", {}, 64),
        ("inception_v4", {}, 75),
        ("coatnet_0_224", dict(img_size=64), 64),
        ("nest_tiny", dict(img_size=64), 64),
        ("vgg11_bn", {}, 64),
        ("resnet18", {}, 64),  # names timm keeps
        ("vit_tiny_patch16_224", dict(img_size=32), 32),  # timm's wrapper adds a prefix (model.)
    ],
)
def test_timm_features_only_checkpoints_load_and_give_timms_maps(name, kw, size):
    """The state dict of timm's features_only model loads into visionzoo's, which then
    returns timm's maps; a features_only model of fewer maps takes it too."""
    ref = build_random(lambda: timm.create_model(name, features_only=True, **kw), seed=1)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expect = ref(x)
        ours = visionzoo.create_model(name, features_only=True, checkpoint=ref.state_dict(), **kw).eval()
        first_two = visionzoo.create_model(name, features_only=True, out_indices=ours.out_indices[:2], checkpoint=ref.state_dict(), **kw).eval()
        assert len(ours(x)) == len(expect) and len(first_two(x)) == 2
        for maps in (ours(x), first_two(x)):
            for a, b in zip(maps, expect):
                b = b.permute(0, 3, 1, 2) if b.shape != a.shape else b  # timm's Swin maps: NHWC
                assert max_rel_diff(a, b) < 5e-4  # Inception v4's 1x1 maps at 75 px: ~2e-4 of fp32 rounding


def test_timm_features_only_checkpoint_of_another_variant_is_refused():
    """Restoring timm's flattened names does not make another variant's checkpoint fit."""
    ref = timm.create_model("convnext_small", features_only=True)  # stage 3: 27 blocks, not 9
    dst = visionzoo.create_model("convnext_tiny", features_only=True)
    before = snapshot(dst)
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\) such as \['stages\.2\.blocks\.10\."):
        load_checkpoint(dst, ref.state_dict())
    assert_unchanged(dst, before)
    with pytest.raises(CheckpointError, match="does not look like a checkpoint of densenet121"):
        load_checkpoint(visionzoo.create_model("densenet121", features_only=True), visionzoo.create_model("convnext_tiny").state_dict())


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
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about the head of a load that does not happen
        with pytest.raises(CheckpointError, match=r"missing 1 key\(s\).*blocks.0.norm1.weight"):
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


def test_training_script_checkpoints_with_args_and_ema(tmp_path, caplog):
    """timm's train.py (and DeiT's, ConvNeXt's) saves its argparse options beside the
    weights; an EMA-only file nests them under model_ema. Both load, the EMA copy by default
    (as timm's use_ema=True), the plain one with use_ema=False; a Namespace carrying an
    object is still refused."""
    import argparse
    import logging

    src = tiny()
    sd = src.state_dict()
    ema = {k: v + 1 for k, v in sd.items()}
    torch.save({"epoch": 9, "arch": "vit", "state_dict": sd, "state_dict_ema": ema,
                "args": argparse.Namespace(lr=0.1, model="vit", sizes=[1, 2])}, tmp_path / "model_best.pth.tar")
    torch.save({"model": sd, "model_ema": ema, "optimizer": {}}, tmp_path / "deit.pth")  # DeiT / ConvNeXt
    torch.save({"model_ema": sd, "epoch": 1}, tmp_path / "ema.pth")
    for name, use_ema, expect in [("model_best.pth.tar", True, ema), ("model_best.pth.tar", False, sd),
                                  ("deit.pth", True, ema), ("deit.pth", False, sd), ("ema.pth", False, sd)]:
        dst = tiny()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="visionzoo.checkpoints"):
            load_checkpoint(dst, tmp_path / name, use_ema=use_ema)
        torch.testing.assert_close(dst.state_dict()["pos_embed"], expect["pos_embed"], msg=f"{name} use_ema={use_ema}")
        if name != "ema.pth":  # which copy was taken is logged
            key = {"model_best.pth.tar": "state_dict", "deit.pth": "model"}[name] + ("_ema" if use_ema else "")
            assert f"the weights under {key!r}" in caplog.text
    from_dict = tiny()
    load_checkpoint(from_dict, {"state_dict": sd, "state_dict_ema": ema})  # a state dict in memory, too
    torch.testing.assert_close(from_dict.pos_embed, ema["pos_embed"])
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
        with pytest.raises(CheckpointError, match="refused|not a readable|pickled with protocol 4"):
            load_checkpoint(dst, p)
    with pytest.raises(CheckpointError, match=r"evil2.pth: refused, .*\(global \w+\.system\)"):
        load_checkpoint(dst, tmp_path / "evil2.pth")  # torch.save's pickle: the global is named
    assert not marker.exists()


def test_a_pickle_of_protocol_4_is_refused_saying_why(tmp_path):
    """torch's safe reader does not read pickle protocol 4 (its FRAME opcode): a file torch.save
    wrote with pickle_protocol=4 was "not a readable checkpoint ... Unsupported operand 149" beside
    torch's warning of the protocol; now one message saying how to save it."""
    path = tmp_path / "p4.pth"
    torch.save(tiny().state_dict(), path, pickle_protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError, match=r"p4.pth: pickled with protocol 4 or 5 .* torch.save's default protocol or as safetensors"):
            load_checkpoint(tiny(), path)


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


def test_refused_load_gives_no_warning_about_the_classifier():
    """resnet50's weights into resnet18: the classifier sizes differ, but the load is refused
    (shapes), so the warning that the head is left initialised must not be given."""
    src = visionzoo.create_model("resnet50", num_classes=7).state_dict()
    dst = visionzoo.create_model("resnet18", num_classes=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError, match="shapes do not fit"):
            load_checkpoint(dst, src)


def test_messages_for_empty_random_and_truncated_files(tmp_path):
    torch.save({"state_dict": {}, "epoch": 1}, tmp_path / "empty_nested.pth")
    with pytest.raises(CheckpointError, match=r"holds no tensors \('state_dict' empty\)"):
        load_checkpoint(tiny(), tmp_path / "empty_nested.pth")
    (tmp_path / "junk.npz").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="junk.npz: not a readable checkpoint") as err:
        load_checkpoint(tiny(), tmp_path / "junk.npz")
    assert "allow_pickle" not in str(err.value) and "unsafe" not in str(err.value)  # not numpy's advice
    good = save_state_dict(tiny().state_dict(), tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(good[:-100])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tiny(), tmp_path / "cut.pth")
    assert str(err.value).endswith((".", "...")), str(err.value)  # whole sentences, not cut mid-word


def test_unreadable_file_messages_name_the_cause_or_none(tmp_path):
    """The reader's error is given with its type; a text file's unpickling error, a bare
    KeyError(101), says nothing and is left out (it read "...: 101")."""
    (tmp_path / "text.pth").write_bytes(b"hello world\n")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tiny(), tmp_path / "text.pth")
    assert str(err.value) == f"{tmp_path / 'text.pth'}: not a readable checkpoint (corrupt, truncated, or not a checkpoint at all?)"
    (tmp_path / "words.pth").write_bytes(b"this is not a checkpoint\n")  # the unpickler: IndexError
    with pytest.raises(CheckpointError, match=r"words.pth: not a readable checkpoint \(corrupt, truncated, or not a checkpoint at all\?\)"):
        load_checkpoint(tiny(), tmp_path / "words.pth")
    (tmp_path / "zip.pth").write_bytes(b"PK\x03\x04" + os.urandom(200))
    with pytest.raises(CheckpointError, match=r"zip.pth: not a readable checkpoint \(corrupt, truncated, or not a checkpoint at all\?\): RuntimeError: PytorchStreamReader"):
        load_checkpoint(tiny(), tmp_path / "zip.pth")
    (tmp_path / "text.safetensors").write_bytes(b"hello world\n")
    with pytest.raises(CheckpointError, match=r"text.safetensors: not a readable checkpoint: SafetensorError: "):
        load_checkpoint(tiny(), tmp_path / "text.safetensors")


def _damage(path, tensor):
    """Flip the bits of a few bytes inside ``tensor``'s data as stored in the file ``path``."""
    raw = bytearray(path.read_bytes())
    at = raw.find(tensor.detach().contiguous().numpy().tobytes())
    assert at >= 0, "tensor data not found in the file"
    for i in range(at + 8, at + 24):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_damaged_tensor_bytes_in_a_zip_checkpoint_are_refused(tmp_path):
    """torch.load does not check the CRC-32 its zip archives record: bytes damaged inside a
    tensor's data used to load as silently wrong weights (numpy's .npz reads check them)."""
    import numpy as np

    sd = tiny().state_dict()
    path = save_state_dict(sd, tmp_path / "flipped.pth")
    _damage(path, sd["blocks.0.mlp.fc1.weight"])
    model = tiny()
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=r"flipped.pth: corrupt, archive member '.*' does not match its CRC-32 checksum"):
        load_checkpoint(model, path)
    assert_unchanged(model, before)
    arrays = {"w": np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)}
    np.savez(tmp_path / "flipped.npz", **arrays)
    _damage(tmp_path / "flipped.npz", torch.from_numpy(arrays["w"]))
    with pytest.raises(CheckpointError, match=r"flipped.npz: not a readable checkpoint \(corrupt.*Bad CRC-32 for file 'w.npy'"):
        read_state_dict(tmp_path / "flipped.npz")


def test_zip_checkpoints_saved_without_crcs_still_load(tmp_path):
    """torch records a CRC of 0 when saving with ``compute_crc32`` off: nothing to check."""
    config = getattr(getattr(torch.utils, "serialization", None), "config", None)
    if config is None or not hasattr(config.save, "compute_crc32"):
        pytest.skip("this torch always records CRCs")
    sd = tiny().state_dict()
    old = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        torch.save(sd, tmp_path / "no_crc.pth")
    finally:
        config.save.compute_crc32 = old
    model = tiny()
    load_checkpoint(model, tmp_path / "no_crc.pth")
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_save_state_dict_names_a_model_passed_for_its_state_dict(tmp_path):
    with pytest.raises(TypeError, match=r"takes a state dict, a mapping of names to tensors; got VisionTransformer \(pass model.state_dict\(\)\)"):
        save_state_dict(tiny(), tmp_path / "m.pth")
    assert not list(tmp_path.iterdir())

def test_brief_cuts_messages_at_sentence_or_word_boundaries():
    from visionzoo.checkpoints.io import _brief

    assert _brief("One sentence here. " * 30, 100) == " ".join(["One sentence here."] * 5)
    assert _brief("word " * 100, 50) == " ".join(["word"] * 10) + " ..."
    numpy_advice = ("This file contains pickled (object) data. If you trust the file you can load it unsafely "
                    "using the `allow_pickle=` keyword argument or `pickle.load()`.")
    assert _brief(numpy_advice) == "This file contains pickled (object) data."


@pytest.mark.parametrize("prefix", ["model.", "net.", "backbone.", "model.model."])
def test_lightning_checkpoint_with_a_common_prefix(tmp_path, prefix):
    """A Lightning .ckpt nests the weights under state_dict with the LightningModule's
    attribute name as prefix; it is removed when (and only when) the keys then fit."""
    src = tiny()
    ckpt = {"state_dict": {prefix + k: v for k, v in src.state_dict().items()}, "epoch": 2, "global_step": 10,
            "pytorch-lightning_version": "2.4.0", "hyper_parameters": {"lr": 0.1}, "optimizer_states": [], "lr_schedulers": []}
    torch.save(ckpt, tmp_path / "last.ckpt")
    for source in ("auto", "timm"):
        dst = tiny()
        assert load_checkpoint(dst, tmp_path / "last.ckpt", source=source)["source"] == [source if source != "auto" else "visionzoo"]
        x = torch.randn(1, 3, 32, 32)
        torch.testing.assert_close(dst(x), src(x))
    # keys that fit as they are keep their prefix, even when every key shares one
    shared = {"blocks.0.weight": torch.ones(2), "blocks.1.weight": torch.ones(2)}
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([torch.nn.LayerNorm(2), torch.nn.LayerNorm(2)])
    for b in model.blocks:
        del b.bias
        b.register_parameter("bias", None)
    load_checkpoint(model, shared)
    torch.testing.assert_close(model.blocks[1].weight, torch.ones(2))
    with pytest.raises(CheckpointError, match="does not look like a checkpoint"):  # a prefix that does not help
        load_checkpoint(tiny(), {"model.foo.weight": torch.zeros(3)})


def test_metadata_needs_a_safetensors_path(tmp_path):
    with pytest.raises(ValueError, match="metadata is stored only in .safetensors"):
        save_state_dict(tiny().state_dict(), tmp_path / "w.pth", metadata={"a": "b"})
    assert not list(tmp_path.iterdir())
    save_state_dict(tiny().state_dict(), tmp_path / "w.safetensors", metadata={"a": "b"})


def test_swin_training_checkpoint_with_yacs_config(tmp_path, monkeypatch):
    """Swin's official script saves its yacs CfgNode (a dict subclass) as "config". It loads,
    read as a dict, without yacs installed and without running anything from the file; an
    object inside it is still refused."""
    import sys
    import types

    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):  # as yacs': items are the options, attributes its bookkeeping
        def __init__(self, init_dict=None):
            super().__init__(init_dict or {})
            self.__dict__["__immutable__"] = True
            self.__dict__["__new_allowed__"] = False

        def __getattr__(self, name):
            if name in self:
                return self[name]
            raise AttributeError(name)

        def __setstate__(self, state):  # would run if the real class were rebuilt
            raise AssertionError("yacs code ran")

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode, yacs.config = CfgNode, config
    monkeypatch.setitem(sys.modules, "yacs", yacs)
    monkeypatch.setitem(sys.modules, "yacs.config", config)
    src = tiny()
    cfg = CfgNode({"MODEL": CfgNode({"TYPE": "swin", "DROP_PATH_RATE": 0.2}), "TRAIN": CfgNode({"EPOCHS": 300})})
    torch.save({"model": src.state_dict(), "optimizer": {}, "lr_scheduler": {}, "max_accuracy": 81.2, "epoch": 299,
                "config": cfg}, tmp_path / "ckpt_epoch_299.pth")
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    torch.save({"model": src.state_dict(), "config": CfgNode({"MODEL": evil})}, tmp_path / "evil_cfg.pth")
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    dst = tiny()
    load_checkpoint(dst, tmp_path / "ckpt_epoch_299.pth")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x))
    assert "yacs" not in sys.modules
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tiny(), tmp_path / "evil_cfg.pth")
    assert not marker.exists()


# --------------------------------------------------------------------------- EfficientNet numerics
def _efficientnet_pytorch_layout(sd, cfg):
    """timm's (= visionzoo's) EfficientNet keys -> efficientnet_pytorch's (lukemelas)."""
    from visionzoo.models.efficientnet import official_key_map

    key_map = official_key_map(cfg)
    return {f"{key_map[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in sd.items()}


def _numerics(model):
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    from visionzoo.models.efficientnet import Conv2dPad

    pads = {m.tf_padding for m in model.modules() if isinstance(m, Conv2dPad)}
    return {(m.eps, m.momentum) for m in bns}, pads, model.cfg


def test_efficientnet_numerics_survive_training_save_and_reload(tmp_path):
    """An efficientnet_pytorch checkpoint switches efficientnet_b0 to TF numerics; the weights
    saved as ``visionzoo train`` saves them rebuild that network through load_trained."""
    from visionzoo.registry import get_entry
    from visionzoo.train.checkpoint import effective_overrides, model_metadata
    from visionzoo.train.inference import load_trained

    ref = build_random(lambda: timm.create_model("tf_efficientnet_b0", num_classes=3))
    model = visionzoo.create_model("efficientnet_b0", num_classes=3).eval()
    assert load_checkpoint(model, _efficientnet_pytorch_layout(ref.state_dict(), model.cfg))["source"] == ["official"]
    assert (model.cfg.bn_eps, model.cfg.bn_momentum, model.cfg.tf_padding) == (1e-3, 0.01, True)
    overrides = effective_overrides(model, get_entry("efficientnet_b0").config, {})  # as the trainer records them
    assert overrides == {"bn_eps": 1e-3, "bn_momentum": 0.01, "tf_padding": True}
    meta = model_metadata("efficientnet_b0", overrides, ["a", "b", "c"], {"img_size": 64})
    save_state_dict(model.state_dict(), tmp_path / "model.safetensors", metadata=meta)
    again, _ = load_trained(tmp_path / "model.safetensors")
    assert _numerics(again) == _numerics(model)
    x = torch.randn(2, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
        assert max_rel_diff(again(x), ref(x)) < 1e-4


def test_efficientnet_refused_checkpoint_leaves_numerics_unchanged():
    """A lukemelas-layout checkpoint with one NaN is refused before the TF numerics are set."""
    model = visionzoo.create_model("efficientnet_b0", num_classes=3, img_size=64).eval()
    sd = _efficientnet_pytorch_layout(visionzoo.create_model("efficientnet_b0", num_classes=3).state_dict(), model.cfg)
    sd["_blocks.3._expand_conv.weight"][0, 0] = float("nan")
    before, numerics = snapshot(model), _numerics(model)
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        out = model(x)
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(model, sd)
    assert_unchanged(model, before)
    assert _numerics(model) == numerics and model.cfg == model.built_cfg
    with torch.no_grad():
        assert torch.equal(model(x), out)


def test_efficientnet_numerics_follow_the_last_checkpoint_loaded():
    """timm (and visionzoo) checkpoints carry no numerics: after an efficientnet_pytorch load,
    a timm efficientnet_b0 checkpoint runs with the numerics the model was built with."""
    ref = build_random(lambda: timm.create_model("efficientnet_b0", num_classes=3))
    model = visionzoo.create_model("efficientnet_b0", num_classes=3).eval()
    load_checkpoint(model, _efficientnet_pytorch_layout(ref.state_dict(), model.cfg))
    assert model.cfg.tf_padding
    load_checkpoint(model, ref.state_dict())
    assert model.cfg == model.built_cfg == visionzoo.registry.get_entry("efficientnet_b0").config
    x = torch.randn(2, 3, 65, 65)
    with torch.no_grad():
        assert max_rel_diff(model(x), ref(x)) < 1e-4


@pytest.mark.parametrize("name", ["tf_efficientnet_b0", "tf_efficientnet_b2", "tf_efficientnet_lite0"])
def test_timm_tf_efficientnet_weights_load_into_the_tf_names(name):
    ref = build_random(lambda: timm.create_model(name, num_classes=4))
    ours = visionzoo.create_model(name, num_classes=4, checkpoint=ref.state_dict()).eval()
    assert ours.cfg.bn_eps == 1e-3 and ours.cfg.tf_padding
    x = torch.randn(2, 3, 67, 64)  # odd and even sides: 'SAME' padding differs from symmetric on even ones
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-4
    plain = visionzoo.create_model(name[3:], num_classes=4, checkpoint=ref.state_dict()).eval()
    with torch.no_grad():  # the keys fit the plain variant too, but it is another function
        assert max_rel_diff(plain(x), ref(x)) > 1e-4


@pytest.mark.parametrize("i", range(8))
def test_tf_efficientnet_params_and_preprocessing_equal_timm(i):
    for name in [f"tf_efficientnet_b{i}"] + ([f"tf_efficientnet_lite{i}"] if i < 5 else []):
        with torch.device("meta"):
            ours = visionzoo.create_model(name)
            ref = timm.create_model(name)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()), name
        eps = {m.eps for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)}
        assert eps == {m.eps for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}, name
        ours_cfg, ref_cfg = visionzoo.registry.get_entry(name).default_cfg, ref.pretrained_cfg
        for key in ("input_size", "crop_pct", "interpolation", "mean", "std"):
            assert tuple(ours_cfg[key]) == tuple(ref_cfg[key]) if key != "crop_pct" else ours_cfg[key] == ref_cfg[key], (name, key)


def test_damaged_training_state_is_refused(tmp_path):
    """The resumable training state (optimizer moments, RNG states) is a torch zip file too."""
    from visionzoo.train.checkpoint import load_training_state

    moments = torch.randn(256)
    path = tmp_path / "state.pth"
    torch.save({"epoch": 3, "optimizer": {"exp_avg": moments}}, path)
    assert torch.equal(load_training_state(path)["optimizer"]["exp_avg"], moments)
    _damage(path, moments)
    with pytest.raises(CheckpointError, match=r"state.pth: corrupt, archive member '.*' does not match its CRC-32 checksum"):
        load_training_state(path)
    # a state carrying code is refused saying so (it used to end in torch's advice, cut mid-sentence)
    evil = _Evil()
    evil.marker = tmp_path / "ran"
    torch.save({"epoch": 3, "payload": evil}, path)
    with pytest.raises(CheckpointError, match=r"state.pth: not a readable training state, refused: it holds Python objects "
                       r"other than tensors \(global .*system\), and loading them could run code$") as err:
        load_training_state(path)
    assert "weights_only" not in str(err.value) and not evil.marker.exists()


@pytest.mark.parametrize("kw", [
    dict(pos_embed="learned_2d"),
    dict(pos_embed="learned_2d", pos_embed_at="every_layer", class_token=False, global_pool="avg"),
    dict(pos_embed="learned_1d", pos_embed_at="every_layer"),
])
def test_position_tables_of_every_kind_resample_to_the_models_size(kw):
    """A checkpoint at 32 px loaded into the same ViT at 64 px: learned_2d's row and column
    tables and per-block 1-D embeddings are resampled as the forward resamples them for a
    64 px input, so both give the same logits (they were refused as shapes that do not fit)."""
    torch.manual_seed(0)
    base = dict(embed_dim=32, depth=2, num_heads=2, num_classes=3, **kw)
    small = visionzoo.create_model("vit_tiny_patch16_224", img_size=32, **base).eval()
    for p in small.parameters():
        torch.nn.init.normal_(p, std=0.5)
    large = visionzoo.create_model("vit_tiny_patch16_224", img_size=64, checkpoint=small.state_dict(), **base).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(large(x), small(x))


def test_resume_with_other_parameter_groups_says_so(tmp_path):
    """A training state whose optimizer was built with other parameter groups (a segmentation run
    saved before its norms and position tables left weight decay: one group, now two) is refused
    naming the groups; torch's own refusal did not say which file or why."""
    from safetensors.torch import save_file

    from visionzoo.train.checkpoint import restore_training
    from visionzoo.train.engine import _param_groups

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    old = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(old, lambda s: 1.0)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"world_size": 1, "epoch": 1, "batch_in_epoch": 0, "global_step": 4, "optimizer": old.state_dict(),
                "scheduler": sched.state_dict()}, tmp_path / "state.pth")
    new = torch.optim.AdamW(_param_groups(model, 0.05), lr=0.1)
    with pytest.raises(ValueError, match=r"state.pth: its optimizer holds 1 parameter group\(s\) of 4 tensors, where this "
                       r"version of visionzoo builds 2 of 1, 3 for tiny"):
        restore_training((tmp_path / "w.safetensors", tmp_path / "state.pth"), model, new,
                         torch.optim.lr_scheduler.LambdaLR(new, lambda s: 1.0), None, world_size=1, epochs=2, name="tiny")
