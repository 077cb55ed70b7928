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


def bert(layers: int, hidden: int, seed: int, num_labels: int = 2) -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=16, num_labels=num_labels,
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


def token_arrays(n_train: int = 512, n_test: int = 256) -> dict:
    """The token data as a YAML data source returns it (``source: test_hf:token_arrays``)."""
    splits = token_splits(n_train=n_train + 64, n_test=n_test, seq_len=12, vocab=VOCAB)
    return {"x_train": splits.train.x, "y_train": splits.train.y,
            "x_test": splits.test.x, "y_test": splits.test.y}  # fmt: skip


def tiny_bert(layers: int, hidden: int, num_classes: int) -> torch.nn.Module:
    """A factory a YAML model spec names (``type: test_hf:tiny_bert``)."""
    return bert(layers, hidden, seed=0, num_labels=num_classes)


def test_a_yaml_experiment_distills_bert_from_a_data_function_and_factories(tmp_path) -> None:
    from kdlab.config import parse_config
    from kdlab.experiment import run_experiment
    from kdlab.store import RunStore

    train = {"epochs": 8, "batch_size": 64, "optimizer": {"name": "adam", "lr": 0.003},
             "threads": 1}  # fmt: skip
    cfg = parse_config({
        "name": "hf-yaml", "seeds": [0],
        "data": {"source": "test_hf:token_arrays", "args": {"n_train": 448}, "val_fraction": 0.1},
        "teacher": {"model": {"type": "test_hf:tiny_bert", "layers": 2, "hidden": 32},
                    "train": train},
        "student": {"model": {"type": "test_hf:tiny_bert", "layers": 1, "hidden": 16},
                    "train": train},
        "distill": {"loss": [{"type": "ce", "weight": 0.1},
                             {"type": "soft_target", "weight": 0.9, "temperature": 4.0}]},
    })  # fmt: skip
    with RunStore(tmp_path) as store:
        result = run_experiment(cfg, store, progress=False)
        roles = {r.role: r.metrics for r in result.runs}
        assert {r.role for r in store.list_runs()} == {"teacher", "student", "distilled"}
    assert roles["teacher"]["accuracy"] > 0.75
    assert roles["distilled"]["agreement"] > 0.8  # the small BERT follows the big one
