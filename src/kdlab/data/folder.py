"""Reader of your own images: ``source: folder``, ``root`` laid out as

    root/train/<class>/<image>      root/test/<class>/<image>

Class names are the class folders' names, sorted (class 0 first); train/ and test/ must have the
same ones, none empty. Images are any file Pillow decodes (PNG, JPEG, BMP, GIF, TIFF, WebP, …),
also in sub-folders of a class folder; files and folders whose names start with ``.`` are
skipped (``.DS_Store``, ``._*``, ``.ipynb_checkpoints``), any other file must be an image.
Grayscale images (modes 1, L, LA, I, I;16, F) give 1 channel; colour ones (RGB, RGBA, P, CMYK,
…) give 3 (alpha is dropped); when the folder mixes both, every image is converted to RGB.
Sizes must agree, unless ``resize: [H, W]`` resizes every image (Pillow bilinear). The decoded
uint8 images are cached (:mod:`kdlab.data.imagecache`), so only the first load decodes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.data.imagecache import cached
from kdlab.data.source import RawData, Source, SourceSpec
from kdlab.errors import ConfigError, DataError

SPLITS = ("train", "test")
_GRAY_MODES = {"1", "L", "LA", "I", "F"}
LAYOUT = "root/train/<class>/<images> and root/test/<class>/<images>"


def find_folder(directory: Path) -> Path | None:
    """``directory`` when it holds train/ and test/ (for ``kdlab datasets``), else None."""
    return directory if all((directory / s).is_dir() for s in SPLITS) else None


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def check_root(root: Path | None) -> Path:
    """``root`` as a folder with train/ and test/, or an error saying what is there instead."""
    if root is None:
        raise ConfigError(
            "source 'folder' reads your own images from data.root, which is not set: set it "
            f"(or --data-root; root= in Python) to a folder laid out as {LAYOUT}"
        )
    if not root.is_dir():
        what = "a file" if root.exists() else "not found"
        raise DataError(f"{root}: {what}; source 'folder' needs a folder laid out as {LAYOUT}")
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        found = sorted(p.name + "/" * p.is_dir() for p in root.iterdir() if _visible(p))
        raise DataError(
            f"{root}: no {missing[0]}/ folder (found: {', '.join(found[:10]) or 'nothing'}); "
            f"source 'folder' needs {LAYOUT}"
        )
    return root


def list_split(root: Path, split: str) -> dict[str, list[Path]]:
    """Class name → the image files of its folder in ``root/split``, sorted."""
    folder = root / split
    entries = sorted(p for p in folder.iterdir() if _visible(p))
    stray = [p for p in entries if not p.is_dir()]
    if stray:
        raise DataError(
            f"{stray[0]}: a file directly in {split}/; put each image in the folder of its "
            f"class, {split}/<class>/{stray[0].name}"
        )
    if not entries:
        raise DataError(f"{folder}: no class folders; source 'folder' needs {LAYOUT}")
    classes = {}
    for directory in entries:
        files = sorted(
            p
            for p in directory.rglob("*")
            if p.is_file() and all(part[0] != "." for part in p.relative_to(directory).parts)
        )
        if not files:
            raise DataError(
                f"{directory}: empty class folder; put the images of class "
                f"{directory.name!r} in it, or remove it from both train/ and test/"
            )
        classes[directory.name] = files
    return classes


def _same_classes(root: Path, found: dict[str, dict[str, list[Path]]]) -> None:
    train, test = set(found["train"]), set(found["test"])
    if train != test:
        only = [
            f"only in {s}/: {', '.join(sorted(a - b))}"
            for s, a, b in (("train", train, test), ("test", test, train))
            if a - b
        ]
        raise DataError(
            f"{root}: train/ and test/ must have the same class folders; {'; '.join(only)}. "
            "Add the missing class folders (with images) or remove the extra ones"
        )


def _convert(img: Any, resize: tuple[int, int] | None) -> np.ndarray:
    """An opened Pillow image → uint8 [H, W] (grayscale) or [H, W, 3] (colour)."""
    from PIL import Image

    if img.mode.startswith("I;16"):  # 16-bit grayscale: keep the high byte
        img = Image.fromarray((np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8), "L")
    img = img.convert("L" if img.mode in _GRAY_MODES else "RGB")
    if resize is not None:
        img = img.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def decode(path: Path, resize: tuple[int, int] | None) -> np.ndarray:
    """One image file as uint8 [H, W] or [H, W, 3]; a file Pillow cannot read is a DataError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return _convert(img, resize)
    except (
        OSError,
        UnidentifiedImageError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as exc:
        # Pillow signals a broken or foreign file with any of these, depending on where it fails.
        why = " ".join(str(exc).split())  # one line, whatever Pillow's message holds
        raise DataError(
            f"{path}: not an image Pillow can read ({type(exc).__name__}: {why}); remove it "
            "from the class folder (names starting with '.' are skipped)"
        ) from exc


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}×{shape[1]}"


