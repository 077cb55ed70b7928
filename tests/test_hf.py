"""Hugging Face models as teacher and student: a tiny BERT (built from a ``BertConfig``, nothing
downloaded) distilled into a smaller one on synthetic token data, through the Python API.

The models take keyword inputs (``input_ids``, ``attention_mask``) and return a
``SequenceClassifierOutput``; kdlab reads its ``logits``.
"""

from __future__ import annotations

import pytest
import torch

import kdlab
from kdlab.inference import predict_logits
from kdlab.losses import Hint, hinton_loss
from kdlab.settings import TrainSettings
from model_helpers import token_splits

transformers = pytest.importorskip("transformers")

VOCAB = 50
SETTINGS = TrainSettings(epochs=10, optimizer={"name": "adam", "lr": 0.003}, threads=1)


def bert(layers: int, hidden: int, seed: int) -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=16, num_labels=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(config)


@pytest.fixture(scope="module")
def tokens():
    return token_splits(n_train=512, n_test=256, seq_len=12, vocab=VOCAB)


@pytest.fixture(scope="module")
def teacher(tokens):
    return kdlab.train(bert(2, 32, seed=0), tokens, settings=SETTINGS, progress=False)


def agreement(a: torch.nn.Module, b: torch.nn.Module, tokens) -> float:
    return float((predict_logits(a, tokens.test).argmax(1) == predict_logits(b, tokens.test)
                  .argmax(1)).float().mean())  # fmt: skip


def test_a_tiny_bert_distills_into_a_smaller_one(tokens, teacher) -> None:
    chance = max(float(tokens.test.y.float().mean()), 1 - float(tokens.test.y.float().mean()))
    assert teacher.metrics["accuracy"] > chance + 0.2
    student = bert(1, 16, seed=1)
    before = agreement(student, teacher.model, tokens)
    result = kdlab.distill(teacher.model, student, tokens, loss=hinton_loss(4.0, 0.9),
                           settings=SETTINGS, progress=False)  # fmt: skip
    assert result.metrics["accuracy"] > chance + 0.2
    assert result.metrics["agreement"] > max(0.85, before + 0.2)


def test_kdlab_reads_the_logits_of_the_hugging_face_output(tokens, teacher) -> None:
    model = teacher.model.eval()
    inputs = tokens.test.inputs(slice(0, 32))
    with torch.no_grad():
        out = model(**inputs)
    assert isinstance(out, transformers.modeling_outputs.SequenceClassifierOutput)
    assert torch.allclose(predict_logits(model, tokens.test)[:32], out.logits)


def test_a_hint_term_taps_the_pooler_of_both_berts(tokens, teacher) -> None:
    loss = [*hinton_loss(4.0, 0.9), Hint(student="bert.pooler", teacher="bert.pooler")]
    settings = SETTINGS.model_copy(update={"epochs": 4})
    result = kdlab.distill(teacher.model, bert(1, 16, seed=1), tokens, loss=loss,
                           settings=settings, progress=False)  # fmt: skip
    hint = [row["hint"] for row in result.history]
    assert hint[-1] < 0.9 * hint[0]  # the 16-wide pooler, adapted, moves toward the 32-wide one
