"""Datasets for training and evaluation: scikit-learn's digits, torchvision's small sets, image folders.

Every builder returns a :class:`DataBundle` (train and held-out split, class names, channels,
size, normalisation). Augmentation randomness is drawn from a generator seeded by
(seed, epoch, index) for every sample (:class:`SeededTransform`), so a run resumed mid-epoch,
or one loading with worker processes, sees exactly the augmented images of an uninterrupted run.
"""

from __future__ import annotations

import math

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["CROP_MODES", "DEFAULT_VAL_SPLIT", "IMAGE_EXTENSIONS", "TORCHVISION_SETS", "DataBundle", "DataError", "build_data", "builtin_dataset",
           "eval_transform", "load_image", "visible_files"]

#: the fraction of digits, or of a folder of class folders without val/, held out for validation
DEFAULT_VAL_SPLIT = 0.2
#: eval_transform's crop modes (timm's, but for "border")
CROP_MODES = ("center", "squash")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# name -> (torchvision class, channels, native size, mean, std, horizontal flips make sense)
TORCHVISION_SETS: dict[str, tuple[str, int, int, tuple[float, ...], tuple[float, ...], bool]] = {
    "cifar10": ("CIFAR10", 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True),
    "cifar100": ("CIFAR100", 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
    "mnist": ("MNIST", 1, 28, (0.1307,), (0.3081,), False),
    "fashion_mnist": ("FashionMNIST", 1, 28, (0.2860,), (0.3530,), True),
}


class DataError(ValueError):
    """A dataset that cannot be used; the message names the path and the problem."""


class NoValFolder(DataError):
    """A folder with train/ but neither val/ nor test/, and no --val-split to hold images out of
    train/ (``visionzoo eval``, which has no --val-split, says what it takes instead)."""


@dataclass
class DataBundle:
    """A train split, a held-out split and what a model needs to know about them."""

    name: str
    train: Dataset
    val: Dataset
    classes: list[str]
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "center"
    extra: dict[str, Any] = field(default_factory=dict)
    #: said at the start of a run: how the held-out split was made where the user did not say
    split_note: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def preprocessing(self) -> dict[str, Any]:
        """What ``predict`` needs to prepare an image as in training (stored in checkpoints)."""
        return dict(
            img_size=self.img_size, in_chans=self.in_chans, mean=list(self.mean), std=list(self.std),
            interpolation=self.interpolation, crop_pct=self.crop_pct, crop_mode=self.crop_mode,
        )


# --------------------------------------------------------------------------- seeded augmentation
class SeededTransform(Dataset):
    """Applies ``transform`` to ``base[i]`` with the global RNG seeded by (seed, epoch, i).

    The caller's RNG state is saved and restored around the transform, so the training
    loop's own random draws (mixup, dropout) are not disturbed.
    """

    def __init__(self, base: Dataset, transform: Callable[[Any], Tensor], seed: int) -> None:
        self.base, self.transform, self.seed = base, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img, target = self.base[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch * 100_003 + int(i)) % (2**63))
            return self.transform(img), target


class TensorImages(Dataset):
    """(N, C, H, W) float images in [0, 1] with integer labels, a transform applied per item."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = self.images[i]
        return (self.transform(x) if self.transform else x), int(self.labels[i])


class ShiftedTensorImages(Dataset):
    """Normalised (N, C, H, W) images shifted by up to ``pad`` pixels (zero fill), the shift drawn
    from a generator seeded by (seed, epoch, index): the digits' fast augmentation (~50 us an image)."""

    def __init__(self, images: Tensor, labels: Tensor, pad: int, mean: Sequence[float], std: Sequence[float], seed: int) -> None:
        self.images = F.pad(images, (pad,) * 4)  # N, C, H + 2p, W + 2p (zeros: the digits' background)
        self.labels, self.pad, self.seed = labels, pad, seed
        self.size = images.shape[-2:]
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.epoch = 0
        self.gen = torch.Generator()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        self.gen.manual_seed((self.seed * 1_000_003 + self.epoch * 100_003 + int(i)) % (2**63))
        dy, dx = torch.randint(0, 2 * self.pad + 1, (2,), generator=self.gen).tolist()
        H, W = self.size
        x = self.images[i, :, dy : dy + H, dx : dx + W]
        return (x - self.mean) / self.std, int(self.labels[i])


