"""The one seeded build (kdlab.seeding, build_model(seed=...)) every scheme and teacher uses."""

from __future__ import annotations

import torch

from kdlab.models import MLP, build_model
from kdlab.seeding import SEED_STRIDE, derived_seed, seeded

SPEC = {"type": "mlp", "hidden": [16]}


def weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_a_seeded_build_depends_on_its_seed_alone_and_leaves_the_global_stream() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = build_model(SPEC, (64,), 10, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream did not move
    torch.manual_seed(999)  # whatever ran before does not matter
    again = build_model(SPEC, (64,), 10, seed=5)
    torch.manual_seed(5)
    by_hand = MLP(64, [16], 10)  # what "weights from seed 5" means
    assert torch.equal(weights(first), weights(again))
    assert torch.equal(weights(first), weights(by_hand))
    assert not torch.equal(weights(first), weights(build_model(SPEC, (64,), 10, seed=6)))


def test_derived_seeds_are_one_stride_apart_and_position_zero_is_the_seed() -> None:
    assert derived_seed(7, 0) == 7
    assert [derived_seed(7, p) for p in (1, 2)] == [7 + SEED_STRIDE, 7 + 2 * SEED_STRIDE]
    with seeded(derived_seed(0, 1)):
        a = torch.rand(3)
    torch.manual_seed(SEED_STRIDE)
    assert torch.equal(a, torch.rand(3))
