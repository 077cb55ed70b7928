"""Tests of the logit discriminator (kdlab.models.discriminator)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.models.discriminator import LogitDiscriminator, has_batch_norm


def test_unconditional_scores_equal_the_mlp_computed_by_hand() -> None:
    torch.manual_seed(0)
    d = LogitDiscriminator(4, hidden=[5], activation="relu")
    z = torch.randn(6, 4)
    first, last = d.net[0], d.net[2]
    expected = F.relu(z @ first.weight.T + first.bias) @ last.weight.T + last.bias
    assert d(z).shape == (6,)
    torch.testing.assert_close(d(z), expected.squeeze(1))


def test_conditional_discriminator_reads_the_one_hot_label() -> None:
    torch.manual_seed(0)
    d = LogitDiscriminator(3, hidden=[4], conditional=True, activation="tanh")
    z, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    first, last = d.net[0], d.net[2]
    x = torch.cat([z, F.one_hot(y, 3).float()], 1)
    expected = (torch.tanh(x @ first.weight.T + first.bias) @ last.weight.T + last.bias).squeeze(1)
    torch.testing.assert_close(d(z, y), expected)
    # the label matters: the same logits with other labels score differently
    assert not torch.allclose(d(z, y), d(z, (y + 1) % 3))
    with pytest.raises(ValueError, match="needs the labels"):
        d(z)


def test_centered_input_ignores_a_per_sample_shift_of_the_logits() -> None:
    torch.manual_seed(0)
    z, shift = torch.randn(7, 10), 5 * torch.randn(7, 1)
    centered = LogitDiscriminator(10, input="centered")
    torch.testing.assert_close(centered(z + shift), centered(z))
    raw = LogitDiscriminator(10, input="logits")
    assert not torch.allclose(raw(z + shift), raw(z))
    log_probs = LogitDiscriminator(10, input="log_probs")
    torch.testing.assert_close(log_probs(z + shift), log_probs(z), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("norm", "layer"), [("layer", nn.LayerNorm), ("batch", nn.BatchNorm1d), ("none", None)]
)
def test_norm_option_builds_the_named_normalisation(norm: str, layer: type | None) -> None:
    d = LogitDiscriminator(10, hidden=[8, 8], norm=norm)
    found = [m for m in d.modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d))]
    assert [type(m) for m in found] == ([] if layer is None else [layer, layer])
    assert has_batch_norm(d) == (norm == "batch")


def test_bad_arguments_and_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="norm must be one of"):
        LogitDiscriminator(10, norm="group")
    with pytest.raises(ValueError, match="input must be one of"):
        LogitDiscriminator(10, input="probs")
    with pytest.raises(ValueError, match=r"expects logits of shape \[batch, 10\]"):
        LogitDiscriminator(10)(torch.zeros(4, 3))
