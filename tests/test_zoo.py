"""The CIFAR model zoo: every literature name builds, classifies 32×32 images, has the published
parameter count, trains, and exposes the feature taps its module docstring documents."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch
from torch import nn

from kdlab.errors import ConfigError
from kdlab.models import build_model, check_model_spec
from kdlab.models.cnn import count_parameters
from kdlab.models.zoo import ZOO
from kdlab.taps import capture

NAMES = [
    *(f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)),
    "resnet8x4",
    "resnet32x4",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    *(f"vgg{d}" for d in (8, 11, 13, 16, 19)),
    "mobilenetv2",
    "shufflenetv1",
    "shufflenetv2",
    "resnet18",
    "resnet34",
    "resnet50",
]

#: Published parameter counts (millions) for 100 classes, as issue 12 quotes them from the KD
#: literature's CIFAR-100 tables. They are the counts of the RepDistiller / mdistiller definitions
#: (github.com/HobbitLong/RepDistiller, models/*.py), whose layouts this zoo follows; this zoo's
#: exact counts round to them, except vgg8: 3,965,028 (conv biases kept, as in those definitions)
#: against a printed 3.96 M, 0.13 % apart.
PUBLISHED_M = {
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_40_2": 2.26,
    "wrn_16_2": 0.70,
    "resnet56": 0.86,
    "resnet20": 0.28,
    "wrn_40_1": 0.57,
    "resnet110": 1.74,
    "vgg8": 3.96,
    "mobilenetv2": 0.81,
}

_CIFAR_RESNET = {"stem": 32, "layer1": 32, "layer2": 16, "layer3": 8}
_MOBILENET_SIDES = (16, 16, 8, 4, 4, 2, 2)
_MOBILENET = {"stem": 16, **{f"layer{k}": s for k, s in enumerate(_MOBILENET_SIDES, start=1)}}
#: Documented taps → side of their square feature map on 32×32 inputs, per family.
TAP_SIZES: dict[str, dict[str, int]] = {
    "resnet": _CIFAR_RESNET,
    "wrn": {**_CIFAR_RESNET, "norm": 8},
    "vgg": {"layer1": 32, "layer2": 16, "layer3": 8, "layer4": 4, "layer5": 4},
    "mobilenetv2": {**_MOBILENET, "conv_head": 2},
    "shufflenetv1": {"stem": 32, "layer1": 16, "layer2": 8, "layer3": 4},
    "shufflenetv2": {"stem": 32, "layer1": 16, "layer2": 8, "layer3": 4, "conv_head": 4},
    "resnet_stem": {**_CIFAR_RESNET, "layer4": 4},
}


def model_class(name: str) -> type[nn.Module]:
    module, _, attr = ZOO[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def family(name: str) -> str:
    if name in ("resnet18", "resnet34", "resnet50"):
        return "resnet_stem"
    for prefix in ("resnet", "wrn", "vgg"):
        if name.startswith(prefix):
            return prefix
    return name


def test_the_zoo_holds_the_literature_names() -> None:
    assert sorted(ZOO) == sorted(NAMES)
    for name in NAMES:
        cls = model_class(name)
        assert issubclass(cls, nn.Module)
        assert set(TAP_SIZES[family(name)]) == set(cls.feature_taps)  # docstrings agree too


@pytest.mark.parametrize("name", NAMES)
def test_logits_taps_and_parameter_count(name: str) -> None:
    torch.manual_seed(0)
    model = model_class(name)().eval()
    paths = [*model.feature_taps, "pool"]
    with torch.no_grad(), capture(model, paths) as features:
        logits = model(torch.randn(2, 3, 32, 32))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 100)
    assert torch.isfinite(logits).all()
    for path, side in {**TAP_SIZES[family(name)], "pool": 1}.items():
        shape = features[path].shape
        assert len(shape) == 4 and shape[0] == 2 and shape[2:] == (side, side), (path, shape)
    if name in PUBLISHED_M:
        count = count_parameters(model) / 1e6
        assert count == pytest.approx(PUBLISHED_M[name], rel=0.015), count


@pytest.mark.parametrize("name", NAMES)
def test_a_few_sgd_steps_fit_a_repeated_batch(name: str) -> None:
    torch.manual_seed(0)
    model = model_class(name)().train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 71])
    before = [p.detach().clone() for p in model.parameters()]
    # A small step: on a batch of 2, BatchNorm makes larger ones jumpy (resnet50 at lr 0.01).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.003)
    losses = []
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(nn.functional.cross_entropy(model(x), y).item())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", NAMES)
def test_the_registry_builds_each_for_other_data(name: str) -> None:
    """The data fill in ``in_channels`` and ``num_classes`` (1-channel images, 10 classes)."""
    model = build_model({"type": ZOO[name]}, input_shape=(1, 32, 32), num_classes=10, seed=0)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    ("path", "arguments", "fragment"),
    [
        ("cifar_resnet:CifarResNet", {"depth": 21}, "depth must be 6n+2"),
        ("cifar_resnet:CifarResNet", {"widths": [16, 32]}, "widths must list 4"),
        ("cifar_resnet:ResNet8x4", {"num_classes": 0}, "num_classes must be a positive"),
        ("wide_resnet:WideResNet", {"depth": 18}, "depth must be 6n+4"),
        ("wide_resnet:WideResNet", {"dropout": 1.5}, "dropout must be a number in [0, 1)"),
        ("vgg:VGG", {"layers": [1, 1]}, "layers must give the convolutions of each of the 5"),
        ("mobilenet:MobileNetV2", {"width_mult": 0}, "width_mult must be a number"),
        ("shufflenet:ShuffleNetV2", {"scale": 3}, "scale must be one of 0.5, 1.0, 1.5, 2.0"),
        ("shufflenet:ShuffleNetV1", {"in_channels": True}, "in_channels must be a positive"),
        ("resnet_imagenet_style:ResNetCifarStem", {"block": "wide"}, "block must be one of"),
    ],
)
def test_bad_arguments_are_config_errors(
    path: str, arguments: dict[str, Any], fragment: str
) -> None:
    spec = {"type": f"kdlab.models.{path}", **arguments}
    with pytest.raises(ConfigError) as caught:
        check_model_spec(spec)  # at config time, before any data or tensor exists
    assert fragment in str(caught.value)


def test_general_classes_build_other_depths_and_widths() -> None:
    """The named variants are settings of a general class; configs may pick others."""
    cases = [
        ("cifar_resnet:CifarResNet", {"depth": 26}),
        ("wide_resnet:WideResNet", {"depth": 10, "widen_factor": 4, "dropout": 0.3}),
        ("mobilenet:MobileNetV2", {"width_mult": 1.0}),
        ("shufflenet:ShuffleNetV2", {"scale": 0.5}),
    ]
    for path, arguments in cases:
        spec = {"type": f"kdlab.models.{path}", **arguments}
        model = build_model(spec, input_shape=(3, 32, 32), num_classes=7, seed=0).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
