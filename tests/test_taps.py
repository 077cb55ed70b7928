"""Tests of feature taps (kdlab.taps): capture by module path with forward hooks.

The references are the named submodules called directly, one after another, on the same input;
the captured tensors must equal them exactly, the model's output must not change, there must be
no extra forward pass, and no hook may outlive the block — neither after a normal run nor after
an exception.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlab.api import fit_model
from kdlab.data.base import ArrayDataset, DataSplits
from kdlab.errors import ConfigError
from kdlab.losses import Hint, Objective
from kdlab.models import MLP, SmallCNN
from kdlab.schemes.offline import OfflineScheme
from kdlab.settings import TrainSettings
from kdlab.taps import capture, resolve_modules
from kdlab.types import Batch


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_captured_mlp_features_equal_the_modules_called_directly() -> None:
    torch.manual_seed(0)
    model = MLP(12, [9, 7], num_classes=4).eval()
    x = torch.randn(5, 12)
    with capture(model, ["features.0", "features.1", "head"], "student") as feats:
        logits = model(x)
    h0 = model.features[0](x)
    h1 = model.features[1](h0)
    assert torch.equal(feats["features.0"], h0)
    assert torch.equal(feats["features.1"], h1)
    assert torch.equal(feats["head"], model.head(h1))
    assert torch.equal(logits, model(x))  # capturing does not change the output
    assert hook_count(model) == 0


def test_captured_cnn_features_equal_the_blocks_called_directly() -> None:
    torch.manual_seed(0)
    model = SmallCNN(1, 3, channels=(4, 6), hidden=8, input_shape=(1, 8, 8)).eval()
    x = torch.randn(3, 1, 8, 8)
    paths = ["features.0", "features.1", "features.1.0"]  # a block and a conv inside it
    with capture(model, paths) as feats:
        model(x)
    b0 = model.features[0](x)
    conv = model.features[1][0](b0)
    assert torch.equal(feats["features.0"], b0)
    assert torch.equal(feats["features.1.0"], conv)
    assert torch.equal(feats["features.1"], model.features[1](b0))
    assert feats["features.1"].shape == (3, 6, 2, 2)


def test_capture_keeps_values_before_a_later_in_place_op() -> None:
    # A tapped layer followed by ReLU(inplace=True): without a copy, the capture would silently
    # hold the post-ReLU values.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    x = torch.randn(8, 4)
    with capture(model, ["0"]) as feats:
        model(x)
    pre = model[0](x)
    assert (pre < 0).any()
    assert torch.equal(feats["0"], pre)


def test_tuple_output_keeps_its_first_element() -> None:
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            a, b = self.pair(x)
            return a + b

    x = torch.randn(2, 3)
    with capture(Net(), ["pair"]) as feats:
        Net()(x)  # another instance: its module is not hooked
    assert feats == {}
    net = Net()
    with capture(net, ["pair"]) as feats:
        net(x)
    assert torch.equal(feats["pair"], x * 2)


def test_scheme_forward_runs_each_model_once_and_captures_both_sides() -> None:
    calls = {"student": 0, "teacher": 0}

    def counting(model: nn.Module, role: str) -> nn.Module:
        model.register_forward_pre_hook(lambda *_: calls.__setitem__(role, calls[role] + 1))
        return model

    torch.manual_seed(0)
    student = counting(MLP(6, [5], num_classes=3), "student")
    teacher = counting(MLP(6, [7], num_classes=3), "teacher")
    term = Hint(student="features.0", teacher="features.0", adapter="linear")
    scheme = OfflineScheme(student, Objective([term]), teacher)
    batch = Batch(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]))
    scheme.prepare(batch)  # one forward each, to build the 5 → 7 adapter
    calls.update(student=0, teacher=0)
    seen = {}

    def update(name, loss):
        seen["hint"] = loss.terms["hint"]
        loss.total.backward()

    scheme.train_step(batch, update)
    assert calls == {"student": 1, "teacher": 1}  # no extra forward pass for the taps
    assert seen["hint"].item() > 0
    assert student.features[0][0].weight.grad is not None  # the tap carries the graph
    assert all(p.grad is None for p in teacher.parameters())
    assert hook_count(student) == 1 and hook_count(teacher) == 1  # only our counters remain


def test_hooks_are_removed_when_the_forward_pass_raises() -> None:
    model = MLP(12, [9], num_classes=4)
    with pytest.raises(RuntimeError), capture(model, ["features.0", "head"]):
        model(torch.randn(2, 5))  # wrong input width: the first Linear raises
    assert hook_count(model) == 0
    with pytest.raises(KeyError), capture(model, ["head"]):
        raise KeyError("raised by the caller inside the block")
    assert hook_count(model) == 0


def test_no_hooks_left_after_a_training_run() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 3, (40,), generator=g)
    data = DataSplits("toy", ArrayDataset(x, y), ArrayDataset(x[:8], y[:8]),
                      ArrayDataset(x[:8], y[:8]), 3)  # fmt: skip
    torch.manual_seed(0)
    teacher = SmallCNN(1, 3, channels=(6,), hidden=8, input_shape=(1, 8, 8)).eval()
    student = SmallCNN(1, 3, channels=(3,), hidden=8, input_shape=(1, 8, 8))
    fit_model(
        student, data, [Hint(student="features.0", teacher="features.0")],
        TrainSettings(epochs=2, batch_size=16, threads=1), teacher=teacher, progress=False,
    )  # fmt: skip
    assert hook_count(student) == 0 and hook_count(teacher) == 0


def test_unknown_path_lists_the_real_paths_closest_first() -> None:
    model = MLP(12, [9, 7], num_classes=4)
    with pytest.raises(ConfigError) as err:
        resolve_modules(model, ["features.5"], "teacher")
    msg = str(err.value)
    assert "teacher (MLP) has no module 'features.5'" in msg
    listing = msg.split("closest first: ")[1]
    names = [n.strip() for n in listing.split(",")]
    assert set(names) == {n for n, _ in model.named_modules() if n}
    assert names[0].startswith("features.")  # the close matches come before e.g. 'head'
    assert names.index("head") > names.index("features.0")


def test_scheme_rejects_a_wrong_tap_path_before_training() -> None:
    student, teacher = MLP(6, [5], num_classes=3), MLP(6, [7], num_classes=3)
    with pytest.raises(ConfigError, match=r"student \(MLP\) has no module 'layer3'.*features\.0"):
        OfflineScheme(student, Objective([Hint(student="layer3", teacher="features.0")]), teacher)
    with pytest.raises(ConfigError, match=r"teacher \(MLP\) has no module 'features\.9'"):
        OfflineScheme(student, Objective([Hint(student="features.0", teacher="features.9")]),
                      teacher)  # fmt: skip


def test_a_tapped_module_that_never_runs_is_a_clear_error() -> None:
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.used(x)

    student, teacher = Net(), Net()
    scheme = OfflineScheme(student, Objective([Hint(student="unused", teacher="used")]), teacher)
    with pytest.raises(ConfigError, match=r"'unused' was not captured.*did not run"):
        scheme.prepare(Batch(torch.randn(2, 4), torch.tensor([0, 1])))
    assert hook_count(student) == 0
