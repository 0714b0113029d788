"""Registry, create_model, model_info and the list/info commands."""

import math
import os
import re
import subprocess
import sys

import pytest
import torch

import visionzoo

from test_cli import _one_line_error


def test_list_models_sorted_and_filtered():
    names = visionzoo.list_models()
    assert names == sorted(names) and len(names) == len(set(names))
    vits = visionzoo.list_models("vit*")
    assert "vit_base_patch16_224" in vits and all(n.startswith("vit") for n in vits)
    assert visionzoo.list_models("no_such_*") == []
    assert "vit_b_16" not in names and "vit_b_16" in visionzoo.list_models(aliases=True)
    with pytest.raises(TypeError, match=r"list_models: filter takes an fnmatch pattern such as 'vit\*' \(a str\), a list of them or '', got int 123"):
        visionzoo.list_models(123)
    with pytest.raises(TypeError, match="list_models: family takes a family key"):
        visionzoo.list_models(family=["vit"])


def test_list_models_takes_timms_arguments():
    """timm's list_models(filter, module, pretrained, exclude_filters, name_matches_cfg,
    include_tags) and is_model."""
    vits = visionzoo.list_models(filter="vit*")
    assert vits == visionzoo.list_models("vit*") == visionzoo.list_models(pattern="vit*") and "vit_tiny_patch16_224" in vits
    with pytest.raises(TypeError, match="filter or pattern"):
        visionzoo.list_models("vit*", pattern="deit*")
    tiny = visionzoo.list_models(["vit_t*", "deit_t*"])  # a union, sorted
    assert tiny == sorted(set(visionzoo.list_models("vit_t*")) | set(visionzoo.list_models("deit_t*")))
    assert "deit_tiny_distilled_patch16_224" in tiny and "vit_tiny_patch16_224" in tiny
    assert visionzoo.list_models("vit*", exclude_filters="*_384") == [n for n in vits if not n.endswith("_384")]
    assert visionzoo.list_models("vit*", exclude_filters=["*_384", "*_r50_*"]) == [n for n in vits if not n.endswith("_384") and "_r50_" not in n]
    # module: visionzoo's family keys (DeiT and the R50 hybrid are in the vit family), as family=
    assert visionzoo.list_models(module="vit") == visionzoo.list_models(family="vit")
    assert "deit_tiny_patch16_224" in visionzoo.list_models("*tiny*", "vit")
    both = visionzoo.list_models(module=["swin", "nest"])
    assert both == sorted(visionzoo.list_models(family="swin") + visionzoo.list_models(family="nest"))
    with pytest.raises(ValueError, match="unknown family 'vision_transformer'.*not timm's module names"):
        visionzoo.list_models(module="vision_transformer")
    with pytest.raises(ValueError, match="visionzoo downloads no weights.*checkpoint=PATH"):
        visionzoo.list_models(pretrained=True)
    with pytest.raises(ValueError, match="no pretrained tags"):
        visionzoo.list_models(include_tags=True)
    assert visionzoo.list_models(include_tags=False) == visionzoo.list_models(name_matches_cfg=True, aliases=True) == visionzoo.list_models()
    with pytest.raises(TypeError, match="list_models: exclude_filters takes an fnmatch pattern"):
        visionzoo.list_models(exclude_filters=[3])
    assert visionzoo.is_model("resnet18") and visionzoo.is_model("vit_b_16")  # a name and an alias
    assert not visionzoo.is_model("resnet_18") and not visionzoo.is_model(None) and not visionzoo.is_model("resnet5.a1_in1k")
    assert visionzoo.is_model("resnet50.a1_in1k") and visionzoo.is_model("vit_b_16.tv_in1k")  # timm's tagged names, as timm's is_model


def test_unknown_model_names_closest():
    with pytest.raises(visionzoo.UnknownModelError, match="vit_base_patch16_224") as e:
        visionzoo.create_model("vit_base_patch16_244")
    assert "unknown model 'vit_base_patch16_244'" in str(e.value)
    for empty in ("", "  "):  # no suggestions (difflib offered coatnet_0_224 for '')
        with pytest.raises(visionzoo.UnknownModelError, match=r"the model name is empty") as e:
            visionzoo.create_model(empty)
        assert "did you mean" not in str(e.value)


def test_unknown_override_lists_options():
    with pytest.raises(TypeError, match="pos_embed"):
        visionzoo.create_model("vit_tiny_patch16_224", pos_embedding="none")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['num_clases'\] \(did you mean 'num_classes'\?\)") as e:
        visionzoo.create_model("resnet18", num_clases=10)  # a create_model argument, not a family field
    common, own = str(e.value).split("; options of every model: ")[1].split("; this family's options: ")
    assert all(o in common for o in ("num_classes", "in_chans", "img_size", "global_pool", "features_only", "checkpoint"))
    assert "'layers'" in own and "num_classes" not in own
    with pytest.raises(TypeError, match="did you mean 'drop_rate' for 'dropp_rate', 'in_chans' for 'in_chan'"):
        visionzoo.create_model("resnet18", in_chan=1, dropp_rate=0.1)
    # timm's dynamic_img_size is refused with why, not "did you mean 'img_size'": the model
    # already takes other sizes (checked here at 160 x 192 against a 224 model)
    with pytest.raises(TypeError, match=r"\['dynamic_img_size'\] \(dynamic_img_size: visionzoo's ViT takes any input whose sides the patch divides"):
        visionzoo.create_model("vit_tiny_patch16_224", dynamic_img_size=True)
    with torch.no_grad():
        assert visionzoo.create_model("vit_tiny_patch16_224", depth=1).eval()(torch.randn(1, 3, 160, 192)).shape == (1, 1000)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        visionzoo.create_model("vit_tiny_patch16_224", num_classes=-1)
    with pytest.raises(ValueError, match="in_chans"):
        visionzoo.create_model("vit_tiny_patch16_224", in_chans=0)
    with pytest.raises(ValueError, match="cannot take img_size 100x100: it needs height and width divisible by 16"):
        visionzoo.create_model("vit_tiny_patch16_224", img_size=100)  # a size its own input check refuses
    with pytest.raises(ValueError, match="cannot take img_size 224x200.*divisible by 32"):
        visionzoo.create_model("hrnet_w18_small", img_size=(224, 200))  # its branches must halve exactly
    with pytest.raises(ValueError, match="cannot take img_size 20x20: it needs inputs of at least 32x32"):
        visionzoo.create_model("convnext_tiny", img_size=20)
    # NesT builds its block tables for the size, so its constructor refuses it: in the same words,
    # naming the family (a `bench resnet18 nest_tiny --img-size 40` said only "img_size (40, 40) must be ...")
    with pytest.raises(ValueError, match=r"^nest_tiny: NesT cannot take img_size 40x40: it needs height and width divisible by 16, got 40x40$"):
        visionzoo.create_model("nest_tiny", img_size=40)  # 4 px patches, 3 levels: 4 x 2^2
    with pytest.raises(ValueError, match=r"^nest_tiny_cifar: NesT cannot take img_size 4x4: it needs inputs of at least 8x8"):
        visionzoo.create_model("nest_tiny_cifar", img_size=4)  # 1 px patches, 4 levels: 2^3
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\), got 1.0"):
        visionzoo.create_model("resnet18", drop_path_rate=1.0)
    for name in ("vgg11", "densenet121", "inception_v3", "hrnet_w18_small", "convmixer_256_8", "mobilenetv1_100"):
        with pytest.raises(ValueError, match=f"{name} is built without stochastic depth"):  # it would do nothing
            visionzoo.create_model(name, drop_path_rate=0.1)


