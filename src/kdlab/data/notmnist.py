"""Reader for notMNIST: one folder per letter ``A``..``J`` of 28×28 grayscale PNG images.

Published copies (notMNIST_small / notMNIST_large) contain a few empty or damaged PNGs, so by
default unreadable files are skipped with a warning; ``strict=True`` turns that into an error.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from kdlab.data.source import RawData, Source
from kdlab.errors import DataError

CLASS_NAMES = list("ABCDEFGHIJ")
IMAGE_SIZE = 28
# Sub-folders of the official archives, tried when the letters are not directly in the folder.
# The small set comes first: the large one has ~530k files and takes minutes to decode.
ARCHIVE_FOLDERS = ("notMNIST_small", "notMNIST_large")
_SHOWN_PATHS = 3
#: Largest image side decoded; a header claiming more is treated as a damaged (or hostile) file.
MAX_SIDE = 2048


def find_notmnist_dir(directory: Path) -> Path | None:
    """The folder holding the letter sub-folders: ``directory`` itself or an archive folder."""
    for candidate in (directory, *(directory / name for name in ARCHIVE_FOLDERS)):
        if any((candidate / letter).is_dir() for letter in CLASS_NAMES):
            return candidate
    return None


def _decode(path: Path) -> np.ndarray:
    from PIL import Image  # deferred: only notMNIST decodes images

    with warnings.catch_warnings():  # the size check below replaces Pillow's bomb warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
    with img:
        if max(img.size) > MAX_SIDE:
            raise ValueError(
                f"its header claims {img.size[0]}×{img.size[1]} pixels; notMNIST images are "
                f"{IMAGE_SIZE}×{IMAGE_SIZE} (at most {MAX_SIDE} pixels a side are decoded)"
            )
        img = img.convert("L")
        if img.size != (IMAGE_SIZE, IMAGE_SIZE):
            # Real notMNIST images are already 28×28; other sizes are resized to match them.
            img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def load_notmnist_dir(directory: Path, *, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)``: images as uint8 [N, 1, 28, 28] and labels int64 (A=0 .. J=9).

    Files are read in sorted order so the result, and every split drawn from it, is the same on
    every machine. Images that cannot be decoded are skipped with a warning, or raise
    ``DataError`` naming the file when ``strict`` is true.
    """
    from PIL import Image, UnidentifiedImageError

    unreadable = (
        OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError,
    )  # fmt: skip

    missing = [letter for letter in CLASS_NAMES if not (directory / letter).is_dir()]
    if missing:
        raise DataError(
            f"{directory}: missing letter folder(s) {', '.join(missing)}; notMNIST needs one "
            f"folder per letter {CLASS_NAMES[0]}..{CLASS_NAMES[-1]}"
        )
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[Path] = []
    for label, letter in enumerate(CLASS_NAMES):
        for path in sorted((directory / letter).glob("*.png")):
            try:
                images.append(_decode(path))
            except unreadable as exc:
                # Pillow signals a damaged PNG with any of these, depending on where it breaks
                # (DecompressionBombError: a header claiming an enormous image).
                if strict:
                    raise DataError(
                        f"{path}: unreadable image ({exc}); delete it, or load with "
                        f"strict=False to skip unreadable images"
                    ) from exc
                skipped.append(path)
                continue
            labels.append(label)
    if skipped:
        shown = ", ".join(str(p) for p in skipped[:_SHOWN_PATHS])
        more = f" and {len(skipped) - _SHOWN_PATHS} more" if len(skipped) > _SHOWN_PATHS else ""
        warnings.warn(
            f"notMNIST: skipped {len(skipped)} unreadable image(s): {shown}{more}",
            stacklevel=2,
        )
    if not images:
        raise DataError(
            f"{directory}: no readable PNG images in the letter folders "
            f"({len(skipped)} unreadable file(s) skipped)"
        )
    x = np.stack(images)[:, None]
    return x, np.asarray(labels, dtype=np.int64)


def _read(directory: Path | None, strict: bool) -> RawData:
    assert directory is not None
    x, y = load_notmnist_dir(directory, strict=strict)
    return RawData(x, y, None, None, CLASS_NAMES)


SOURCES = (
    Source(
        "notmnist",
        _read,
        find_notmnist_dir,
        "download http://yaroslavvb.com/upload/notMNIST/notMNIST_small.tar.gz and extract it "
        "into {target} (giving {target}/notMNIST_small/A..J/*.png), or put the letter "
        "folders A..J of PNG images directly there",
        default_test=0.1,
    ),
)
