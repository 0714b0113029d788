"""The model battery: every registered model, at a small input.

forward (shape, finite), backward (every parameter gets a gradient),
forward_head(forward_features(x)) == forward(x), reset_classifier, forward_intermediates
(the features and the maps from one pass), and features_only maps matching feature_info
and forward_intermediates.
"""

import math

import pytest
import torch

import visionzoo
from visionzoo.base import VisionModel
from visionzoo.layers import conv as conv_module
from visionzoo.registry import get_entry

from family_models import BATTERY_DEFAULT_MAX_PARAMS, full_params, meta_facts, shallow_options, smallest_per_family

ALL_MODELS = visionzoo.list_models()
# the larger variants (mostly a family's deeper or wider copies of the same code) run under -m slow
_BATTERY = [
    n if full_params()[n] <= BATTERY_DEFAULT_MAX_PARAMS or n in smallest_per_family().values() else pytest.param(n, marks=pytest.mark.slow)
    for n in ALL_MODELS
]


def small_size(model: VisionModel) -> int:  # noqa: D401
    """The smallest side >= 32 that the network takes."""
    m = max(model.input_multiple, 1)
    side = max(model.min_input_size, 32)
    return math.ceil(side / m) * m


@pytest.mark.parametrize("name", _BATTERY)
def test_model_battery(name):
    torch.manual_seed(0)
    model = visionzoo.create_model(name, num_classes=7, **shallow_options(name))
    assert isinstance(model, VisionModel)
    assert model.default_cfg["input_size"][0] == 3
    for key in ("mean", "std", "interpolation", "crop_pct"):
        assert key in model.default_cfg
    S = small_size(model)
    x = torch.randn(2, 3, S, S)

    # forward + backward in training mode: every parameter receives a gradient
    model.train()
    out = model(x)
    if isinstance(out, tuple):  # aux / distillation heads in training
        loss = sum(o.float().pow(2).mean() for o in out)
        out = out[0]
    else:
        loss = out.float().pow(2).mean()
    assert out.shape == (2, 7)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"

    # eval: forward == forward_head(forward_features(x)); finite
    model.eval()
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 7) and torch.isfinite(y).all()
        features = model.forward_features(x)
        y2 = model.forward_head(features)
        # (forward may run in channels-last memory on a CPU: float rounding, relative to the
        # scale of the logits, which reaches 1e6 in a randomly initialised HRNet)
        torch.testing.assert_close(y2, y, rtol=1e-4, atol=1e-4 * float(y.abs().max()))
        pre = model.forward_head(features, pre_logits=True)
        # timm's forward_intermediates: forward_features and every feature map from one pass
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, features, rtol=1e-4, atol=1e-4 * float(features.abs().max()))
        assert len(inter) == len(model.feature_info)
        (last,) = model.forward_intermediates(x, 1, intermediates_only=True, output_fmt="NHWC")
        torch.testing.assert_close(last, inter[-1].permute(0, 2, 3, 1))
        assert pre.shape == (2, model.head_hidden_size)
        heads = model.get_classifier()
        heads = heads if isinstance(heads, tuple) else (heads,)
        assert all(getattr(h, "out_features", getattr(h, "out_channels", None)) == 7 for h in heads), heads
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.head_hidden_size)
        heads = model.get_classifier()
        assert all(isinstance(h, torch.nn.Identity) for h in (heads if isinstance(heads, tuple) else (heads,)))
        pool = model.global_pool  # the model's own: 'avg', or ViT's 'token'
        model.reset_classifier(0, "")  # timm's global_pool='': a map (or tokens) per image
        unpooled = model(x)
        assert unpooled.ndim in (3, 4) and unpooled.shape[0] == 2
        for pre_logits in (False, True):  # timm's head then neither pools nor classifies
            torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=pre_logits), unpooled,
                                       rtol=1e-4, atol=1e-4 * float(unpooled.abs().max()))
        with pytest.raises(ValueError, match="num_classes=0"):
            model.reset_classifier(4, "")
        if pool == "map":  # '' dropped the attention pool, as timm's reset_classifier does: it cannot come back
            with pytest.raises(ValueError, match="needs the attention pool"):
                model.reset_classifier(0, pool)
            pool = "avg"
        model.reset_classifier(0, pool)  # pooled again
        assert model(x).shape == (2, model.head_hidden_size)

    # features_only: one NCHW map per stage, as feature_info says
    info = list(model.feature_info)
    assert info, "feature_info is empty"
    model.set_features_only()
    with torch.no_grad():
        maps = model(x)
    assert isinstance(maps, list) and len(maps) == len(model.feature_info)
    for fmap, i in zip(maps, model.out_indices):  # the maps of forward_intermediates
        torch.testing.assert_close(fmap, inter[i], rtol=1e-4, atol=1e-4 * float(inter[i].abs().max()))
    for fmap, fi in zip(maps, model.feature_info):
        assert fmap.ndim == 4 and fmap.shape[0] == 2
        assert fmap.shape[1] == fi.num_chs, (fmap.shape, fi)
        for side in fmap.shape[-2:]:
            # 'valid' (unpadded) convolutions and poolings, as in the Inception networks,
            # leave maps up to 4 pixels smaller than S / reduction
            assert -4 <= side - S / fi.reduction < 1, (fmap.shape, fi, S)