class Subset(Dataset):
    def __init__(self, base: Dataset, indices: Sequence[int], transform: Callable[[Any], Tensor] | None = None) -> None:
        self.base, self.indices, self.transform = base, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x, y = self.base[self.indices[i]]
        return (self.transform(x) if self.transform else x), y


def _v2():
    from torchvision.transforms import v2

    return v2


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR, "nearest": InterpolationMode.NEAREST}.get(
        name, InterpolationMode.BILINEAR
    )


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float], *, crop_pct: float = 1.0,
                   interpolation: str = "bilinear", in_chans: int = 3, crop_mode: str = "center") -> Callable[[Any], Tensor]:
    """Resize to floor(img_size / crop_pct), centre-crop img_size, scale to [0, 1], normalise:
    timm's eval transform (it floors: Inception-v3's 299 at 0.875 resizes to 341, not 342), and
    torchvision's presets where a crop_pct states their resize (swin_t: 224 / 232).

    ``crop_mode`` as timm's: ``"center"`` resizes the short side (the aspect ratio kept),
    ``"squash"`` both sides (the whole image squashed to a square: at crop_pct 1.0 nothing is
    cropped; timm's tf_efficientnetv2_m/l/xl). timm's ``"border"`` (pad to a square) is refused.
    """
    if crop_mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {', '.join(map(repr, CROP_MODES))}, got {crop_mode!r}")
    v2 = _v2()
    resize = math.floor(img_size / max(crop_pct, 1e-3) + 1e-6)  # the tolerance keeps 224 / (224 / 232) at 232
    return v2.Compose([
        v2.ToImage(),
        _ToChannels(in_chans),
        v2.Resize((resize, resize) if crop_mode == "squash" else resize, interpolation=_interp(interpolation), antialias=True),
        v2.CenterCrop(img_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


class _ToChannels(torch.nn.Module):
    """Grey <-> RGB so that an image matches the model's input channels."""

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.in_chans = in_chans

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[-3]
        if c == self.in_chans:
            return x
        if c == 4:  # RGBA: drop alpha
            x, c = x[..., :3, :, :], 3
        if self.in_chans == 1 and c == 3:
            w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(3, 1, 1)
            out = (x.float() * w).sum(-3, keepdim=True)
            return out.round().to(x.dtype) if not x.is_floating_point() else out
        if c == 1:
            return x.expand(*x.shape[:-3], self.in_chans, *x.shape[-2:]).clone()
        return x[..., : self.in_chans, :, :]


def load_image(path: str | os.PathLike, *, upright: bool = True) -> Any:
    """A PIL image (RGB, or L for grayscale), or a :class:`DataError` naming the file.

    ``upright``: as a photo viewer shows it, the file's EXIF orientation applied (a phone's
    portrait photo is stored on its side with orientation 6 or 8). timm's and torchvision's
    loaders read the pixels as stored; segmentation does (its masks match the stored pixels).
    16-bit grayscale (PIL modes ``I;16*``, and ``I`` as some Pillow versions open 16-bit PNGs)
    is scaled to 8 bits: PIL's own conversion clips every value above 255 to white. An image
    of 32-bit integers (mode ``I``) is read as 16-bit where its values lie in 0-65535 and is
    refused otherwise, as is a 32-bit float image (mode ``F``): their range is not stored in
    the file, and PIL's conversion clips them (a float image holding 0-1 reads black).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if upright:
                im = _upright(im)
            if im.mode == "F":
                raise DataError(f"{path}: an image of 32-bit floats, whose value range the file does not give; save it with 8 or 16 bits a channel")
            if im.mode.startswith("I;16") or im.mode == "I":
                import numpy as np

                a = np.asarray(im, dtype=np.float64)
                if a.size and (a.min() < 0 or a.max() > 65535):
                    raise DataError(
                        f"{path}: an image of 32-bit integers with values {a.min():.0f} to {a.max():.0f}, outside 16 bits (0-65535); save it with 8 or 16 bits a channel"
                    )
                return Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), mode="L")
            return im.convert("RGB") if im.mode not in ("RGB", "L") else im.copy()
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _unreadable(path, e) from None


def _upright(im: Any) -> Any:
    """``im`` with its EXIF orientation applied; as stored where it has none, or a damaged EXIF block."""
    from PIL import ImageOps

    try:
        orientation = im.getexif().get(0x0112, 1)  # 0x0112: Orientation
    except Exception:  # the EXIF parser's errors are not one kind (struct.error, SyntaxError, ...)
        return im
    return im if orientation in (None, 1) else ImageOps.exif_transpose(im)


def _unreadable(path: str | os.PathLike, e: Exception) -> DataError:
    """The error for an image file that cannot be opened or decoded."""
    if isinstance(e, FileNotFoundError):
        if os.path.islink(path):
            return DataError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist")
        return DataError(f"image not found: {path}")
    return DataError(f"{path}: not a readable image ({type(e).__name__})")


# --------------------------------------------------------------------------- digits
#: the digits' own preprocessing (what training uses): grey, 8x8 upsampled to 16x16 by default
DIGITS_MEAN, DIGITS_STD = (0.3,), (0.4,)


def _digits(img_size: int | None, seed: int, val_split: float | None, randaugment: bool,
            model_cfg: dict[str, Any] | None = None) -> DataBundle:
    """scikit-learn's 8x8 digits, upsampled to ``img_size``, 20 % held out (fixed). With
    ``model_cfg`` (a trained checkpoint's preprocessing, as eval gives it) the images are prepared
    as it says, as an image folder's would be: its channels (the grey repeated for 3, as
    :class:`_ToChannels` does), mean and std, interpolation, and ``crop_pct`` (upsampled to
    floor(size / crop_pct), then centre-cropped; ``crop_mode`` is the same for square images)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("--data digits needs scikit-learn (pip install 'visionzoo[train]')") from None
    import numpy as np

    cfg = model_cfg or {}
    in_chans = int(cfg.get("input_size", (1,))[0])
    size = img_size or (int(cfg["input_size"][-1]) if "input_size" in cfg else 16)
    mean = tuple(cfg.get("mean", DIGITS_MEAN * in_chans))
    std = tuple(cfg.get("std", DIGITS_STD * in_chans))
    interpolation, crop_pct = str(cfg.get("interpolation", "bilinear")), float(cfg.get("crop_pct", 1.0))
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        raise DataError(f"--data digits: interpolation {interpolation!r} is not one of bilinear, bicubic, nearest")
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # N, 1, 8, 8 in [0, 1]
    resize = math.floor(size / max(crop_pct, 1e-3) + 1e-6)  # as eval_transform
    smooth = {} if interpolation == "nearest" else {"align_corners": False}
    x = F.interpolate(x, size=(resize, resize), mode=interpolation, **smooth).clamp_(0, 1)
    top = int(round((resize - size) / 2.0))  # (torchvision's CenterCrop)
    x = x[..., top : top + size, top : top + size].expand(-1, in_chans, -1, -1).contiguous()  # N, C, size, size
    y = torch.tensor(d.target, dtype=torch.long)
    # fixed stratified split: the same 20 % is held out whatever the training seed
    frac = DEFAULT_VAL_SPLIT if val_split is None else val_split
    rng = np.random.default_rng(0)
    val_idx = []
    for c in range(10):
        idx = np.flatnonzero(d.target == c)
        val_idx += rng.choice(idx, size=int(round(frac * len(idx))), replace=False).tolist()
    val_mask = np.zeros(len(y), bool)
    val_mask[val_idx] = True
    tr, va = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
    v2 = _v2()
    pad = max(1, size // 8)
    if randaugment:  # random shifts, small rotations and scalings (torchvision v2, ~1 ms an image)
        train_tf = v2.Compose([v2.RandomCrop(size, padding=pad), v2.RandomAffine(degrees=10, scale=(0.9, 1.1)), v2.Normalize(mean, std)])
        train: Dataset = SeededTransform(TensorImages(x[tr], y[tr]), train_tf, seed)
    else:  # random shifts by up to size/8 pixels
        train = ShiftedTensorImages(x[tr], y[tr], pad, mean, std, seed)
    val_tf = v2.Normalize(mean, std)
    return DataBundle(
        name="digits",
        train=train,
        val=TensorImages(x[va], y[va], val_tf),
        classes=[str(i) for i in range(10)], in_chans=in_chans, img_size=size, mean=mean, std=std,
        interpolation=interpolation, crop_pct=crop_pct,
    )


# --------------------------------------------------------------------------- torchvision sets
def _torchvision_set(name: str, data_dir: str, img_size: int | None, seed: int, randaugment: bool,
                     model_cfg: dict[str, Any] | None = None) -> DataBundle:
    """One of :data:`TORCHVISION_SETS`, its test split held out. With ``model_cfg`` (a trained
    checkpoint's preprocessing, as eval gives it) its channels, mean and std are the model's, and
    the held-out images are prepared as :func:`eval_transform` prepares a folder's."""
    import torchvision.datasets as tvd

    from .checkpoint import AddedPaths

    cls_name, chans, native, mean, std, flip = TORCHVISION_SETS[name]
    cls = getattr(tvd, cls_name)
    root = Path(data_dir)
    if root.exists() and not root.is_dir():
        raise DataError(f"--data-dir {root}: a file, not a folder (where {name} is, or is to be downloaded)")

    def get(train: bool):
        try:
            return cls(str(root), train=train, download=False)
        except RuntimeError:
            pass
        added = AddedPaths(root)
        try:
            return cls(str(root), train=train, download=True)
        except Exception as e:  # URLError, HTTPError, socket errors, checksum failures
            added.remove()  # the folders the download made and what it left in them (a partial archive)
            raise DataError(
                f"{name} is not in {root} and could not be downloaded ({type(e).__name__}: {str(e)[:120]}); "
                f"download it on a connected machine into --data-dir {root}"
            ) from None

    train_base, val_base = get(True), get(False)
    cfg = model_cfg or {}
    size = img_size or native
    if cfg:
        chans = int(cfg.get("input_size", (chans,))[0])
        mean = tuple(cfg.get("mean", (sum(mean) / len(mean),) * chans))
        std = tuple(cfg.get("std", (sum(std) / len(std),) * chans))
    v2 = _v2()
    aug: list[Any] = [v2.ToImage(), _ToChannels(chans)]
    if randaugment:
        aug.append(v2.RandAugment())
    if size != native:
        aug.append(v2.Resize(size, antialias=True))
    aug.append(v2.RandomCrop(size, padding=max(1, size // 8)))
    if flip:
        aug.append(v2.RandomHorizontalFlip())
    aug += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    # (with the dataset's own preprocessing, crop_pct 1 and bilinear: a resize of its square images to size)
    prep = dict(crop_pct=float(cfg.get("crop_pct", 1.0)), interpolation=str(cfg.get("interpolation", "bilinear")),
                crop_mode=str(cfg.get("crop_mode", "center")))
    val_tf = eval_transform(size, mean, std, in_chans=chans, **prep)
    classes = list(getattr(train_base, "classes", [str(i) for i in range(10)]))
    return DataBundle(
        name=name, train=SeededTransform(train_base, v2.Compose(aug), seed), val=Subset(val_base, range(len(val_base)), val_tf),
        classes=classes, in_chans=chans, img_size=size, mean=mean, std=std, **prep,
    )


# --------------------------------------------------------------------------- image folders
class ImageFiles(Dataset):
    """(path, label) pairs read as PIL images."""

    def __init__(self, samples: list[tuple[Path, int]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        return load_image(path), label


def visible_files(folder: Path) -> list[Path]:
    """The files under ``folder``, sorted, less those with a part of their path below it that
    starts with ``.``: hidden files (``.DS_Store``, macOS's ``._name`` copies) and everything in
    hidden folders (``.ipynb_checkpoints/``). Linked folders are followed, as torchvision's
    ImageFolder follows them, each real folder once (a link to a folder above is no loop); a
    link to nothing is listed, for the reader to name it, not skipped unsaid."""
    found: list[Path] = []
    seen: set[str] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(top, f) for f in files if not f.startswith(".")]
    return sorted(found)


def scan_class_folders(root: Path, *, check_images: bool = True) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folders) and (file, label) pairs, hidden folders and files skipped
    (:func:`visible_files`); every problem is a DataError."""
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    samples: list[tuple[Path, int]] = []
    for label, c in enumerate(classes):
        files = visible_files(root / c)
        if not files:
            hidden = " (but for hidden files, which are skipped)" if any((root / c).iterdir()) else ""
            raise DataError(f"class folder {root / c} is empty{hidden}")
        for p in files:
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(f"{p}: not an image file (extensions read: {', '.join(IMAGE_EXTENSIONS)})")
            if check_images:
                _check_header(p)
            samples.append((p, label))
    return classes, samples


def _check_header(path: Path) -> None:
    """Open (without decoding) to catch a file that is not an image before training starts."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.size  # noqa: B018  (reads the header only)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _unreadable(path, e) from None


def _folder(path: str, img_size: int | None, seed: int, val_split: float | None, randaugment: bool,
            model_cfg: dict[str, Any]) -> DataBundle:
    root = Path(path)
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    size = img_size or int(model_cfg.get("input_size", (3, 224, 224))[-1])
    mean = tuple(model_cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(model_cfg.get("std", (0.229, 0.224, 0.225)))
    crop_pct = float(model_cfg.get("crop_pct", 0.875))
    crop_mode = str(model_cfg.get("crop_mode", "center"))
    interpolation = str(model_cfg.get("interpolation", "bilinear"))
    in_chans = 3 if len(mean) == 3 else len(mean)
    note = None
    if (root / "train").is_dir():
        classes, train_samples = scan_class_folders(root / "train")
        _need_two_classes(root / "train", classes)
        val_root = root / "val" if (root / "val").is_dir() else root / "test"
        if val_root.is_dir():
            val_classes, val_samples = scan_class_folders(val_root)
            if val_classes != classes:
                raise DataError(f"{val_root}: class folders {val_classes} differ from those of {root / 'train'} ({classes})")
        elif val_split:
            train_samples, val_samples = _split(train_samples, val_split, len(classes))
        else:
            raise NoValFolder(f"{root}: has train/ but no val/ folder; add one or pass --val-split 0.1")
    else:
        classes, samples = scan_class_folders(root)
        _need_two_classes(root, classes)
        train_samples, val_samples = _split(samples, val_split or DEFAULT_VAL_SPLIT, len(classes))
        if not val_split:
            note = f"holding out {DEFAULT_VAL_SPLIT:.0%} of {root} for validation (--val-split to change; a val/ folder to use your own)"
    v2 = _v2()
    aug: list[Any] = [v2.ToImage(), _ToChannels(in_chans)]
    if randaugment:
        aug.append(v2.RandAugment())
    aug += [
        v2.RandomResizedCrop(size, scale=(0.35, 1.0), interpolation=_interp(interpolation), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ]
    val_tf = eval_transform(size, mean, std, crop_pct=crop_pct, interpolation=interpolation, in_chans=in_chans, crop_mode=crop_mode)
    name = str(root) if str(root) not in ("digits", *TORCHVISION_SETS) else f".{os.sep}{root}"  # (./digits: not the dataset)
    return DataBundle(
        name=name, train=SeededTransform(ImageFiles(train_samples), v2.Compose(aug), seed),
        val=Subset(ImageFiles(val_samples), range(len(val_samples)), val_tf),
        classes=classes, in_chans=in_chans, img_size=size, mean=mean, std=std, interpolation=interpolation, crop_pct=crop_pct,
        crop_mode=crop_mode, split_note=note,
    )


def _need_two_classes(root: Path, classes: list[str]) -> None:
    """Refuse a training folder with one class: every image would be scored correct."""
    if len(classes) < 2:
        raise DataError(f"{root}: one class folder ({classes[0]}); a classifier needs at least two ({root}/<class>/<image files>)")


def _split(samples: list[tuple[Path, int]], frac: float, num_classes: int) -> tuple[list, list]:
    """Stratified split with a fixed seed: at least one image of each class stays in training."""
    import random

    if not 0 < frac < 1:
        raise DataError(f"--val-split must be between 0 and 1, got {frac}")
    rng = random.Random(0)
    train, val = [], []
    for c in range(num_classes):
        items = [s for s in samples if s[1] == c]
        rng.shuffle(items)
        n_val = min(max(1, round(frac * len(items))), len(items) - 1)
        val += items[:n_val]
        train += items[n_val:]
    if not val:
        raise DataError("the validation split is empty: add images or a val/ folder")
    return sorted(train), sorted(val)


def builtin_dataset(spec: str, *, recorded: bool = False) -> bool:
    """Whether ``--data spec`` names a built-in dataset (``digits``, one of :data:`TORCHVISION_SETS`)
    rather than a folder. A bare name that is also a folder in the working folder is refused
    (DataError): it would read one of the two without a word; ``./NAME`` is the folder.
    ``recorded``: the name comes from a run's config.json, where a folder is recorded by its
    absolute path, so it is the dataset."""
    if spec not in ("digits", *TORCHVISION_SETS):
        return False
    if Path(spec).is_dir() and not recorded:
        raise DataError(f"--data {spec}: names the built-in dataset {spec} and the folder ./{spec} here; "
                        f"give --data ./{spec} for the folder (for the dataset, run from a folder without one of that name)")
    return True


def build_data(spec: str, *, data_dir: str = "data", img_size: int | None = None, seed: int = 0,
               val_split: float | None = None, randaugment: bool = False,
               model_cfg: dict[str, Any] | None = None, recorded: bool = False) -> DataBundle:
    """``spec``: ``digits``, one of :data:`TORCHVISION_SETS`, or a folder of class folders
    (``./NAME`` where a dataset has that name: :func:`builtin_dataset`).

    ``model_cfg``: the preprocessing to follow, a ``default_cfg``'s keys (``input_size``, ``mean``,
    ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``): a model's for an image folder, a
    trained checkpoint's to evaluate it. Without it, digits and the torchvision sets are prepared
    as their own (digits: grey, mean 0.3, std 0.4), which is how training prepares them, and a
    folder as ImageNet's. ``recorded``: ``spec`` comes from a run's config.json (see :func:`builtin_dataset`)."""
    if img_size is not None and img_size < 1:
        raise DataError(f"--img-size must be positive, got {img_size}")
    if spec == "digits" and builtin_dataset(spec, recorded=recorded):
        return _digits(img_size, seed, val_split, randaugment, model_cfg)
    if builtin_dataset(spec, recorded=recorded):
        return _torchvision_set(spec, data_dir, img_size, seed, randaugment, model_cfg)
    if os.sep not in spec and "/" not in spec and not Path(spec).exists():
        known = ", ".join(["digits", *TORCHVISION_SETS])
        raise DataError(f"--data {spec!r}: neither a known dataset ({known}) nor an existing folder")
    return _folder(spec, img_size, seed, val_split, randaugment, model_cfg or {})
