"""Preflight runs every loss once on a few training examples, stage after stage: mistakes that
only shapes or the order of stages reveal are one line from ``kdlab validate`` — before any
teacher trains — and a config that would train nothing is refused."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from kdlab.config import parse_config
from kdlab.errors import ConfigError
from kdlab.losses import build_term
from kdlab.models import build_model
from kdlab.preflight import preflight

CNN: dict[str, Any] = {
    "name": "shapes",
    "data": {"source": "digits"},
    "teacher": {"model": {"type": "cnn", "channels": [16, 32, 64], "hidden": 64},
                "train": {"epochs": 1, "threads": 1}},
    "student": {"model": {"type": "cnn", "channels": [8, 16, 32], "hidden": 32},
                "train": {"epochs": 1, "threads": 1}},
}  # fmt: skip


def config(loss: list | None = None, **distill: Any) -> Any:
    cfg = copy.deepcopy(CNN)
    cfg["distill"] = {"loss": loss, **distill} if loss is not None else distill
    return parse_config(cfg)


def refused(cfg: Any) -> str:
    with pytest.raises(ConfigError) as info:
        preflight(cfg)
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    ("term", "problem"),
    [
        ({"type": "at", "student": "head.1", "teacher": "head.1"}, "per-sample features of rank"),
        ({"type": "nst", "student": "head.2", "teacher": "head.2"}, "rank"),
        ({"type": "hint", "student": "features.0", "teacher": "features.1", "adapter": "none"},
         "adapter"),
        ({"type": "review", "student": ["features.2", "features.0"],
          "teacher": ["features.2", "features.0"]}, "shallow"),
        ({"type": "kdsvd", "student": ["features.0", "features.1"],
          "teacher": ["features.0", "features.1"], "k": 100}, "k"),
    ],
    ids=["at_on_a_vector", "nst_on_a_vector", "hint_without_adapter", "review_order", "kdsvd_k"],
)  # fmt: skip
def test_shape_mistakes_are_found_before_any_training(term: dict, problem: str) -> None:
    message = refused(config([{"type": "ce", "weight": 0.1}, {**term, "weight": 1.0}]))
    assert message.startswith("distill.loss: ") and problem in message


def test_the_same_losses_with_fitting_taps_pass() -> None:
    preflight(config([
        {"type": "ce", "weight": 0.1},
        {"type": "at", "student": "features.1", "teacher": "features.1"},
        {"type": "review", "student": ["features.0", "features.2"],
         "teacher": ["features.0", "features.2"]},
        {"type": "kdsvd", "student": ["features.0", "features.1"],
         "teacher": ["features.0", "features.1"], "k": 2},
    ]))  # fmt: skip


PARAPHRASE = {"type": "ft", "phase": "paraphrase", "teacher": "features.2"}
TRANSFER = {"type": "ft", "student": "features.2", "teacher": "features.2"}


def test_factor_transfer_needs_its_paraphrase_stage_first() -> None:
    alone = refused(config([{"type": "ce"}, TRANSFER]))
    assert (
        "loss 'ft' (ft, phase transfer) reads a paraphraser that no earlier stage trains" in alone
    )
    assert "phase: paraphrase" in alone and "name: ft" in alone
    renamed = refused(config(stages=[
        {"loss": [PARAPHRASE], "trainable": "none"},
        {"loss": [{"type": "ce"}, {**TRANSFER, "name": "ftx"}]},
    ]))  # fmt: skip
    assert renamed.startswith("distill.stages[1].loss: loss 'ftx'")
    born_again = refused(config([{"type": "ce"}, TRANSFER], scheme="born_again",
                                options={"generations": 1}))  # fmt: skip
    assert "use scheme: offline with distill.stages" in born_again
    preflight(config(stages=[  # the documented two stages: fine
        {"loss": [PARAPHRASE], "trainable": "none"},
        {"loss": [{"type": "ce"}, TRANSFER]},
    ]))  # fmt: skip


def test_a_loss_that_trains_nothing_is_refused() -> None:
    zero = refused(config([{"type": "ce", "weight": 0}, {"type": "dkd", "weight": 0}]))
    assert zero == "distill.loss: every loss term has weight 0, so nothing trains; give a term " \
                   "a weight > 0"  # fmt: skip
    only_paraphrase = refused(config([PARAPHRASE]))
    assert "the last loss trains only FT's paraphraser, so the student never learns" in (
        only_paraphrase
    )


def test_batchnorm_over_vectors_needs_two_samples_in_every_batch() -> None:
    cfg = copy.deepcopy(CNN)
    cfg["student"]["train_subset"] = 129  # batches of 64, 64 and 1
    cfg["distill"] = {"train": {"epochs": 1, "batch_size": 64, "threads": 1}, "loss": [
        {"type": "ce"}, {"type": "hint", "student": "head.2", "teacher": "head.2",
                         "adapter": "regressor"}]}  # fmt: skip
    message = refused(parse_config(cfg))
    assert "loss 'hint' normalises vectors with BatchNorm" in message
    assert "the last batch of every epoch holds 1" in message
    cfg["distill"]["train"]["batch_size"] = 43  # 129 = 3 × 43
    preflight(parse_config(cfg))


def test_the_check_leaves_a_given_teacher_and_the_random_stream_as_they_were() -> None:
    hint = {"type": "hint", "student": "features.1", "teacher": "features.1"}
    crd = {"type": "crd", "student": "head.1", "teacher": "head.1", "negatives": 64}
    cfg = config([{"type": "ce", "weight": 0.1}, hint, crd])
    teacher = build_model(CNN["teacher"]["model"], (1, 8, 8), 10, seed=3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    state = torch.random.get_rng_state()
    preflight(cfg, teacher=teacher)
    assert torch.equal(torch.random.get_rng_state(), state)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics too


def test_a_mistyped_loss_parameter_gets_the_closest_name() -> None:
    with pytest.raises(ConfigError, match=r"no parameter 'tempreature' \(did you mean "
                                          r"'temperature'\?\)"):  # fmt: skip
        build_term({"type": "dkd", "tempreature": 4})
    with pytest.raises(ConfigError, match=r"^loss 'crd': negatives must be"):
        build_term({"type": "crd", "student": "a", "teacher": "b", "negatives": 0})


def test_a_stage_whose_loss_cannot_reach_its_trainable_modules_is_refused() -> None:
    hint = {"type": "hint", "student": "features.1", "teacher": "features.1"}
    message = refused(config(stages=[
        {"loss": [hint], "trainable": ["head"]},  # the hint is read before the head
        {"loss": [{"type": "ce"}]},
    ]))  # fmt: skip
    assert message.startswith("distill.stages[0].loss: no gradient of this loss reaches the "
                              "modules the stage trains (head)")  # fmt: skip
    preflight(config(stages=[  # FitNets' stage 1: the layers up to the hint train
        {"loss": [hint], "trainable": ["features.0", "features.1"]},
        {"loss": [{"type": "ce"}]},
    ]))  # fmt: skip
