"""``visionzoo rf``, ``visionzoo attention`` and ``visionzoo windows``: analysis pictures."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import CLIError, check_img_size, check_picture_output, count


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _plot(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ImportError as e:
        raise CLIError(str(e)) from None


def cmd_rf(args: argparse.Namespace) -> int:
    from ..analysis import hdc_check, plot_receptive_field
    from ..analysis.receptive import MAX_CELLS

    # (the library's messages name its arguments, kernel_size and "dilation rates")
    if args.kernel < 1:
        raise CLIError(f"--kernel must be positive, got {args.kernel}")
    if min(args.rates) < 1:
        raise CLIError(f"--rates must be positive integers, got {','.join(map(str, args.rates))}")
    check_picture_output(args.output)
    span = 1 + (args.kernel - 1) * sum(args.rates)
    if args.output and span * span > MAX_CELLS:
        raise CLIError(f"--output: the receptive field spans {span} pixels a side, too large a map to draw; "
                       "without --output the verdict is counted at any size")
    if args.output:
        verdict = _plot(plot_receptive_field, args.rates, args.output, kernel_size=args.kernel)
    else:
        verdict = hdc_check(args.rates, args.kernel)
    if args.json:
        print(json.dumps(verdict))
        return 0
    print(f"rates {args.rates}, kernel {args.kernel}: receptive field {verdict['span']}x{verdict['span']}")
    if verdict["gridding"]:
        why = f"; the rates share the factor {verdict['common_factor']}" if verdict["common_factor"] else ""
        print(f"gridding: {verdict['holes']} of {verdict['span'] ** 2} input pixels never reach the output{why}")
        print(f"suggestion (same span, no gridding): {','.join(map(str, verdict['suggestion']))}")
    else:
        print("no gridding: every pixel of the receptive field reaches the output")
    print(f"HDC (Wang et al. 2018): M = {verdict['M']}, M_2 <= K and no common factor: {'yes' if verdict['hdc_ok'] else 'no'}")
    if verdict["hdc_ok"] == verdict["gridding"]:
        first = f" (here {args.rates[0]})" if args.rates[0] != 1 else ""
        print(f"note: the rule and the count disagree; the rule is the paper's design test for groups that start at rate 1{first} "
              "with 3x3 kernels, the count above is exact for these rates")
    if args.output:
        print(f"wrote {args.output}")
    return 0


def _load_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """(model in eval mode, preprocessing). A checkpoint is read as ``export``, ``eval`` and
    ``predict`` read it (:func:`visionzoo.train.inference.load_trained`): a ``visionzoo train``
    run's architecture, input channels, size, classes and normalisation, or a foreign
    checkpoint's classifier size with the model's default_cfg. Without one, the model's
    default_cfg."""
    import visionzoo

    from ..train.inference import load_trained

    check_img_size(args.img_size)
    if args.checkpoint is not None:
        model, info = load_trained(args.checkpoint, args.name, img_size=args.img_size)
        p = info["preprocessing"]
        return model, {**p, "input_size": (p["in_chans"], p["img_size"], p["img_size"])}
    kwargs = {"img_size": args.img_size} if args.img_size is not None else {}
    model = visionzoo.create_model(args.name, **kwargs).eval()
    return model, default_preprocessing(model)


def default_preprocessing(model: Any) -> dict[str, Any]:
    """The preprocessing of :func:`_load_image` from a model's default_cfg (no checkpoint's)."""
    cfg = model.default_cfg
    C = cfg["input_size"][0]
    mean, std = (cfg["mean"], cfg["std"]) if C == 3 else ((0.0,) * C, (1.0,) * C)
    return {"input_size": tuple(cfg["input_size"]), "in_chans": C, "mean": mean, "std": std,
            "crop_pct": cfg.get("crop_pct", 1.0), "crop_mode": cfg.get("crop_mode", "center"),
            "interpolation": cfg.get("interpolation", "bicubic")}


def _random_weights_note(args: argparse.Namespace) -> None:
    """Said once the pictures are drawn, so that a refusal stays one line."""
    if args.checkpoint is None:
        print("note: random weights (pass --checkpoint for trained attention)", file=sys.stderr)


def _load_image(path: str | None, prep: dict[str, Any], *, required: bool) -> Any:
    """The image as the model sees it, (1, C, H, W): converted to its input channels (a colour
    photo to grey for a 1-channel network, as predict does), resized and normalised with
    ``prep`` (:func:`_load_model`'s); random noise of that shape where no path is given."""
    import torch

    C, H, W = prep["input_size"]
    if path is None:
        if required:
            raise CLIError("--image is required")
        return torch.randn(1, C, H, W, generator=torch.Generator().manual_seed(0))
    from ..train.data import eval_transform, load_image

    img = load_image(path)  # DataError: one line
    # the model's evaluation view (short side resized, centre crop; squashed to a square where its
    # crop_mode is "squash"): a non-square input is cropped from it, not distorted further
    side = max(H, W)
    tf = eval_transform(side, prep["mean"], prep["std"], crop_pct=prep["crop_pct"], interpolation=prep["interpolation"], in_chans=C,
                        crop_mode=prep["crop_mode"])
    x = tf(img)
    top, left = (side - H) // 2, (side - W) // 2
    return x[None, :, top : top + H, left : left + W]


def cmd_attention(args: argparse.Namespace) -> int:
    from ..analysis import plot_attention_distance, plot_attention_rollout, plot_position_embedding_similarity

    check_picture_output(args.output)
    if args.what == "rollout" and args.image is None:
        raise CLIError("--image is required")
    if args.image is not None and not os.path.isfile(args.image):
        raise CLIError(f"--image {args.image}: " + ("a folder, not an image file" if os.path.isdir(args.image) else "no such file"))
    model, prep = _load_model(args)
    if args.what == "rollout":
        x = _load_image(args.image, prep, required=True)
        _plot(plot_attention_rollout, model, x[0], args.output, head_fusion=args.head_fusion)
        _random_weights_note(args)
        print(f"wrote {args.output}")
    elif args.what == "distance":
        x = _load_image(args.image, prep, required=False)
        d = _plot(plot_attention_distance, model, x, args.output)
        _random_weights_note(args)
        for i, row in enumerate(d):
            print(f"layer {i:2d}: " + " ".join(f"{v:6.1f}" for v in row))
        print(f"wrote {args.output} (mean attention distance in pixels, per head)")
    else:
        _plot(plot_position_embedding_similarity, model, args.output)
        _random_weights_note(args)
        print(f"wrote {args.output}")
    return 0


def cmd_windows(args: argparse.Namespace) -> int:
    from ..analysis import plot_shift_window_masks

    H = args.size
    W = args.size if args.width is None else args.width
    for flag, v in (("--size", H), ("--width", W), ("--window", args.window)):
        if v < 1:
            raise CLIError(f"{flag} must be positive, got {v}")
    check_picture_output(args.output)
    import torch

    from ..models.swin import plan_windows

    # the windows a shifted Swin block takes on this map (timm's rule): a side within one window
    # gets a window of its length and no shift; a longer side is padded to a multiple of the window
    plan = plan_windows(H, W, (args.window, args.window), True, torch.device("cpu"))
    (Mh, Mw), (Hp, Wp) = plan.window, plan.padded
    if args.shift is not None and not 0 <= args.shift < args.window:
        raise CLIError(f"--shift must lie in [0, {args.window}) for a window of {args.window}, got {args.shift}")
    # (--shift sets the amount along the sides Swin shifts: those longer than the window)
    shift = plan.shift if args.shift is None else tuple(args.shift if s else 0 for s in plan.shift)
    notes = []
    if min(H, W) <= args.window:
        notes.append(f"a side no longer than the window is one window of its length, unshifted: {Mh}x{Mw}")
    if (Hp, Wp) != (H, W):
        notes.append(f"padded to {Hp}x{Wp} first")
    note = f" (as Swin: {'; '.join(notes)})" if notes else ""
    masks = _plot(plot_shift_window_masks, Hp, Wp, (Mh, Mw), shift, args.output)
    masked = int((masks != 0).any(axis=(1, 2)).sum())
    win = Mh if Mh == Mw else f"{Mh}x{Mw}"
    shown = shift[0] if shift[0] == shift[1] else f"{shift[0]}x{shift[1]}"
    print(f"{H}x{W} map, window {win}, shift {shown}{note}: {count(masks.shape[0], 'window')}, {masked} with masked pairs")
    print(f"wrote {args.output}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rf", help="receptive field of dilated convolutions: count map and gridding verdict")
    p.add_argument("--rates", type=_ints, required=True, help="dilation rates bottom to top, e.g. 1,2,5")
    p.add_argument("--kernel", type=int, default=3, help="kernel side k (default 3)")
    p.add_argument("--output", default=None, help="PNG of the count map")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.set_defaults(func=cmd_rf)

    p = sub.add_parser("attention", help="attention pictures of a ViT: rollout, distance, position embeddings")
    p.add_argument("what", choices=("rollout", "distance", "posembed"))
    p.add_argument("name", help="model name, e.g. vit_base_patch16_224")
    p.add_argument("--image", default=None, help="image file (rollout: required; distance: random noise if omitted)")
    p.add_argument("--checkpoint", default=None, help="weights: a visionzoo train run's (its architecture, channels, size and normalisation), "
                   "or any layout load_checkpoint knows")
    p.add_argument("--img-size", type=int, default=None, help="input side (default: the checkpoint's, else the model's)")
    p.add_argument("--head-fusion", default="mean", choices=("mean", "max", "min"), help="rollout: how heads combine")
    p.add_argument("--output", required=True, help="PNG to write")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("windows", help="Swin's cyclic shift and window attention masks for a feature size")
    p.add_argument("--size", type=int, required=True, help="feature map height (and width unless --width)")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--window", type=int, default=7, help="window side M (default 7)")
    p.add_argument("--shift", type=int, default=None, help="shift s along the sides longer than the window (default M // 2; the others are not shifted, as in Swin)")
    p.add_argument("--output", required=True, help="PNG to write")
    p.set_defaults(func=cmd_windows)
