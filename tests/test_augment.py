"""Batched augmentation (kdlab.data.augment) against each op's definition, its seeding (same
batch for the same seed, epoch and step; the same on a resumed run), and its config errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdlab.config import parse_config
from kdlab.data.augment import (
    Cutout,
    HFlip,
    Normalize,
    RandomCrop,
    RandomErasing,
    parse_augment,
)
from kdlab.data.base import ArrayDataset, TensorBatcher
from kdlab.engine import Engine
from kdlab.errors import ConfigError
from kdlab.health import TrainingNotice
from kdlab.losses import build_objective
from kdlab.models import build_model
from kdlab.schemes.offline import OfflineScheme, fit_offline
from kdlab.settings import TrainSettings


def distinct_images(n: int = 6, c: int = 2, h: int = 5, w: int = 7) -> torch.Tensor:
    """Images whose every pixel value is unique and ≥ 1 (so a 0 can only be an erased pixel)."""
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float64).reshape(n, c, h, w)


def draw(seed: int = 0, total: int | None = None, offset: int = 0, n: int = 6):
    return torch.Generator().manual_seed(seed), offset, total or n


def test_random_crop_is_a_window_of_the_padded_image_within_the_padding() -> None:
    x, p = distinct_images(n=40), 2
    out = RandomCrop(padding=p)(x, draw(n=40))
    padded = F.pad(x, (p, p, p, p))
    seen = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(out[i], padded[i, :, dy : dy + 5, dx : dx + 7])]  # fmt: skip
        assert len(hits) == 1  # exactly one window, inside [0, 2p]²
        seen.add(hits[0])
    assert len(seen) > 5  # offsets vary per sample
    assert torch.equal(RandomCrop(padding=0)(x, draw(n=40)), x)


def test_reflect_padding_and_uint8_crops_match_float_ones() -> None:
    x = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    for mode in ("constant", "reflect"):
        crop = RandomCrop(padding=2, mode=mode)
        as_uint8 = crop(x, draw(3, n=8))
        as_float = crop(x.double(), draw(3, n=8))
        assert as_uint8.dtype == torch.uint8 and torch.equal(as_uint8.double(), as_float)


def test_hflip_is_an_exact_mirror_with_probability_p() -> None:
    x = distinct_images(n=200)
    assert torch.equal(HFlip(p=1.0)(x, draw(n=200)), x.flip(-1))
    assert torch.equal(HFlip(p=0.0)(x, draw(n=200)), x)
    out = HFlip(p=0.5)(x, draw(n=200))
    flipped = [bool(torch.equal(o, f)) for o, f in zip(out, x.flip(-1), strict=True)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, x, strict=True)]
    assert all(a != b for a, b in zip(flipped, kept, strict=True))  # each one or the other
    assert 70 < sum(flipped) < 130


def test_cutout_zeroes_one_clipped_square_around_a_pixel() -> None:
    x = distinct_images(n=50, h=9, w=9)
    out = Cutout(size=4)(x, draw(n=50))
    for i in range(len(x)):
        zero = out[i, 0] == 0
        assert torch.equal(zero, out[i, 1] == 0)  # the same square in every channel
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
        assert zero.sum() == len(rows) * len(cols)  # a rectangle: a square, clipped
        assert torch.equal(out[i][:, ~zero], x[i][:, ~zero])  # nothing else changes
    assert torch.equal(Cutout(size=4, p=0.0)(x, draw(n=50)), x)


def test_random_erasing_areas_lie_in_the_scale_range() -> None:
    x = distinct_images(n=300, c=1, h=20, w=20)
    out = RandomErasing(p=1.0, scale=(0.05, 0.2), ratio=(0.5, 2.0))(x, draw(n=300))
    areas = (out == 0).flatten(1).sum(1).float() / 400
    erased = areas[areas > 0]
    assert len(erased) > 250  # most rectangles fit at this scale
    assert erased.min() >= 0.05 * 0.7 and erased.max() <= 0.2 * 1.3  # rounding of h and w
    assert torch.equal(RandomErasing(p=0.0)(x, draw(n=300)), x)


def test_normalize_against_the_formula_in_float64() -> None:
    x = torch.rand(4, 3, 2, 2, dtype=torch.float64)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = Normalize(mean, std)(x)
    for c in range(3):
        assert torch.allclose(out[:, c], (x[:, c] - mean[c]) / std[c], atol=1e-12)


def test_the_draws_of_a_global_batch_give_each_rank_its_rows() -> None:
    x = distinct_images(n=8, h=9, w=9)
    ops = parse_augment([{"random_crop": {"padding": 2}}, "hflip", {"cutout": {"size": 3}}])[0]
    whole = ops(x, draw(5, total=8))
    halves = [ops(x[r * 4 : (r + 1) * 4], draw(5, total=8, offset=4 * r, n=4)) for r in (0, 1)]
    assert torch.equal(torch.cat(halves), whole)


def images(n: int = 24) -> ArrayDataset:
    x = torch.randint(0, 256, (n, 1, 6, 6), dtype=torch.uint8)
    augment, normalize = parse_augment(
        [{"random_crop": {"padding": 1}}, "hflip", {"normalize": {"mean": [0.5], "std": [0.25]}}]
    )
    return ArrayDataset(x, torch.arange(n) % 3, augment, normalize)


def test_same_seed_epoch_and_step_same_batch_and_eval_never_augmented() -> None:
    data = images()
    first = [b.inputs for b in TensorBatcher(data, 8, seed=1).epoch(2)]
    again = [b.inputs for b in TensorBatcher(data, 8, seed=1).epoch(2)]
    other = [b.inputs for b in TensorBatcher(data, 8, seed=1).epoch(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    plain = [b.inputs for b in TensorBatcher(data, 8, seed=1, augment=False).epoch(2)]
    index = [b.index for b in TensorBatcher(data, 8, seed=1).epoch(2)]
    for batch, idx in zip(plain, index, strict=True):  # unaugmented: scaled and normalised
        assert torch.allclose(batch, (data.x[idx].float() / 255 - 0.5) / 0.25)
    assert torch.allclose(data.inputs(), (data.x.float() / 255 - 0.5) / 0.25)


def test_a_resumed_run_sees_the_augmentations_of_an_uninterrupted_one(tmp_path: Path) -> None:
    data = images(48)

    def student() -> torch.nn.Module:
        return build_model({"type": "mlp", "hidden": [8]}, (1, 6, 6), 3, seed=4)

    settings = TrainSettings(epochs=3, batch_size=16, optimizer={"name": "sgd", "lr": 0.1},
                             device="cpu", checkpoint_seconds=0)  # fmt: skip
    ce = [{"type": "ce"}]
    whole = student()
    Engine(settings, progress=False).fit(OfflineScheme(whole, build_objective(ce)), data)
    path = tmp_path / "ck.pt"
    half = settings.model_copy(update={"epochs": 1})
    Engine(half, progress=False, checkpoint_path=path).fit(
        OfflineScheme(student(), build_objective(ce)), data
    )
    resumed = student()
    Engine(settings, progress=False, checkpoint_path=path).fit(
        OfflineScheme(resumed, build_objective(ce)), data, resume=True
    )
    for key, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_the_teacher_cache_turns_off_with_augmentation_with_a_note() -> None:
    from kdlab.data.base import DataSplits

    data = images(48)
    splits = DataSplits("toy", data, data.subset(torch.arange(8)), data.subset(torch.arange(8)), 3)
    teacher = build_model({"type": "mlp", "hidden": [8]}, (1, 6, 6), 3, seed=1).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        student = build_model({"type": "mlp", "hidden": [4]}, (1, 6, 6), 3, seed=2)
        settings = TrainSettings(epochs=1, batch_size=16)
        fit_offline(student, splits, [{"type": "soft_target"}], settings, teacher)
    notes = [w for w in caught if issubclass(w.category, TrainingNotice)]
    assert len(notes) == 1 and "teacher-logit cache is off" in str(notes[0].message)


CONFIG = {
    "name": "aug", "seeds": [0], "data": {"source": "digits"},
    "teacher": {"model": {"type": "mlp", "hidden": [8]}, "train": {"epochs": 1}},
    "student": {"model": {"type": "mlp", "hidden": [4]}, "train": {"epochs": 1}},
}  # fmt: skip


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        (["hflp"], r"data\.augment\.0: unknown augmentation 'hflp'.*did you mean 'hflip'"),
        ([{"random_crop": {"pading": 4}}], r"random_crop has no argument 'pading'.*'padding'"),
        ([{"random_crop": {"padding": -1}}], r"padding must be an integer ≥ 0, got -1"),
        ([{"normalize": {"mean": [0.5], "std": [0.2, 0.3]}}], r"one value per channel each"),
        ([{"normalize": {"mean": [0.5], "std": [0.0]}}], r"every std must be > 0"),
        ([{"normalize": {"mean": [0], "std": [1]}}, "hflip"], r"hflip comes after normalize"),
        ([{"hflip": {"p": 2}}], r"hflip: p must be a probability in \[0, 1\], got 2"),
        ([{"cutout": 16}], r"arguments of 'cutout' must be a mapping like \{padding: 4\}"),
    ],
)
def test_bad_augmentation_is_one_line_naming_the_fix(augment: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**CONFIG, "data": {"source": "digits", "augment": augment}})


def test_normalize_of_the_wrong_length_for_the_images_and_cache_with_augment() -> None:
    from kdlab.preflight import load_data

    rgb = {"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}}
    cfg = parse_config({**CONFIG, "data": {"source": "digits", "augment": [rgb]}})
    with pytest.raises(ConfigError, match=r"3 mean/std values, but the images have 1 channel"):
        load_data(cfg, 0)
    flat = parse_config({**CONFIG, "data": {"source": "digits", "flatten": True,
                                            "augment": ["hflip"]}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"data\.flatten is on"):
        load_data(flat, 0)
    cached = {**CONFIG, "data": {"source": "digits", "augment": ["hflip"]},
              "distill": {"train": {"cache_teacher": True}}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"distill\.train\.cache_teacher is true, but data"):
        parse_config(cached)
