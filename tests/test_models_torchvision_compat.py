"""ResNet-18/34/50 state dicts use torchvision's exact names and shapes (no torchvision needed)."""

from __future__ import annotations

import pytest
import torch

from underbudget.models import create_model, load_weights
from underbudget.models.resnet import Bottleneck

# Entries of torchvision's resnet18(num_classes=1000).state_dict(), written out by hand.
RESNET18 = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.running_mean": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.0.bn1.running_var": (64,),
    "layer1.1.bn2.bias": (64,),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.weight": (128,),
    "layer2.0.downsample.1.running_var": (128,),
    "layer3.1.conv2.weight": (256, 256, 3, 3),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.1.bn2.weight": (512,),
    "fc.weight": (1000, 512),
    "fc.bias": (1000,),
}
RESNET50 = {
    "conv1.weight": (64, 3, 7, 7),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.bn3.weight": (256,),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.2.conv1.weight": (64, 256, 1, 1),
    "layer2.0.conv1.weight": (128, 256, 1, 1),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "layer3.5.bn3.running_mean": (1024,),
    "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "fc.weight": (1000, 2048),
}


def meta(name: str, **kwargs):
    with torch.device("meta"):
        return create_model(name, num_classes=1000, image_size=224, **kwargs)


@pytest.mark.parametrize(
    "name, expected, total, blocks",
    [("resnet18", RESNET18, 122, (2, 2, 2, 2)), ("resnet50", RESNET50, 320, (3, 4, 6, 3))],
)
def test_state_dict_names_and_shapes(name, expected, total, blocks):
    state = meta(name).state_dict()
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert len(state) == total
    keys = list(state)
    assert keys[:6] == [
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
        "bn1.num_batches_tracked",
    ]  # fmt: skip
    assert keys[-2:] == ["fc.weight", "fc.bias"]
    for stage, count in enumerate(blocks, start=1):
        assert f"layer{stage}.{count - 1}.conv1.weight" in state
        assert f"layer{stage}.{count}.conv1.weight" not in state
    # torchvision has a downsample only where the shape changes.
    downsamples = {k.split(".downsample")[0] for k in state if ".downsample." in k}
    first = {"layer2.0", "layer3.0", "layer4.0"}
    assert downsamples == (first | {"layer1.0"} if name == "resnet50" else first)


def test_cifar_stem_changes_only_conv1():
    imagenet = meta("resnet18").state_dict()
    cifar = meta("resnet18", stem="cifar").state_dict()
    assert list(imagenet) == list(cifar)
    diff = [k for k in imagenet if imagenet[k].shape != cifar[k].shape]
    assert diff == ["conv1.weight"] and cifar["conv1.weight"].shape == (64, 3, 3, 3)


def test_bottleneck_strides_in_3x3_conv_as_torchvision_v1_5():
    block = meta("resnet50").layer2[0]
    assert isinstance(block, Bottleneck)
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


def test_torchvision_style_checkpoint_loads(tmp_path):
    """An old torchvision file (no num_batches_tracked, plain dict of tensors) loads strictly."""
    source = create_model("resnet18", num_classes=1000, image_size=224, seed=1)
    state = {k: v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "resnet18-f37072fd.pth")
    target = create_model("resnet18", num_classes=1000, image_size=224, seed=2)
    load_weights(target, tmp_path / "resnet18-f37072fd.pth")
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(source.eval()(x), target.eval()(x))
