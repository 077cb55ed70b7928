"""Every loss term trains through the engine — on the CPU here, on CUDA in every precision where
there is a GPU (``-m gpu``, benchmarks/device_check.sh): finite losses, the term logged, the
student changed. The CUDA run covers what CPU tests cannot (CRD's draws on a CUDA generator,
DKD's masking and KD-SVD's eigen-decomposition under autocast)."""

from __future__ import annotations

import math

import pytest
import torch

import kdlab
from kdlab.data.base import ArrayDataset, DataSplits
from kdlab.models import SmallCNN
from kdlab.settings import TrainSettings

MAPS = {"student": "features.1", "teacher": "features.1"}  # [C, 2, 2] maps
VECTORS = {"student": "head.2", "teacher": "head.2"}  # penultimate vectors
TWO_LAYERS = {"student": ["features.0", "features.1"], "teacher": ["features.0", "features.1"]}
TERMS = {
    "soft_target": {"temperature": 4.0, "standardize": True},
    "dkd": {"warmup": 1}, "dist": {}, "hint": MAPS, "at": MAPS, "nst": MAPS,
    "ab": {"student": "features.1.1", "teacher": "features.1.1"},
    "ofd": {"student": "features.1.1", "teacher": "features.1.1"},
    "vid": MAPS, "cc": VECTORS, "crd": {**VECTORS, "negatives": 8}, "rkd_distance": VECTORS,
    "rkd_angle": VECTORS, "sp": VECTORS, "pkt": VECTORS, "lsp": {**VECTORS, "neighbours": 3},
    "review": TWO_LAYERS, "fsp": {**TWO_LAYERS, "adapter": "auto"}, "kdsvd": TWO_LAYERS,
}  # fmt: skip


def toy(device: str) -> tuple[DataSplits, torch.nn.Module, torch.nn.Module]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
    data = DataSplits("toy", *(ArrayDataset(x, y),) * 3, 3)
    torch.manual_seed(0)
    shape = (1, 8, 8)
    teacher = SmallCNN(1, 3, channels=(6, 6), hidden=8, input_shape=shape).eval()
    student = SmallCNN(1, 3, channels=(3, 4), hidden=8, input_shape=shape)
    return data, teacher.to(device), student


def one_epoch(kind: str, device: str, precision: str) -> None:
    data, teacher, student = toy(device)
    before = [p.detach().clone() for p in student.parameters()]
    settings = TrainSettings(epochs=1, batch_size=16, threads=1, device=device,
                             precision=precision)  # fmt: skip
    loss = [{"type": "ce", "weight": 1.0}, {"type": kind, **TERMS[kind], "name": "term"}]
    run = kdlab.distill(teacher, student, data, loss=loss, settings=settings, progress=False)
    row = run.history[-1]
    assert math.isfinite(row["loss"]) and math.isfinite(row["term"]), row
    changed = any(not torch.equal(b, a.detach().cpu()) for b, a in zip(
        before, run.model.parameters(), strict=True))  # fmt: skip
    assert changed and math.isfinite(run.metrics["accuracy"])


def test_the_list_covers_every_term_that_reads_a_teacher() -> None:
    from kdlab.losses import TERMS as REGISTERED

    untested = {"ce", "logit_mse", "soft_ce", "relation", "spatial_attention",
                "channel_attention", "attention_feature", "global_relation", "ft"}  # fmt: skip
    # (these have their own end-to-end runs in tests/test_examples.py; ft needs two stages)
    assert set(TERMS) | untested == set(REGISTERED)


@pytest.mark.parametrize("kind", sorted(TERMS))
def test_every_term_trains_on_the_cpu(kind: str) -> None:
    one_epoch(kind, "cpu", "fp32")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_every_term_trains_on_cuda(precision: str) -> None:
    failures = {}
    for kind in sorted(TERMS):  # all of them, then every failure at once
        try:
            one_epoch(kind, "cuda", precision)
        except Exception as err:  # reported below, with its term
            failures[kind] = f"{type(err).__name__}: {err}"[:300]
    assert not failures, failures
