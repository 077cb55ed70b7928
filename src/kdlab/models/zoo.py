"""The CIFAR model zoo: the names the KD literature's CIFAR-100 tables use, and where each lives.

``ZOO`` maps a literature name (RepDistiller / mdistiller spelling, e.g. ``resnet32x4``,
``wrn_40_2``) to the import path of an ``nn.Module`` class whose constructor takes
``(num_classes=100, in_channels=3)``, so the model registry can build any of them from a config.
Also the weight initialisation the zoo's papers share (kept here so every family uses one).
"""

from __future__ import annotations

from torch import nn

_RESNET = "kdlab.models.cifar_resnet"
_WRN = "kdlab.models.wide_resnet"
_VGG = "kdlab.models.vgg"
_STEM = "kdlab.models.resnet_imagenet_style"

ZOO: dict[str, str] = {
    "resnet8": f"{_RESNET}:ResNet8",
    "resnet14": f"{_RESNET}:ResNet14",
    "resnet20": f"{_RESNET}:ResNet20",
    "resnet32": f"{_RESNET}:ResNet32",
    "resnet44": f"{_RESNET}:ResNet44",
    "resnet56": f"{_RESNET}:ResNet56",
    "resnet110": f"{_RESNET}:ResNet110",
    "resnet8x4": f"{_RESNET}:ResNet8x4",
    "resnet32x4": f"{_RESNET}:ResNet32x4",
    "wrn_16_1": f"{_WRN}:WRN16_1",
    "wrn_16_2": f"{_WRN}:WRN16_2",
    "wrn_40_1": f"{_WRN}:WRN40_1",
    "wrn_40_2": f"{_WRN}:WRN40_2",
    "vgg8": f"{_VGG}:VGG8",
    "vgg11": f"{_VGG}:VGG11",
    "vgg13": f"{_VGG}:VGG13",
    "vgg16": f"{_VGG}:VGG16",
    "vgg19": f"{_VGG}:VGG19",
    "mobilenetv2": "kdlab.models.mobilenet:MobileNetV2",
    "shufflenetv1": "kdlab.models.shufflenet:ShuffleNetV1",
    "shufflenetv2": "kdlab.models.shufflenet:ShuffleNetV2",
    "resnet18": f"{_STEM}:ResNet18",
    "resnet34": f"{_STEM}:ResNet34",
    "resnet50": f"{_STEM}:ResNet50",
}


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions (fan-out, as in He et al. 2015 and the WRN/VGG/MobileNet code the
    KD literature trains), BatchNorm γ=1, β=0; linear layers keep PyTorch's default.

    PyTorch's default convolution init is smaller than He's, which slows the deep, BN-free
    residual paths (pre-activation WRNs) early in training.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


__all__ = ["ZOO", "init_weights"]