@pytest.mark.parametrize("name, kwargs, match", [
    ("swin_tiny_patch4_window7_224", dict(depths=(2, 2, 6), num_heads=(3, 6, 12, 24)), r"depths \(2, 2, 6\) and num_heads \(3, 6, 12, 24\) must have one entry per stage"),
    ("swin_mlp_tiny_c24_patch4_window8_256", dict(depths=(2, 2, 6)), r"depths \(2, 2, 6\) and num_heads \(4, 8, 16, 32\) must have one entry per stage"),
    ("nest_tiny", dict(depths=(2, 2)), r"embed_dims .* and depths \(2, 2\) need one entry per hierarchy"),
    ("resnet18", dict(block="basic_v2"), r"block must be one of \['basic', 'bottleneck'\], got 'basic_v2'"),
    ("convmixer_256_8", dict(kernel_size=4), r"kernel_size must be odd"),
    ("vit_tiny_patch16_224", dict(pos_embed="sincos"), r"pos_embed must be one of"),
])
def test_family_configuration_refusals_name_the_model(name, kwargs, match):
    """A family's own check of its configuration (run by its constructor) starts with the model's
    name, as create_model's checks of each field do ('convnext_tiny: option depths takes 4
    values'): Swin's mismatched depths / num_heads read only 'depths (2, 2, 6) and num_heads ...'."""
    with pytest.raises(ValueError, match=f"^{re.escape(name)}: {match}"):
        visionzoo.create_model(name, **kwargs)


@pytest.mark.parametrize("name, kwargs, match", [
    ("resnet18", dict(num_classes=True), "num_classes must be an int >= 0, got True"),  # was a TypeError from torch.empty
    ("resnet18", dict(num_classes="10"), "num_classes must be an int >= 0, got '10'"),
    ("resnet18", dict(in_chans=True), "in_chans must be an int >= 1, got True"),  # built a 1-channel model
    ("resnet18", dict(img_size=True), "img_size takes an int or a pair of ints, got True"),  # input_size (3, 1, 1)
    ("vit_tiny_patch16_224", dict(img_size=224.9), "img_size takes an int or a pair of ints, got 224.9"),  # was 224
    ("resnet18", dict(img_size=(64, 64.5)), r"img_size takes an int or a pair of ints, got \(64, 64.5\)"),
    ("resnet18", dict(img_size="64"), "img_size takes an int or a pair of ints, got '64'"),
    ("resnet18", dict(drop_path_rate="0.1"), r"drop_path_rate takes a number in \[0, 1\), got '0.1'"),  # was a TypeError on '<='
    ("resnet18", dict(drop_path_rate=float("nan")), r"drop_path_rate must be in \[0, 1\), got nan"),
    ("resnet18", dict(features_only="yes"), "features_only takes True or False, got 'yes'"),
    ("resnet18", dict(drop_rate="0.1"), "resnet18: option drop_rate takes a number, got '0.1'"),  # a configuration field
    ("vit_tiny_patch16_224", dict(attn_drop_rate=True), "option attn_drop_rate takes a number, got True"),
])
def test_create_model_arguments_of_the_wrong_type(name, kwargs, match):
    """create_model's own arguments are checked before anything is built, as its configuration
    fields are: one ValueError naming the argument and the value, never a truncated or
    bool-as-int value, nor an error from deep inside PyTorch."""
    with pytest.raises(ValueError, match=match):
        visionzoo.create_model(name, **kwargs)


def test_reset_classifier_checks_num_classes_as_create_model_does():
    with pytest.raises(ValueError, match="num_classes must be an int >= 0, got True"):
        visionzoo.create_model("resnet18", num_classes=2).reset_classifier(True)
    assert visionzoo.create_model("resnet18", img_size=[64, 96], num_classes=2).default_cfg["input_size"] == (3, 64, 96)


@pytest.mark.parametrize("name, override, error, match", [
    ("convmixer_256_8", dict(patch_size=0), ValueError, "option patch_size must be a positive int, got 0"),  # failed in forward
    ("convmixer_256_8", dict(depth=-1), ValueError, "option depth must be a positive int, got -1"),  # built with no blocks
    ("vit_tiny_patch16_224", dict(depth=0), ValueError, "option depth must be a positive int, got 0"),
    ("convmixer_256_8", dict(dim="abc"), ValueError, "option dim takes an int, got 'abc'"),
    ("convmixer_256_8", dict(depth=2.0), ValueError, "option depth takes an int, got 2.0"),
    ("swin_tiny_patch4_window7_224", dict(depths=(2, 2, 0, 2)), ValueError, r"option depths\[2\] must be a positive int, got 0"),
    ("convnext_tiny", dict(depths=(3, 3, 9)), ValueError, r"option depths takes 4 values \(one per stage\), got 3"),
    ("vit_tiny_patch16_224", dict(mlp_ratio=float("nan")), ValueError, "option mlp_ratio must be a finite number >= 0"),
    ("vit_tiny_patch16_224", dict(drop_rate=1.0), ValueError, r"option drop_rate is a probability in \[0, 1\), got 1.0"),
    ("vit_tiny_patch16_224", dict(qkv_bias=1), ValueError, "option qkv_bias takes True or False, got 1"),
    ("vit_tiny_patch16_224", dict(pos_embed=3), ValueError, "option pos_embed takes a string, got 3"),
])
def test_override_values_are_checked_against_the_configuration(name, override, error, match):
    """Overrides (``create_model`` keywords, the CLI's --model-arg / --set) are checked against
    the configuration's annotations before anything is built: one line naming the option
    (ValueError, as for create_model's own arguments; an unknown option is a TypeError)."""
    with pytest.raises(error, match=f"^{name}: {match}"):
        visionzoo.create_model(name, **override)


def test_override_values_that_are_fine_pass():
    """Lists for tuples (what JSON and the CLI give), None where the field allows it, 0 for
    numbers that may be 0 (a layer scale starting at 0)."""
    m = visionzoo.create_model("convnext_tiny", depths=[1, 1, 1, 1], dims=[8, 16, 24, 32], ls_init_value=0, num_classes=2)
    assert m.cfg.depths == (1, 1, 1, 1) and isinstance(m.cfg.dims, tuple) and m.cfg.ls_init_value == 0.0
    assert visionzoo.create_model("coatnet_0_224", head_hidden_size=None, depths=[1, 1, 1, 1], num_classes=2).cfg.head_hidden_size is None