def test_features_only_through_create_model():
    name = ALL_MODELS[0]
    m = visionzoo.create_model(name, features_only=True, out_indices=(-1,))
    assert len(m.feature_info) == 1
    S = small_size(m)
    (f,) = m(torch.randn(1, 3, S, S))
    assert f.shape[1] == m.feature_info[0].num_chs
    with pytest.raises(ValueError, match="out of range"):
        visionzoo.create_model(name, features_only=True, out_indices=(99,))
    # timm's int: the last n maps
    m2 = visionzoo.create_model("resnet18", features_only=True, out_indices=2)
    assert m2.out_indices == (3, 4) and m2.feature_info.reduction() == [16, 32]
    for bad, match in [((), "empty"), (9, "last 9"), ("1", "a count"), (1.0, "a count")]:
        with pytest.raises(ValueError, match=match):
            visionzoo.create_model("resnet18", features_only=True, out_indices=bad)


def _channels_last_models() -> list[str]:
    """Per family, the smallest model that runs CPU inference channels-last (a family where only
    some variants do is covered too)."""
    best: dict[str, tuple[int, str]] = {}
    for name, (n, channels_last) in meta_facts().items():
        fam = get_entry(name).family
        if channels_last and (fam not in best or n < best[fam][0]):
            best[fam] = (n, name)
    return sorted(name for _, name in best.values())


@pytest.mark.parametrize("name", _channels_last_models())
def test_cpu_inference_layout(name):
    """Families that set ``cpu_channels_last`` run CPU inference on a channels-last copy of
    the input and return maps in the ordinary layout; the result is the NCHW network's."""
    torch.manual_seed(0)
    model = visionzoo.create_model(name, num_classes=5).eval()
    S = small_size(model)
    x = torch.randn(2, 3, S, S)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    first.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y = model(x)
        model.cpu_channels_last = False
        ref = model(x)
        model.cpu_channels_last = True
    assert seen == [True, False]
    if conv_module._HAVE_PACKED_CONV:  # the convolutions ran on prepacked weights (layers.conv)
        assert any(e.name.startswith("mkldnn::_convolution_pointwise") for e in prof.events())
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    model(x)  # autograd on: the ordinary layout
    model.train()
    with torch.no_grad():
        model(x)  # training mode (batch statistics): the ordinary layout
    assert seen[-2:] == [False, False]
    model.eval().set_features_only()
    with torch.no_grad():
        maps = model(x)
        model.cpu_channels_last = False
        ref_maps = model(x)
    assert len(maps) == len(ref_maps)
    for m, r in zip(maps, ref_maps):
        assert m.is_contiguous()
        torch.testing.assert_close(m, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))


@pytest.mark.parametrize("name", sorted(smallest_per_family().values()))
def test_feature_maps_layout(name):
    """``features_only`` and ``forward_intermediates`` maps are contiguous for an NCHW input,
    as timm's ViT, Swin and CoAtNet maps are (``.view`` works), in inference and with autograd;
    a channels-last input gets channels-last maps; ``contiguous_maps = False`` (the dense
    heads') returns the maps as computed. The values are the same in every case."""
    torch.manual_seed(0)
    model = visionzoo.create_model(name).eval()
    S = small_size(model)
    x = torch.randn(2, 3, S, S)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        _, maps = model.forward_intermediates(x)
        for m in maps:
            assert m.is_contiguous()
            m.view(m.shape[0], m.shape[1], -1)
        _, maps_cl = model.forward_intermediates(x_cl)
    feats = model.set_features_only()
    with torch.no_grad():
        ref = feats(x)
    grad = feats(x)  # autograd on: no fast path
    with torch.inference_mode():
        cl = feats(x_cl)
        feats.contiguous_maps = False
        raw = feats(x)
    assert len(ref) == len(grad) == len(cl) == len(raw) == len(feats.feature_info)
    for r, g, c, w in zip(ref, grad, cl, raw):
        assert r.is_contiguous() and g.is_contiguous()
        # a channels-last input: channels-last maps (a one-channel or 1x1 map is both layouts)
        assert c.is_contiguous(memory_format=torch.channels_last)
        for other in (g, c, w):
            torch.testing.assert_close(other, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))
    for m in maps_cl:
        assert m.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", sorted(smallest_per_family().values()))