def _decode_all(found: dict[str, dict[str, list[Path]]], resize: tuple[int, int] | None) -> RawData:
    """Every image of ``found`` (split → class → files), with one size and channel layout."""
    names = list(found["train"])
    images: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    labels: dict[str, list[int]] = {s: [] for s in SPLITS}
    first: tuple[Path, tuple[int, ...]] | None = None
    for split in SPLITS:
        for label, name in enumerate(names):
            for path in found[split][name]:
                image = decode(path, resize)
                if first is None:
                    first = (path, image.shape)
                elif image.shape[:2] != first[1][:2]:
                    raise DataError(
                        f"{path} is {_size(image.shape)} (height×width) but the first image, "
                        f"{first[0]}, is {_size(first[1])}; set data.resize: [H, W] "
                        "(resize=(H, W) in Python) to resize every image, or resize the files"
                    )
                images[split].append(image)
                labels[split].append(label)
    # One channel layout for all: grayscale [H, W] → [1, H, W]; with any colour image, RGB.
    colour = any(a.ndim == 3 for split in SPLITS for a in images[split])
    x = {}
    for split in SPLITS:
        stack = np.stack([_channels(a, colour) for a in images[split]])
        x[split] = stack.transpose(0, 3, 1, 2) if colour else stack[:, None]
    y = {s: np.asarray(labels[s], dtype=np.int64) for s in SPLITS}
    return RawData(
        np.ascontiguousarray(x["train"]),
        y["train"],
        np.ascontiguousarray(x["test"]),
        y["test"],
        names,
    )


def _channels(image: np.ndarray, colour: bool) -> np.ndarray:
    if colour and image.ndim == 2:  # as Pillow's L → RGB: the gray value in every channel
        return np.repeat(image[:, :, None], 3, axis=2)
    return image


def read_folder(root: Path | None, spec: SourceSpec) -> RawData:
    """The images under ``root`` (see the module docstring), decoded or from the cache."""
    resize = _check_resize(spec.resize)
    root = check_root(root)
    found = {split: list_split(root, split) for split in SPLITS}
    _same_classes(root, found)
    files = [p for split in SPLITS for paths in found[split].values() for p in paths]
    return cached(root, files, resize, lambda: _decode_all(found, resize))


def _check_resize(resize: Any) -> tuple[int, int] | None:
    if resize is None:
        return None
    ok = isinstance(resize, (tuple, list)) and len(resize) == 2
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in resize):
        raise ConfigError(f"data.resize must be [height, width], two integers ≥ 1, got {resize!r}")
    return int(resize[0]), int(resize[1])


SOURCES = (
    Source(
        "folder",
        lambda d, strict: read_folder(d, SourceSpec("folder")),
        find_folder,
        "set data.root to your folder of images, laid out as " + LAYOUT.replace("root", "{target}"),
        read_own=read_folder,
        options=frozenset({"resize"}),
    ),
)