def test_input_validation_messages():
    m = visionzoo.create_model("vit_tiny_patch16_224", img_size=32, num_classes=2)
    with pytest.raises(visionzoo.InputError, match="expects 3 input channels, got 1"):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(visionzoo.InputError, match=r"got shape \(1, 32, 32, 3\), which looks like \(B, H, W, C\): permute it with x.permute\(0, 3, 1, 2\)"):
        m(torch.randn(1, 32, 32, 3))  # an image batch as numpy / PIL lay it out
    with pytest.raises(visionzoo.InputError, match="divisible by 16"):
        m(torch.randn(1, 3, 40, 32))
    with pytest.raises(visionzoo.InputError, match="floating-point"):
        m(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(visionzoo.InputError, match="4-D"):
        m(torch.randn(3, 32, 32))


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2_050", "regnetx_002", "hrnet_w18_small", "vit_tiny_patch16_224"])
def test_non_tensor_and_wrong_dtype_inputs_are_input_errors(name):
    """A NumPy array reaches no tensor method first (the channels-last CPU path of the
    convolutional families called x.dim()); a float64 input is named with its fix."""
    import numpy as np

    m = visionzoo.create_model(name, num_classes=2).eval()
    with torch.no_grad(), pytest.raises(visionzoo.InputError, match="expects a torch.Tensor, got ndarray"):
        m(np.zeros((1, 3, 224, 224), np.float32))
    with torch.no_grad(), pytest.raises(visionzoo.InputError, match=r"expects a float32 tensor \(its parameters are float32\), got dtype float64: convert it with x\.float\(\), or the model with model\.double\(\)"):
        m(torch.zeros(1, 3, 224, 224, dtype=torch.float64))


def test_autocast_input_dtype_is_not_refused():
    m = visionzoo.create_model("resnet18", num_classes=2).eval().bfloat16()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(visionzoo.InputError, match=r"parameters are bfloat16\), got dtype float32: convert it with x\.bfloat16\(\)"):
        m(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(x).shape == (1, 2)  # autocast runs float32 inputs on bf16 weights
    assert m.double()(x.double()).dtype == torch.float64


def test_model_info_fields_and_counted_macs():
    info = visionzoo.model_info("vit_base_patch16_224")
    assert info["params"] == 86_567_656
    assert info["input_size"] == (3, 224, 224)
    assert info["published_params_m"] == 86.6 and info["published_gmacs"] == 17.6
    assert abs(info["gmacs"] - 17.6) / 17.6 < 0.03
    # the counter sees attention: at 384 the (hw)^2 term grows the total faster than hw
    assert visionzoo.model_info("vit_base_patch16_224", img_size=384)["gmacs"] > 3 * info["gmacs"]


def test_model_info_gives_no_published_figures_for_a_changed_network():
    """The paper's figures describe the default configuration: with depth=2 (or 10 classes)
    they used to be printed beside the changed network's counts. Dropout and the default
    values change nothing."""
    for overrides in ({"depth": 2}, {"pos_embed": "relative_2d"}, {"num_classes": 10}):
        info = visionzoo.model_info("vit_tiny_patch16_224", **overrides)
        assert info["published_params_m"] is info["published_gmacs"] is info["published_top1"] is None
        k, v = next(iter(overrides.items()))
        assert info["published_note"] == f"the paper's figures are for the default configuration; this one sets {k}={v!r}"
    for overrides in ({"depth": 12}, {"drop_path_rate": 0.1}, {"num_classes": 1000, "in_chans": 3}):
        assert visionzoo.model_info("vit_tiny_patch16_224", **overrides)["published_params_m"] == 5.7


@pytest.mark.parametrize("name", [n for n in visionzoo.list_models() if visionzoo.registry.get_entry(n).published.get("gmacs")])
def test_counted_gmacs_within_3_percent_of_paper(name):
    info = visionzoo.model_info(name)
    pub = info["published_gmacs"]
    assert abs(info["gmacs"] - pub) / pub < 0.03, f"{name}: counted {info['gmacs']:.3f} vs published {pub}"


def _cli(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "visionzoo", *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_list_and_info(capsys):
    """In process (the installed command runs in test_console_script_installed and the error
    tests below): each call's exit code and what it printed."""
    from visionzoo.cli import main

    def run(*args):
        rc = main(list(args))
        out = capsys.readouterr().out
        assert rc == 0, out
        return out

    assert "vit_base_patch16_224" in run("list", "vit*").split()
    out = run("info", "vit_base_patch16_224")
    assert "86,567,656" in out and "17.56" in out and "paper" in out
    assert "17.56" in out.split("(paper: 17.6)")[0]
    # 197 x 768 learned table replaced by 14 x 384 row + 14 x 384 column + 768 class-token tables
    assert f"{86_567_656 - 197 * 768 + 2 * 14 * 384 + 768:,}" in run("info", "vit_base_patch16_224", "--set", "pos_embed=learned_2d")
    # the paper's figure is for its own input size: named where the count is at another
    out = run("info", "vit_base_patch16_224", "--img-size", "384")
    assert "at 384x384 (paper: 17.6 at 224x224)" in out, out


def test_cli_errors_are_one_line():
    r = _cli("info", "vit_bass_patch16_224")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "did you mean" in r.stderr and "vit_base_patch16_224" in r.stderr


def test_console_script_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "visionzoo")
    assert os.path.exists(exe), "the visionzoo entry point is not installed next to the interpreter"
    r = subprocess.run([exe, "list", "deit*"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "deit_tiny_distilled_patch16_224" in r.stdout


def test_cli_debug_shows_traceback():
    r = _cli("--debug", "info", "vit_bass_patch16_224")
    assert r.returncode != 0 and "Traceback" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (("bench", "vit_tiny_patch16_244"), "did you mean"),
        (("bench", "vit_tiny_patch16_224", "--batch-size", "0"), "--batch-size must be positive"),
        (("bench", "vit_tiny_patch16_224", "--compare", "torchvision"), "--compare supports 'timm' only"),
        (("bench", "vit_tiny_patch16_224", "--rounds", "0"), "--rounds must be at least 1"),
        (("bench", "vit_tiny_patch16_224", "--warmup", "-1"), "--warmup must be at least 0"),
        (("bench", "convnext_tiny", "--img-size", "20"), "cannot take img_size 20x20"),
        (("bench", "resnet18", "--device", "mps"), "--device must be cpu, cuda or cuda:N"),
        (("bench", "resnet18", "--device", "cuda:99"), "--device cuda:99: "),
        (("bench", "zzz*"), "no model matches 'zzz*'"),
        (("export", "vit_tiny_patch16_224", "--output", "model.pt"), "--output must end in .onnx"),
        (("export", "vit_tiny_patch16_224", "--output", "m.onnx", "--opset", "3"), "--opset must be between"),
        (("info", "vit_tiny_patch16_224", "--set", "pos_embed"), "--set expects KEY=VALUE"),
        (("info", "vit_tiny_patch16_224", "--set", "depth_typo=3"), "unknown option"),
        (("list", "--family", "vits"), "unknown family 'vits'; families: coatnet"),
        (("windows", "--size", "14", "--width", "0", "--output", "w.png"), "--width must be positive, got 0"),
        (("attention", "distance", "vit_tiny_patch16_224", "--img-size", "0", "--output", "a.png"), "--img-size must be positive, got 0"),
        (("predict", "x.png", "--checkpoint", "c.pth", "--device", "gpu"), "--device must be cpu, cuda or cuda:N"),
        (("export", "resnet18", "--output", f"{sys.executable}/x.onnx"), "is a file, not a folder"),
    ],
)
def test_cli_argument_errors_are_one_line(args, message, capsys):
    """Exit code 2, one line on stderr, nothing half-done on stdout (a table header, say). In
    process: the installed command's own handling of an error is test_cli_errors_are_one_line's."""
    _one_line_error(list(args), capsys, message)


@pytest.mark.parametrize("name, size", [("resnet18", 96), ("convnext_tiny", 96), ("vit_tiny_patch16_224", 224), ("swin_tiny_patch4_window7_224", 224)])
def test_timm_reset_classifier_with_global_pool(name, size):
    """timm's ``reset_classifier(num_classes, global_pool)``: ``(0, '')`` gives timm's unpooled
    features, ``(0, 'avg')`` pools again (ViT: also ``'token'``), a new classifier has the new
    width; ``(5, '')`` is refused before anything changes."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ours = visionzoo.create_model(name, num_classes=10).eval()
    ref = timm.create_model(name, num_classes=10).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, size, size)

    def same():
        with torch.no_grad():
            y, r = ours(x), ref(x)
        assert y.shape == r.shape
        torch.testing.assert_close(y, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))

    head = ours.get_classifier()
    with pytest.raises(ValueError, match="num_classes=0"):
        ours.reset_classifier(5, "")
    with pytest.raises(ValueError, match="global_pool"):
        ours.reset_classifier(5, "maxx")
    assert ours.get_classifier() is head and ours.num_classes == 10 and ours(x).shape == (2, 10)
    for pool in ("", "avg", *(("token", "avg") if name.startswith("vit") else ())):
        ours.reset_classifier(0, pool)
        ref.reset_classifier(0, pool)
        same()
    ours.reset_classifier(7)
    assert ours(x).shape == (2, 7) and ours.num_classes == 7


@pytest.mark.parametrize("name, size", [("deit_tiny_patch16_224", 64), ("swin_t", 64), ("swin_mlp_tiny_c24_patch4_window8_256", 64),
                                        ("nest_tiny_cifar", 32), ("coatnet_0_224", 64), ("densenet121", 64)])
def test_drop_rates_mean_what_timm_calls_them(name, size):
    """``drop_rate`` is dropout before the classifier only, as in timm; ``proj_drop_rate`` the
    dropout inside the blocks (ViT also has ``pos_drop_rate``, transformers ``attn_drop_rate``)."""
    x = torch.randn(2, 3, size, size)

    def varies(model, fn):  # two calls in training mode differ: a dropout acted
        model.train()
        with torch.no_grad():
            return not torch.equal(fn(model), fn(model))

    for kwargs, in_body, in_head in (({"drop_rate": 0.5}, False, True), ({"proj_drop_rate": 0.5}, True, False)):
        model = visionzoo.create_model(name, num_classes=5, **kwargs)
        features = model.eval().forward_features(x).detach()
        assert varies(model, lambda m: m.forward_features(x)) == in_body, kwargs
        assert varies(model, lambda m: m.forward_head(features, pre_logits=True)) == in_head, kwargs


def test_distilled_head_takes_the_class_token_pool_only():
    """As timm: DeiT's distilled head reads the class and distillation tokens, so average pooling
    is refused (it used to be accepted and ignored, with the final norm dropped)."""
    with pytest.raises(ValueError, match="distill.*'token' only"):
        visionzoo.create_model("deit_tiny_distilled_patch16_224", global_pool="avg")
    model = visionzoo.create_model("deit_tiny_distilled_patch16_224", num_classes=3)
    with pytest.raises(ValueError, match="distill.*'token' only"):
        model.reset_classifier(0, "avg")
    assert model.num_classes == 3 and model.global_pool == "token"


def test_timm_style_pretrained_argument():
    """timm code passes pretrained=...: False is accepted, True says how to load weights instead."""
    assert visionzoo.create_model("resnet18", pretrained=False, num_classes=3).num_classes == 3
    with pytest.raises(ValueError, match="downloads no weights.*checkpoint=PATH"):
        visionzoo.create_model("resnet18", pretrained=True)


def test_none_arguments_mean_the_default_as_in_timm():
    """timm drops arguments given as None, and its training script passes every unset option so:
    the same call builds the default model here (it was refused: 'num_classes must be an int
    >= 0, got None', then 'unknown option(s) ['bn_eps', 'bn_momentum', 'drop_block_rate']')."""
    import timm

    kw = dict(pretrained=False, in_chans=3, num_classes=None, drop_rate=None, drop_path_rate=None, drop_block_rate=None,
              global_pool=None, bn_momentum=None, bn_eps=None, scriptable=None, checkpoint_path=None, pretrained_cfg=None)
    with torch.device("meta"):
        for name in ("resnet50", "vit_small_patch16_224"):
            ours, ref = visionzoo.create_model(name, **kw), timm.create_model(name, **kw)
            assert ours.num_classes == ref.num_classes == 1000
            assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
        # where None is a value of its own it stays one: ConvNeXt without LayerScale, CoAtNet without pre-logits
        assert not any("gamma" in n for n, _ in visionzoo.create_model("convnext_tiny", ls_init_value=None).named_parameters())
        counts = [sum(p.numel() for p in visionzoo.create_model("coatnet_0_224", **kw).parameters())
                  for kw in (dict(head_hidden_size=None), {})]
        assert counts[1] - counts[0] == 768 * 768 + 768  # the 768 -> 768 pre-logits layer


def test_timms_tagged_names_build_the_architecture():
    """timm names weight sets 'architecture.tag' (its model cards and docs do): the same name
    builds the architecture here, the tag kept in default_cfg; weights loaded under a tag warn
    that the preprocessing is the architecture's unless the overlay gives it. A Hub name is
    refused in one line (nothing downloads). Before: 'unknown model 'resnet18.a1_in1k''."""
    import warnings

    ref = visionzoo.create_model("resnet18", num_classes=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = visionzoo.create_model("resnet18.a1_in1k", num_classes=3)  # random weights: nothing to warn about
        assert (m.model_name, m.default_cfg["architecture"], m.default_cfg["tag"]) == ("resnet18", "resnet18", "a1_in1k")
        visionzoo.create_model("resnet18.a1_in1k", num_classes=3, checkpoint=ref.state_dict(),
                               pretrained_cfg_overlay=dict(interpolation="bicubic", crop_pct=0.95))
    with pytest.warns(UserWarning, match=r"^resnet18.a1_in1k: visionzoo does not know the preprocessing .*interpolation 'bilinear', crop_pct 0.875"):
        m = visionzoo.create_model("resnet18.a1_in1k", num_classes=3, checkpoint=ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(m.eval()(x), ref.eval()(x))
    assert visionzoo.create_model("vit_b_16.tv_in1k", device="meta").model_name == "vit_base_patch16_224"  # an alias with a tag
    with pytest.raises(visionzoo.UnknownModelError, match="^'hf-hub:timm/resnet18.a1_in1k' names weights to download .* downloads nothing"):
        visionzoo.create_model("hf-hub:timm/resnet18.a1_in1k")


def test_device_and_dtype_build_the_model_there_as_timm():
    """create_model(device=, dtype=), timm's arguments: parameters and buffers on the device, floating
    ones in the type; a forward runs in it. Bad values and a checkpoint for a meta model: one line."""
    meta = visionzoo.create_model("vit_base_patch16_224", device="meta", dtype=torch.bfloat16)
    assert {t.device.type for t in [*meta.parameters(), *meta.buffers()]} == {"meta"}
    assert {p.dtype for p in meta.parameters()} == {torch.bfloat16}
    torch.manual_seed(0)
    m = visionzoo.create_model("resnet18", num_classes=3, dtype=torch.float64, device=torch.device("cpu")).eval()
    assert {p.dtype for p in m.parameters()} == {torch.float64} and m.bn1.num_batches_tracked.dtype == torch.long
    assert m(torch.randn(1, 3, 64, 64, dtype=torch.float64)).dtype == torch.float64
    for kw, match in [(dict(device="gpu0"), "device takes a torch.device or a name like 'cpu'"),
                      (dict(dtype=torch.int64), "dtype takes a floating torch.dtype"),
                      (dict(dtype="bfloat16"), "dtype takes a floating torch.dtype"),
                      (dict(device="meta", checkpoint=m.state_dict()), "a model on the meta device holds no values")]:
        with pytest.raises(ValueError, match=f"^resnet18: {match}"):
            visionzoo.create_model("resnet18", num_classes=3, **kw)


@pytest.mark.parametrize("name, size", [("resnet18", 96), ("convnext_tiny", 96), ("coatnet_0_224", 224), ("vgg11", 224),
                                        ("vit_tiny_patch16_224", 224), ("vit_wee_patch16_reg1_gap_256", 256), ("eva02_tiny_patch14_224", 224),
                                        ("swin_tiny_patch4_window7_224", 224), ("inception_v3", 160)])
def test_timm_global_pool_empty_returns_timms_unpooled_features(name, size):
    """create_model(name, num_classes=0, global_pool='') as in timm: the same unpooled output
    (ConvNeXt: after the head's norm; CoAtNet: after its norm and tanh pre-logits, per position)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ours = visionzoo.create_model(name, num_classes=0, global_pool="").eval()
    ref = timm.create_model(name, num_classes=0, global_pool="").eval()
    sd = ours.state_dict()
    if name.startswith("coatnet"):  # timm's unpooled head runs its pre-logits layer as a 1x1 convolution
        sd["head.pre_logits.fc.weight"] = sd["head.pre_logits.fc.weight"][:, :, None, None]
    if name == "vgg11":  # timm's fc6 / fc7 are convolutions
        sd["pre_logits.fc1.weight"] = sd["pre_logits.fc1.weight"].view(4096, 512, 7, 7)
        sd["pre_logits.fc2.weight"] = sd["pre_logits.fc2.weight"][:, :, None, None]
    assert not ref.load_state_dict(sd, strict=False).missing_keys
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        y, r = ours(x), ref(x)
    assert y.shape == r.shape
    torch.testing.assert_close(y, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))
    # and the other way: timm's state dict of such a model loads (convolution kernels flattened)
    again = visionzoo.create_model(name, num_classes=0, global_pool="", checkpoint=ref.state_dict()).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_classes=0"):
        visionzoo.create_model(name, num_classes=3, global_pool="")
    if not name.startswith(("vit", "eva")):  # ViT has its own option ('token' / 'avg')
        with pytest.raises(ValueError, match="head takes global_pool 'avg'"):
            visionzoo.create_model(name, num_classes=0, global_pool="maxx")


@pytest.mark.parametrize("name, kw", [("vit_tiny_patch16_224", dict(global_pool="avg")), ("vit_wee_patch16_reg1_gap_256", {}),
                                      ("eva02_tiny_patch14_224", {}), ("vit_tiny_patch16_224", {})])
def test_reset_classifier_to_unpooled_tokens_keeps_the_pooled_heads_norm(name, kw):
    """reset_classifier(0, '') on a ViT whose head pools the patch tokens and then normalises
    (fc_norm): timm returns fc_norm of every token; visionzoo returned the tokens unnormalised."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model(name, img_size=112, **kw).eval()
    ours = visionzoo.create_model(name, img_size=112, checkpoint=ref.state_dict(), **kw).eval()
    with torch.no_grad():
        for p in ref.fc_norm.parameters():
            p.normal_()
        ours.load_state_dict(ref.state_dict())
    ref.reset_classifier(0, "")
    ours.reset_classifier(0, "")
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        y, r = ours(x), ref(x)
    assert y.shape == r.shape == (2, ours.num_prefix_tokens + math.prod(ours.grid_size), ours.embed_dim)
    torch.testing.assert_close(y, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))


def _pooling_families():
    from family_models import smallest_per_family

    from visionzoo.layers import POOL_TYPES
    from visionzoo.registry import get_entry

    return [n for n in smallest_per_family().values() if get_entry(n).model_cls.pool_types == POOL_TYPES]


@pytest.mark.parametrize("name", _pooling_families())
def test_timms_global_pool_types(name):
    """timm's 'max', 'avgmax' and 'catavgmax' (twice the width: a classifier for 2C inputs) in every
    family whose head pools a map: the pre-logits are those pools of forward_features."""
    from family_models import small_side

    torch.manual_seed(0)
    model = visionzoo.create_model(name, num_classes=3)
    x = torch.randn(2, 3, small_side(model), small_side(model))
    pools = {"avg": lambda f: f.mean((2, 3)), "max": lambda f: f.amax((2, 3)),
             "avgmax": lambda f: (f.mean((2, 3)) + f.amax((2, 3))) / 2, "catavgmax": lambda f: torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)}
    assert set(model.pool_types) == set(pools)
    for pool, expected in pools.items():
        model = visionzoo.create_model(name, num_classes=3, global_pool=pool).eval()
        with torch.no_grad():
            f = model.forward_features(x)
            pre = model.forward_head(f, pre_logits=True)
            nchw = f if f.shape[1] == model.num_features else f.permute(0, 3, 1, 2)  # (Swin's features are channels-last)
            torch.testing.assert_close(pre, expected(nchw))
            torch.testing.assert_close(model(x), model.get_classifier()(pre), rtol=1e-4, atol=1e-5)
        assert model.head_hidden_size == pre.shape[1] == model.num_features * (2 if pool == "catavgmax" else 1)
    model.reset_classifier(5, "avg")  # back to C inputs
    assert model.get_classifier().in_features == model.num_features and model(x).shape == (2, 5)


_ALL_POOLS, _NORM_POOLS = ("max", "avgmax", "catavgmax"), ("max", "avgmax")


@pytest.mark.parametrize("name, size, kwargs, pools", [
    ("resnet18", 64, {}, _ALL_POOLS), ("regnetx_002", 64, {}, _ALL_POOLS), ("inception_v3", 128, {}, _ALL_POOLS),
    ("swin_tiny_patch4_window7_224", 112, {"img_size": 112}, _ALL_POOLS),
    # heads that normalise the pooled features (final norm after the pool) take the pools of one width
    ("vit_tiny_patch16_224", 64, {"img_size": 64}, _NORM_POOLS), ("convnext_tiny", 64, {}, _NORM_POOLS),
    ("coatnet_0_224", 64, {"img_size": 64}, _NORM_POOLS),
])
def test_global_pool_types_equal_timms(name, size, kwargs, pools):
    """The same logits as timm for each pool with the same weights (a timm state dict with a 2C classifier loads)."""
    timm = pytest.importorskip("timm")
    from visionzoo.testing import build_random

    x = torch.randn(2, 3, size, size)
    if pools == _NORM_POOLS:
        with pytest.raises(ValueError, match="global_pool"):
            visionzoo.create_model(name, num_classes=7, global_pool="catavgmax", **kwargs)
    for pool in pools:
        ref = build_random(lambda: timm.create_model(name, num_classes=7, global_pool=pool, **kwargs)).eval()
        ours = visionzoo.create_model(name, num_classes=7, global_pool=pool, checkpoint=ref.state_dict(), **kwargs).eval()
        with torch.no_grad():
            r = ref(x)
            torch.testing.assert_close(ours(x), r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))


@pytest.mark.parametrize("name, kwargs", [
    ("eva02_tiny_patch14_224", {"global_pool": "map"}),  # the attention pool's MLP: GELU in timm's EVA (was the blocks' SiLU)
    ("eva02_tiny_patch14_224", {"global_pool": "max"}),  # EVA: the tokens' final norm for max / avgmax, fc_norm only for avg
    ("eva02_tiny_patch14_224", {"global_pool": "avgmax"}),
    ("vit_wee_patch16_reg1_gap_256", {"final_norm": False}),  # no fc_norm either, as timm's ViT
    ("vit_tiny_patch16_224", {"final_norm": False, "global_pool": "avg"}),
    ("vit_base_patch16_siglip_224", {"global_pool": "", "num_classes": 0}),  # no attention pool (was kept, unused)
    ("vit_base_r50_s16_224", {"pre_norm": True, "num_classes": 0}),  # the hybrid's projection without bias, as the plain one's
])
def test_head_options_build_timms_head(name, kwargs):
    """Options timm takes that visionzoo accepted and built another head for: the same state
    dict (timm's loads) and the same outputs."""
    timm = pytest.importorskip("timm")
    from visionzoo.testing import build_random

    side = 56 if "patch14" in name else 64
    kw = {"depth": 1, "img_size": side, **kwargs}
    if "r50" in name:
        kw.pop("depth")  # (the hybrid's 12 blocks at 64 px: a 4x4 grid)
    ref = build_random(lambda: timm.create_model(name, **kw)).eval()
    ours = visionzoo.create_model(name, checkpoint=ref.state_dict(), **kw).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        r = ref(x)
        torch.testing.assert_close(ours(x), r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))


def test_attention_pool_goes_with_global_pool_empty_as_in_timm():
    """reset_classifier(0, '') drops a SigLIP's attention pool (timm's; its checkpoints of such a
    model have none); a refused pool changes nothing."""
    m = visionzoo.create_model("vit_base_patch16_siglip_224", depth=1, img_size=64, device="meta")
    with pytest.raises(ValueError, match="needs a class token"):
        m.set_global_pool("token")
    assert m.attn_pool is not None and m.global_pool == "map"
    m.reset_classifier(0, "")
    assert m.attn_pool is None and not any(k.startswith("attn_pool") for k in m.state_dict())


@pytest.mark.parametrize("name", ["vit_huge_patch14_224", "vit_large_patch32_224", "vit_base_r50_s16_224"])
def test_backbone_names_default_to_timms_class_count(name):
    """timm's weights for these names are ImageNet-21k backbones without a classifier (num_classes 0)."""
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        ours, ref = visionzoo.create_model(name), timm.create_model(name)
    assert ours.num_classes == ref.num_classes == ours.default_cfg["num_classes"] == 0
    assert isinstance(ours.get_classifier(), torch.nn.Identity)


# (name, create_model kwargs for both libraries, input side)
_INTERMEDIATES = [
    ("resnet18", {}, 64),
    ("convnext_tiny", {}, 64),
    ("efficientnet_b0", {}, 64),
    ("coatnet_0_224", {"img_size": 64}, 64),
    ("nest_tiny", {"img_size": 64}, 64),
    ("swin_tiny_patch4_window7_224", {"img_size": 112}, 112),
    ("vit_tiny_patch16_224", {"img_size": 64}, 64),
    ("vit_tiny_patch16_224", {"img_size": 64, "class_token": False, "global_pool": "avg"}, 64),  # no prefix tokens
    ("convmixer_768_32", {}, 56),
]


@pytest.mark.parametrize("name, kwargs, size", _INTERMEDIATES, ids=[c[0] for c in _INTERMEDIATES])
def test_forward_intermediates_equals_timms(name, kwargs, size):
    """forward_intermediates as timm's: (final features, maps) or the maps alone, indices None /
    last n / a list with negatives, the final norm on the maps it fits; ViT also NLC and prefix tokens."""
    timm = pytest.importorskip("timm")
    from visionzoo.testing import build_random

    ref = build_random(lambda: timm.create_model(name, num_classes=5, **kwargs)).eval()
    ours = visionzoo.create_model(name, num_classes=5, checkpoint=ref.state_dict(), **kwargs).eval()
    x = torch.randn(2, 3, size, size)

    tol = 5e-4 if name == "convmixer_768_32" else 1e-4  # fp32 rounding through its 32 blocks reaches ~4e-4 of the maps' scale

    def close(a, b):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.abs().max()))

    n = len(ours.feature_info)
    calls = [{}, {"indices": 2, "norm": True}, {"indices": [0, -1], "norm": True}, {"indices": [n - 1, 1], "intermediates_only": True, "stop_early": True},
             {"indices": [-1], "stop_early": True}]
    if not name.startswith("swin"):  # (timm's Swin applies its last stage's norm to the stopped map: a width error)
        # stopped after map 1: that map is the features (timm's ViT: its tokens through the final norm)
        calls += [{"indices": [0, 1], "stop_early": True}, {"indices": [1], "stop_early": True, "norm": True}]
    else:
        with torch.no_grad():
            features, maps = ours.forward_intermediates(x, [0, 1], stop_early=True)
        assert torch.equal(features, maps[-1].permute(0, 2, 3, 1))  # (B, H, W, C), as its forward_features
    if name.startswith("vit"):
        calls += [{"indices": 3, "output_fmt": "NLC", "norm": True}, {"indices": [1], "return_prefix_tokens": True, "intermediates_only": True},
                  {"indices": 2, "output_dict": True, "return_prefix_tokens": True}, {"output_dict": True, "intermediates_only": True, "norm": True}]
        with torch.no_grad():  # the DINO interface on top of it
            for kw in ({}, {"n": 2, "reshape": True, "norm": True}, {"n": [0, 4], "return_prefix_tokens": True}):
                got, want = ours.get_intermediate_layers(x, **kw), ref.get_intermediate_layers(x, **kw)
                for g, w in zip(got, want, strict=True):
                    for a, b in zip(g, w) if isinstance(w, tuple) else [(g, w)]:
                        close(a, b)
    with torch.no_grad():
        for kw in calls:
            got, want = ours.forward_intermediates(x, **kw), ref.forward_intermediates(x, **kw)
            if kw.get("output_dict"):  # timm's ViT: {"image_intermediates", "image_features", "image_intermediates_prefix"}
                assert got.keys() == want.keys(), kw
                if "image_features" in want:
                    close(got["image_features"], want["image_features"])
                got = list(zip(got["image_intermediates"], got.get("image_intermediates_prefix", got["image_intermediates"])))
                want = list(zip(want["image_intermediates"], want.get("image_intermediates_prefix", want["image_intermediates"])))
            elif not kw.get("intermediates_only"):
                close(got[0], want[0])
                got, want = got[1], want[1]
            assert len(got) == len(want), kw
            for g, w in zip(got, want):
                assert type(g) is type(w), kw  # (pairs with prefix tokens only where the model has them)
                for a, b in zip(g, w) if isinstance(w, tuple) else [(g, w)]:  # (map, prefix tokens)
                    assert a.shape == b.shape, kw
                    close(a, b)