def test_an_empty_batch_gives_empty_outputs(name):
    """A batch of 0 images gives (0, classes) logits and 0-image maps of the sizes one image
    gets, in inference and with autograd. Reshapes that inferred a size (``view(B, -1, ...)``)
    failed on it in CoAtNet, Swin (where windows pad) and ViT's maps: "cannot reshape tensor of
    0 elements"."""
    model = visionzoo.create_model(name, num_classes=5).eval()
    S = small_size(model)
    empty, one = torch.randn(0, 3, S, S), torch.randn(1, 3, S, S)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            assert model(empty).shape == (0, 5)
    feats = model.set_features_only()
    with torch.no_grad():
        maps, ref = feats(empty), feats(one)
    assert [tuple(m.shape) for m in maps] == [(0, *r.shape[1:]) for r in ref]


@pytest.mark.parametrize("name", sorted(smallest_per_family().values()))
def test_nan_and_inf_in_an_image_give_nan_logits_for_it_alone_as_with_autograd(name):
    """NaN in, NaN out, in CPU inference as with autograd (and in timm): oneDNN's fused ReLU,
    ReLU6 and hard-sigmoid post-ops map NaN to 0, so ResNet, MobileNet, VGG ... gave finite logits
    for an image holding NaN. An image holding inf gets what autograd's kernels give it (ReLU6
    may clamp it to finite logits), and a clean image the logits it gets alone."""
    model = visionzoo.create_model(name, num_classes=5).eval()
    S = small_size(model)
    x = torch.randn(3, 3, S, S, generator=torch.Generator().manual_seed(0))
    x[0, 1, S // 2, S // 3] = float("nan")
    x[2, 0, 1, 1] = float("inf")
    with torch.no_grad():
        got, alone = model(x), model(x[1:2])
    ref = model(x).detach()  # autograd on: PyTorch's kernels
    assert got[0].isnan().all() and ref[0].isnan().all()
    assert torch.equal(got.isfinite(), ref.isfinite()) and torch.equal(got.isnan(), ref.isnan())
    torch.testing.assert_close(got[ref.isfinite()], ref[ref.isfinite()], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], alone[0], rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # and the next clean batch takes the fused kernels again
        torch.testing.assert_close(model(x[1:2]), alone, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny", "efficientnet_b0", "vit_tiny_patch16_224"])
def test_weights_written_through_data_are_seen_after_eval(name):
    """Writes through ``.data`` bypass the version counters that stamp the cached inference
    weights (folded BatchNorm, packed kernels, ConvNeXt's scaled fc2, reordered linear
    weights); ``eval()`` or ``clear_derived_caches`` drops the copies, and the next call uses
    the new weights."""
    from visionzoo.layers import clear_derived_caches

    torch.manual_seed(0)
    model = visionzoo.create_model(name, num_classes=5, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("gamma"):  # ConvNeXt's layer scale starts at 1e-6: make the branches count
                p.fill_(0.5)

    def scale_everything(factor):
        for t in [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]:
            t.data.mul_(factor)

    with torch.no_grad():
        model(x)  # fills the caches (linear weights are reordered on their second use)
        model(x)
    for refresh in (lambda: model.eval(), lambda: clear_derived_caches(model)):
        scale_everything(0.8)
        refresh()
        with torch.no_grad():
            fast = model(x)
        torch.testing.assert_close(fast, model(x).detach(), rtol=1e-4, atol=1e-4 * float(fast.abs().max()))


def _families() -> list[str]:
    from family_models import smallest_per_family

    return sorted(smallest_per_family())


@pytest.mark.parametrize("family", _families())
def test_grad_checkpointing_gives_the_same_gradients_from_fewer_saved_activations(family):
    """set_grad_checkpointing (timm's method): every family but VGG (as in timm) recomputes
    its blocks in the backward pass. The autograd graph then holds far fewer bytes, the
    gradients and running statistics are those of the plain model, and turning it off
    restores the plain graph."""
    import copy

    from family_models import small_side, smallest_per_family

    torch.manual_seed(0)
    model = visionzoo.create_model(smallest_per_family()[family], num_classes=5).train()
    if family == "vgg":
        with pytest.raises(ValueError, match="not supported"):
            model.set_grad_checkpointing()
        assert not model.grad_checkpointing
        return
    ckpt = copy.deepcopy(model)
    ckpt.set_grad_checkpointing()
    assert ckpt.grad_checkpointing and not model.grad_checkpointing
    S = small_side(model)
    x = torch.randn(2, 3, S, S)

    def step(m):
        """(bytes of the activations autograd keeps, by storage: parameters excluded; gradients)"""
        params = {p.untyped_storage().data_ptr() for p in m.parameters()}
        saved = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        torch.manual_seed(1)  # the same dropout masks in both models
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = m(x)
        outs = out if isinstance(out, tuple) else (out,)  # Inception's auxiliary logits in training
        sum(o.float().square().mean() for o in outs).backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        m.zero_grad(set_to_none=True)
        return sum(saved.values()), grads

    plain_bytes, plain = step(model)
    ckpt_bytes, grads = step(ckpt)
    assert ckpt_bytes < 0.6 * plain_bytes, (ckpt_bytes, plain_bytes)
    assert grads.keys() == plain.keys()
    for n, g in plain.items():
        torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=1e-5 * float(g.abs().max()) + 1e-12, msg=n)
    # the recomputation leaves BatchNorm's running statistics alone: they count the batch once
    for (n, b), b_ckpt in zip(model.named_buffers(), ckpt.buffers()):
        torch.testing.assert_close(b_ckpt, b, rtol=1e-4, atol=1e-6, msg=n)
    ckpt.set_grad_checkpointing(False)
    assert not ckpt.grad_checkpointing and step(ckpt)[0] == plain_bytes


@pytest.mark.parametrize("family", _families())
def test_batchnorms_training_inside_an_eval_model_use_the_whole_batch(family, monkeypatch):
    """Test-time adaptation (AdaBN) puts only the BatchNorms in training mode. Without autograd
    the model must still normalise with the whole batch's statistics and update the running
    statistics once: no folding of training norms, and no splitting of the batch (CoAtNet's
    MBConv splits large batches in inference; here it is made to split every batch). In fp64:
    batch statistics of small maps amplify fp32 rounding, and channels-last inference (which
    these models run) computes them in another order."""
    import copy

    from family_models import small_side, smallest_per_family

    from visionzoo.models.coatnet import MBConvBlock
    from visionzoo.testing import build_random

    monkeypatch.setattr(MBConvBlock, "chunk_elements", 1)
    torch.manual_seed(0)
    model = build_random(lambda: visionzoo.create_model(smallest_per_family()[family], num_classes=5)).double().eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        pytest.skip(f"{family} has no BatchNorm")
    for m in norms:
        m.train()
    other = copy.deepcopy(model)
    S = small_side(model)
    x = torch.randn(3, 3, S, S, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
    ref = other(x).detach()
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-7 * float(ref.abs().max()))
    for (n, a), b in zip(model.named_buffers(), other.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=n)

@pytest.mark.parametrize("family", _families())
def test_hooks_on_any_part_see_in_inference_what_they_see_with_autograd(family):
    """Inference fast paths skip modules' forward calls (folded norms, fused or reordered
    weights) or feed them another layout (Swin's stages keep tokens in window order). They
    stand aside where a part has a forward hook: with a hook on every leaf, each hook fires
    in inference with the tensors it gets with autograd on, and every leaf with weights and a
    forward is called. At the default input size, where Swin takes its window-ordered path.

    Each tensor is held to 1e-4 of its scale, or 10x its own fp32 rounding (its distance from
    the fp64 run's) where that is larger: deep in Inception v3 / v4, whose BatchNorms carry
    the statistics of a 299-px batch, fp32 rounding grows to ~1e-3 of the logits' scale, where
    a skipped module or a wrong layout differs by the scale itself."""
    from family_models import smallest_per_family

    from visionzoo.testing import build_random, max_rel_diff

    torch.manual_seed(0)
    model = build_random(lambda: visionzoo.create_model(smallest_per_family()[family], num_classes=5)).eval()
    x = torch.randn(1, *model.default_cfg["input_size"])
    seen: dict[str, list[torch.Tensor]] = {}
    leaves = {n: m for n, m in model.named_modules() if n and not any(True for _ in m.children())}
    for n, m in leaves.items():
        m.register_forward_hook(lambda m, args, out, n=n: seen.setdefault(n, []).append(out.detach().clone()) if isinstance(out, torch.Tensor) else None)
    with torch.enable_grad():
        ref = model(x).detach()
    with_grad, seen = seen, {}
    with torch.inference_mode():
        out = model(x)
    inference, seen = seen, {}
    with torch.enable_grad():  # the same network in fp64: each tensor's fp32 rounding
        exact = model.double()(x.double()).detach()
    in_fp64 = seen

    def close(a: torch.Tensor, b: torch.Tensor, b64: torch.Tensor, msg: str) -> None:
        tol = max(1e-4, 10 * max_rel_diff(b, b64.float()))
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * float(b.abs().max()) + 1e-6, msg=msg)

    close(out, ref, exact, "logits")
    weighted = {n for n, m in leaves.items() if type(m).forward is not torch.nn.Module.forward and any(True for _ in m.parameters())}
    assert weighted <= set(with_grad), f"never called: {sorted(weighted - set(with_grad))[:5]}"
    assert inference.keys() == with_grad.keys()
    for n, outs in with_grad.items():
        assert [o.shape for o in inference[n]] == [o.shape for o in outs], n
        for a, b, b64 in zip(inference[n], outs, in_fp64[n], strict=True):
            close(a, b, b64, n)

@pytest.mark.parametrize("family", _families())
def test_fp64_inference_keeps_fp64_precision(family):
    """The inference fast paths fold norms and layer scales into weights: for an fp64 model
    they fold in fp64 (fp32 folding left ~5e-8 of error in every BatchNorm family)."""
    from family_models import small_side, smallest_per_family

    from visionzoo.testing import build_random

    torch.manual_seed(0)
    model = build_random(lambda: visionzoo.create_model(smallest_per_family()[family], num_classes=5)).double().eval()
    S = small_side(model)
    x = torch.randn(2, 3, S, S, dtype=torch.float64)
    ref = model(x).detach()
    with torch.inference_mode():
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))