def test_forward_intermediates_refuses_bad_requests():
    m = visionzoo.create_model("resnet18", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    for bad, match in [(6, "last 6"), ([0, 5], "out of range"), ([-6], "out of range"), (0, "last 0"), ([], "empty"), ([1.5], "integers"), (True, "a count"), ("12", "a count")]:
        with pytest.raises(ValueError, match=match):
            m.forward_intermediates(x, bad)
    with pytest.raises(ValueError, match="output_fmt must be one of 'NCHW', 'NHWC', 'NLC'"):
        m.forward_intermediates(x, output_fmt="CHW")
    # out of order and repeated indices: network order, each map once (timm's rule)
    maps = m.forward_intermediates(x, [3, 1, 3], intermediates_only=True)
    assert [t.shape[1] for t in maps] == [64, 256]  # layer1, layer3
    nlc = m.forward_intermediates(x, [-1], intermediates_only=True, output_fmt="NLC")[0]
    assert nlc.shape == (1, 2 * 2, 512)
    feats = visionzoo.create_model("resnet18", features_only=True)
    with pytest.raises(ValueError, match="features_only=True"):
        feats.forward_intermediates(x)


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny", "efficientnet_b0", "swin_tiny_patch4_window7_224", "vit_small_patch16_224", "convmixer_768_32", "densenet121"])
def test_feature_info_accessors_equal_timms(name):
    """backbone.feature_info.channels() / reduction() / module_name() / out_indices, as FPN code
    calls them on a timm backbone, for the default maps and for chosen out_indices."""
    timm = pytest.importorskip("timm")
    for kw in ({}, {"out_indices": (1, 3)}, {"out_indices": 2}):
        with torch.device("meta"):
            ours = visionzoo.create_model(name, features_only=True, **kw).feature_info
            ref = timm.create_model(name, features_only=True, **kw).feature_info
        assert ours.channels() == ref.channels() and ours.reduction() == ref.reduction(), kw
        if not isinstance(kw.get("out_indices"), int):  # (timm lists a count n as -n..-1 for some families)
            assert ours.out_indices == ref.out_indices, kw
        if name != "densenet121":  # (timm's norm0 applies the ReLU too; ours is a module of its own, relu0)
            assert ours.module_name() == ref.module_name(), kw
        assert ours.channels(1) == ref.channels(1) and ours.get_dicts(keys=("num_chs",)) == ref.get_dicts(keys=("num_chs",))
    full = visionzoo.create_model(name, num_classes=3).feature_info  # every map of the classifier
    assert full.out_indices == tuple(range(len(full))) and full.channels(-1) == full[-1].num_chs


@pytest.mark.parametrize("name, kwargs", [(n, {}) for n in ("vgg11", "vgg16_bn", "resnet50", "coatnet_0_224", "vit_small_patch16_224", "efficientnet_b0", "hrnet_w18_small")]
                         + [("coatnet_0_224", {"head_hidden_size": 64})])
def test_num_features_and_head_hidden_size_are_timms(name, kwargs):
    """num_features: channels of forward_features' output; head_hidden_size: what the classifier
    sees (they differ for VGG, 512 and 4096, and a CoAtNet with a pre-logits layer of another
    width, whose num_features followed it), as timm's attributes."""
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        ours, ref = visionzoo.create_model(name, **kwargs), timm.create_model(name, **kwargs)
    assert (ours.num_features, ours.head_hidden_size) == (ref.num_features, ref.head_hidden_size)
    x = torch.randn(1, 3, 64, 64)
    m = visionzoo.create_model(name, **kwargs).eval()
    with torch.no_grad():
        features = m.forward_features(x)  # (B, C, H, W) maps, ViT's (B, N, C) tokens
        assert features.shape[1 if features.ndim == 4 else -1] == m.num_features
        assert m.forward_head(features, pre_logits=True).shape == (1, m.head_hidden_size)


@pytest.mark.parametrize("name, kwargs, size", [("resnet18", {}, 64), ("vit_tiny_patch16_224", {"img_size": 64}, 64), ("swin_tiny_patch4_window7_224", {"img_size": 112}, 112)])
def test_prune_intermediate_layers(name, kwargs, size):
    """timm's prune_intermediate_layers: the kept maps unchanged (with the final norm kept for
    norm=True unless prune_norm), fewer parameters, and a clear error for what is gone."""
    full = visionzoo.create_model(name, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    n = len(full.feature_info)
    for indices, norm in (([1, 2], False), (2, True), ([-1], True)):
        pruned = visionzoo.create_model(name, checkpoint=full.state_dict(), **kwargs).eval()
        take = pruned.prune_intermediate_layers(indices)
        assert take == full.take_indices(indices)
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in full.parameters())
        with torch.no_grad():
            got = pruned.forward_intermediates(x, take, norm=norm, intermediates_only=True)
            want = full.forward_intermediates(x, take, norm=norm, intermediates_only=True)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)
    pruned = visionzoo.create_model(name, **kwargs).eval()
    pruned.prune_intermediate_layers([1])  # (an int n would keep the last n maps)
    with pytest.raises(ValueError, match="pruned after feature map 1"):
        pruned.forward_intermediates(x, [1])  # the final features are gone
    with pytest.raises(ValueError, match="pruned after feature map 1"):
        pruned.forward_intermediates(x, [n - 1], intermediates_only=True)
    with pytest.raises(ValueError, match="prune_head=False"):
        visionzoo.create_model(name, **kwargs).prune_intermediate_layers([1], prune_head=False)