@pytest.mark.parametrize("family", ["coatnet", "convmixer", "densenet", "resnet"])  # each its own channels-last path
def test_vmap_over_the_images_of_a_batch_gives_the_batch_logits(family):
    """torch.vmap (per-sample gradients, ensembles) wraps its tensors, which take no memory
    formats: CPU inference moved the input to channels-last memory and failed with "NYI:
    querying is_contiguous inside of vmap" in the families with that layout (timm's models
    run), and CoAtNet's
    stem did so with autograd on too. Under vmap the plain path runs, and the images' logits
    are the batch's, with autograd off and on; an ensemble's are each model's."""
    from family_models import small_side, smallest_per_family

    from visionzoo.testing import build_random

    torch.manual_seed(0)
    model = build_random(lambda: visionzoo.create_model(smallest_per_family()[family], num_classes=5)).double().eval()
    S = small_side(model)
    x = torch.randn(2, 3, S, S, dtype=torch.float64)
    ref = model(x).detach()
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            out = torch.vmap(lambda image: model(image[None])[0])(x)
        torch.testing.assert_close(out.detach(), ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))
    # an ensemble (torch.func's recipe): vmapped weights, whose storage the weight caches cannot stamp
    other = build_random(lambda: visionzoo.create_model(smallest_per_family()[family], num_classes=5), seed=1).double().eval()
    params, buffers = torch.func.stack_module_state([model, other])
    with torch.no_grad():
        both = torch.vmap(lambda p, b: torch.func.functional_call(model, (p, b), (x,)))(params, buffers)
        torch.testing.assert_close(both, torch.stack([ref, other(x)]), rtol=1e-9, atol=1e-9 * float(ref.abs().max()))


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet50", "inception_v3"])
def test_random_test_weights_pass_the_input_to_the_logits(name):
    """visionzoo.testing.build_random, behind the equivalence tests: with BatchNorm statistics of
    a random batch, the logits of a deep CNN move with the input (by a few % of their scale or
    more). Before, EfficientNet-B0's came out the same for every input (spread 0) and ResNet-50's
    to 5e-5, so a comparison with timm could not see a wrong backbone. The statistics are
    per-channel and not the identity's, and the model comes back in eval mode."""
    from visionzoo.testing import build_random

    model = build_random(lambda: visionzoo.create_model(name, num_classes=10))
    assert not model.training
    side = 96 if name == "inception_v3" else 64
    x = torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x)
    assert (y - y.mean(0)).abs().max() > 0.02 * y.abs().max()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.running_var.std() > 0.05 * bn.running_var.mean() and bn.running_mean.std() > 0 and bn.momentum == 0.1