@pytest.mark.parametrize("name, keep, size", [
    ("swin_tiny_patch4_window7_224", [1], 112), ("nest_tiny", [0], 64), ("convnext_tiny", [1], 64),
    ("efficientnet_b0", [1], 64), ("mobilenetv2_100", [2], 64), ("vit_tiny_patch16_224", [5], 64), ("hrnet_w18_small", [1], 64),
])
def test_pruned_forward_features_end_at_the_last_map_left(name, keep, size):
    """After prune_intermediate_layers, forward_features returns the last map left, as timm's:
    a final norm sized for a stage that is gone goes (Swin, NesT crashed on it), EfficientNet
    no longer applies its activation a second time, HRNet no longer fails on its pruned head;
    num_features follows. (timm's pruned HRNet keeps its own head-less fusion, so HRNet is
    checked against its own forward_intermediates.)"""
    timm = pytest.importorskip("timm")
    from visionzoo.testing import build_random, max_rel_diff

    kw = {"img_size": size} if name.split("_")[0] in ("swin", "nest", "vit") else {}
    ref = build_random(lambda: timm.create_model(name, **kw))
    ours = visionzoo.create_model(name, checkpoint=ref.state_dict(), **kw).eval()
    x = torch.randn(1, 3, size, size)
    take = ours.prune_intermediate_layers(keep)
    ref.prune_intermediate_layers(keep)
    with torch.no_grad():
        got = ours.forward_features(x)
        if name.startswith("hrnet"):
            want = ours.forward_intermediates(x, take, intermediates_only=True)[-1]
            assert ours.num_features == ours.feature_info[take[-1]].num_chs == got.shape[1]
        else:
            want = ref.forward_features(x)
            assert ours.num_features == ref.num_features
    assert got.shape == want.shape and max_rel_diff(got, want) < 1e-5
    with torch.no_grad():  # forward: those features, neither pooled nor classified (ConvNeXt's raised)
        out = ours(x)
    assert out.shape == got.shape and max_rel_diff(out, got) < 1e-5


def test_timms_ways_of_naming_local_weights(tmp_path):
    """timm code loads local weights with ``checkpoint_path=PATH`` or ``pretrained=True,
    pretrained_cfg_overlay=dict(file=PATH)``: both load here as ``checkpoint=PATH`` does (a
    classifier of another size left initialised, as timm's pretrained loading does);
    the overlay's preprocessing keys reach ``default_cfg``; a download source is refused."""
    import timm

    ref = timm.create_model("resnet18", num_classes=4)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    x = torch.randn(1, 3, 64, 64)
    expect = ref.eval()(x)
    a = visionzoo.create_model("resnet18", num_classes=4, checkpoint_path=path).eval()
    b = visionzoo.create_model("resnet18", num_classes=4, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), crop_pct=0.95)).eval()
    c = visionzoo.create_model("resnet18", num_classes=4, pretrained=True, checkpoint=path).eval()
    with torch.no_grad():
        for m in (a, b, c):
            torch.testing.assert_close(m(x), expect, rtol=1e-4, atol=1e-5)
    assert b.default_cfg["crop_pct"] == 0.95 and a.default_cfg["crop_pct"] == 0.875
    with pytest.raises(ValueError, match="checkpoint_path.*checkpoint.*one"):
        visionzoo.create_model("resnet18", checkpoint=path, checkpoint_path=path)
    with pytest.raises(ValueError, match="downloads no weights.*'url'"):
        visionzoo.create_model("resnet18", pretrained=True, pretrained_cfg_overlay=dict(url="https://example.com/w.pth"))
    with pytest.raises(ValueError, match="pretrained_cfg_overlay.*'file'.*only with pretrained=True"):
        visionzoo.create_model("resnet18", pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(ValueError, match="pretrained_cfg_overlay takes a dict"):
        visionzoo.create_model("resnet18", pretrained_cfg_overlay=str(path))
    with pytest.raises(ValueError, match="scriptable.*torch.jit.trace"):
        visionzoo.create_model("resnet18", scriptable=True)
    for flag in ("exportable", "no_jit", "scriptable"):  # timm's layer flags: False, and exportable / no_jit True, change nothing
        assert visionzoo.create_model("resnet18", **{flag: False}).num_classes == 1000
    assert visionzoo.create_model("resnet18", exportable=True, no_jit=True).num_classes == 1000


def test_the_overlays_classifier_and_input_size_are_the_defaults_as_in_timm(tmp_path):
    """timm's pretrained_cfg_overlay=dict(file=PATH, num_classes=N, input_size=(C, H, W)), which
    describes the weights, builds the model for them (N classes, C channels, H x W) where the
    arguments do not say otherwise: the same model and logits as timm's (it was refused).
    Arguments given win."""
    import timm

    from visionzoo.testing import max_rel_diff

    torch.manual_seed(0)
    path = tmp_path / "vit10.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=10, in_chans=1).state_dict(), path)
    overlay = dict(file=str(path), num_classes=10, input_size=(1, 96, 80))
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay).eval()
    ours = visionzoo.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay).eval()
    assert ours.num_classes == 10 and ours.default_cfg["input_size"] == (1, 96, 80) and ours.default_cfg["num_classes"] == 10
    x = torch.randn(2, 1, 96, 80)
    with torch.no_grad():
        assert max_rel_diff(ours(x), ref(x)) < 1e-5
    with pytest.warns(UserWarning, match="classifier head of the checkpoint has another size"):
        mine = visionzoo.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay, num_classes=3, img_size=64)
    assert mine.num_classes == 3 and mine.default_cfg["input_size"] == (1, 64, 64) and mine.default_cfg["num_classes"] == 3
    for bad in ((3, 224), (3, 0, 224), "224"):
        with pytest.raises(ValueError, match="pretrained_cfg_overlay's input_size takes"):
            visionzoo.create_model("resnet18", pretrained_cfg_overlay=dict(input_size=bad))
    with pytest.raises(ValueError, match="num_classes"):
        visionzoo.create_model("resnet18", pretrained_cfg_overlay=dict(num_classes=-1))
