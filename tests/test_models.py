"""Registry, construction, forward shapes, parameter counts and init of the model zoo."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from underbudget.errors import ConfigError
from underbudget.models import (
    count_parameters,
    create_model,
    list_models,
    model_options,
    register_model,
    registry,
)
from underbudget.models.lenet import lenet_geometry
from underbudget.models.resnet_cifar import CifarBasicBlock, PadShortcut
from underbudget.models.wrn import PreActBlock

SPEC_NAMES = [
    "mlp", "lenet5", "convnet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet18", "resnet34", "resnet50", "vgg11_bn", "vgg16_bn", "wrn", "wrn28_10", "wrn16_8",
]  # fmt: skip
# Smaller settings for the generic builders so the sweep stays fast.
FAST_OPTIONS = {"wrn": {"depth": 10, "width": 2}, "resnet_cifar": {"depth": 8}}


def meta_model(name: str, **kwargs) -> nn.Module:
    """Build on the meta device: shapes and counts without paying for initialisation."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def test_spec_names_are_registered():
    assert set(SPEC_NAMES) <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_channels", [1, 3])
def test_every_model_runs_forward(name, in_channels):
    model = create_model(
        name, num_classes=7, in_channels=in_channels, image_size=8, **FAST_OPTIONS.get(name, {})
    )
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 8, 8))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_gets_a_gradient(name):
    with torch.device("meta"):  # shapes and autograd only, no arithmetic
        model = create_model(name, in_channels=1, image_size=8)
        model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet50", "wrn28_10"])
def test_big_models_at_32(name):
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def cifar_resnet_params(n: int, classes: int = 10, width: int = 16, c: int = 3, b=False) -> int:
    """Hand-counted parameters of a CIFAR ResNet with n blocks per stage (He et al. 2016)."""
    total = c * width * 9 + 2 * width
    in_w = width
    for w in (width, 2 * width, 4 * width):
        total += in_w * w * 9 + w * w * 9 + 4 * w  # first block: two convs, two BNs
        if b and in_w != w:
            total += in_w * w + 2 * w  # option B: 1x1 projection + BN
        total += (n - 1) * (2 * w * w * 9 + 4 * w)
        in_w = w
    return total + 4 * width * classes + classes


def test_resnet20_has_269722_parameters():
    assert cifar_resnet_params(3) == 269_722
    assert count_parameters(create_model("resnet20")) == 269_722


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnet_counts_match_formula(depth):
    n = (depth - 2) // 6
    assert count_parameters(meta_model(f"resnet{depth}")) == cifar_resnet_params(n)
    model_b = meta_model(f"resnet{depth}", num_classes=100, in_channels=1, shortcut="B")
    assert count_parameters(model_b) == cifar_resnet_params(n, 100, c=1, b=True)


def test_resnet_counts_match_torchvision():
    assert count_parameters(meta_model("resnet18")) == 11_173_962  # CIFAR stem, 10 classes
    big = {"num_classes": 1000, "image_size": 224}
    assert count_parameters(meta_model("resnet18", **big)) == 11_689_512
    assert count_parameters(meta_model("resnet50", **big)) == 25_557_032
    assert count_parameters(meta_model("resnet34", **big)) == 21_797_672


def wrn_params(depth: int, k: int, classes: int = 10) -> int:
    """Hand-counted parameters of WRN-depth-k (pre-activation blocks, 1x1 conv shortcuts)."""
    n = (depth - 4) // 6
    total, in_w = 3 * 16 * 9, 16
    for w in (16 * k, 32 * k, 64 * k):
        total += 2 * in_w + in_w * w * 9 + 2 * w + w * w * 9 + (in_w * w if in_w != w else 0)
        total += (n - 1) * (2 * (2 * w + w * w * 9))
        in_w = w
    return total + 2 * in_w + in_w * classes + classes


def test_wrn_counts():
    assert wrn_params(28, 10) == 36_479_194  # the widely reported WRN-28-10 size
    assert count_parameters(meta_model("wrn28_10")) == 36_479_194
    assert count_parameters(meta_model("wrn16_8")) == wrn_params(16, 8)
    assert count_parameters(meta_model("wrn", depth=22, width=2)) == wrn_params(22, 2)


def test_vgg16_bn_count():
    cfg = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    convs, c = 0, 3
    for w in cfg:
        convs += c * w * 9 + 2 * w  # conv without bias (BN follows) + BN
        c = w
    assert count_parameters(meta_model("vgg16_bn")) == convs + 512 * 512 + 512 + 512 * 10 + 10
    assert count_parameters(meta_model("vgg16_bn", hidden=0)) == convs + 512 * 10 + 10
    assert count_parameters(meta_model("vgg16_bn", image_size=64)) == count_parameters(
        meta_model("vgg16_bn")
    )  # global pooling: the classifier does not grow with the input


def test_lenet5_geometry_and_classic_count():
    assert lenet_geometry(32) == (0, 0, 5)  # classic: 32 -> 28 -> 14 -> 10 -> 5
    assert lenet_geometry(28) == (2, 0, 5)  # MNIST LeNet-5 with padded first conv
    assert lenet_geometry(8) == (2, 2, 2)  # sklearn digits
    # LeNet-5 on 32x32 grey images, 10 classes: 61,706 parameters.
    assert count_parameters(create_model("lenet5", in_channels=1, image_size=32)) == 61_706
    for size in (8, 9, 13, 28, 31, 32, 40, 64):
        out = create_model("lenet5", in_channels=2, image_size=size)(torch.randn(2, 2, size, size))
        assert out.shape == (2, 10)
    with pytest.raises(ConfigError, match="image_size >= 8"):
        create_model("lenet5", image_size=7)


def test_mlp_hidden_sizes_and_clear_input_error():
    model = create_model("mlp", in_channels=1, image_size=8, hidden=[32, 16, 8])
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (64, 32), (32, 16), (16, 8), (8, 10)
    ]  # fmt: skip
    assert create_model("mlp", hidden=[], image_size=4).fc.in_features == 48
    with pytest.raises(ValueError, match="in_channels and image_size"):
        model(torch.randn(2, 3, 8, 8))


def test_convnet_width_multiplier():
    convs = [m for m in create_model("convnet", width=0.5).modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    model = create_model("convnet", widths=(8, 8, 8, 8, 8), image_size=4)
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 10)


def test_resnet_stem_defaults_by_image_size():
    assert meta_model("resnet18", image_size=64).conv1.kernel_size == (3, 3)
    assert meta_model("resnet18", image_size=65).conv1.kernel_size == (7, 7)
    assert isinstance(meta_model("resnet18", image_size=224).maxpool, nn.MaxPool2d)
    assert meta_model("resnet18", image_size=224, stem="cifar").conv1.stride == (1, 1)


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    out = PadShortcut(16, 2)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, 16:]) == 0
    odd = CifarBasicBlock(16, 32, stride=2)(torch.randn(2, 16, 7, 7))
    assert odd.shape == (2, 32, 4, 4)


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "resnet50", "wrn"])
def test_zero_init_residual_makes_blocks_identity(name):
    model = create_model(name, zero_init_residual=True, **FAST_OPTIONS.get(name, {})).eval()
    plain = create_model(name, **FAST_OPTIONS.get(name, {}))
    last = {"resnet50": "bn3"}.get(name, "bn2")
    gammas = [m.weight for n, m in model.named_modules() if n.endswith(last) and "layer" in n]
    assert gammas and all(torch.count_nonzero(g) == 0 for g in gammas)
    assert all(
        torch.count_nonzero(m.weight) > 0 for n, m in plain.named_modules() if n.endswith(last)
    )
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        if name == "resnet20":
            assert torch.allclose(model.layer1[1](x), torch.relu(x))
        if name == "wrn":
            block = PreActBlock(16, 16)
            model_block = [m for m in model.modules() if isinstance(m, PreActBlock)][0]
            nn.init.zeros_(block.bn2.weight)
            block.eval()
            assert torch.allclose(block(x), x)
            assert torch.count_nonzero(model_block.bn2.weight) == 0


def test_kaiming_init_of_convs():
    model = create_model("resnet18")
    w = model.layer4[1].conv2.weight  # fan_out = 512 * 3 * 3
    assert abs(w.std().item() - (2 / (512 * 9)) ** 0.5) < 2e-4
    assert abs(w.mean().item()) < 1e-4
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)


def test_seed_makes_init_reproducible_without_touching_global_rng():
    state = torch.get_rng_state()
    a = create_model("resnet20", seed=3).state_dict()
    b = create_model("resnet20", seed=3).state_dict()
    c = create_model("resnet20", seed=4).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    create_model("resnet20")  # unseeded: draws from the global RNG
    assert not torch.equal(torch.get_rng_state(), state)


def test_unknown_name_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'resnet20'") as info:
        create_model("resent20")
    assert "torchvision:NAME" in str(info.value) and "lenet5" in str(info.value)
    with pytest.raises(ConfigError, match="did you mean 'vgg16_bn'"):
        create_model("vgg16")
    with pytest.raises(ConfigError, match="unknown model adapter 'tv'"):
        create_model("tv:resnet18")
    assert create_model(" ResNet20 ").underbudget_name == "resnet20"


def test_bad_options_name_the_valid_ones():
    with pytest.raises(ConfigError, match="no option 'widht'.*did you mean 'width'") as info:
        create_model("resnet20", widht=32)
    assert "shortcut='A'" in str(info.value) and "zero_init_residual=False" in str(info.value)
    with pytest.raises(ConfigError, match="shortcut='C'.*choose one of: A, B"):
        create_model("resnet20", shortcut="C")
    with pytest.raises(ConfigError, match="did you mean 'cifar'"):
        create_model("resnet18", stem="cifr")
    with pytest.raises(ConfigError, match="hidden must be"):
        create_model("mlp", hidden="big")
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 1"):
        create_model("lenet5", num_classes=0)
    with pytest.raises(ConfigError, match="depth must be 6n\\+2"):
        create_model("resnet_cifar", depth=21)
    with pytest.raises(ConfigError, match="6n\\+4"):
        create_model("wrn", depth=27)
    with pytest.raises(ConfigError, match="dropout must be a number in"):
        create_model("wrn16_8", dropout=1.5)
    with pytest.raises(ConfigError, match="zero_init_residual must be true or false"):
        create_model("resnet18", zero_init_residual="yes")


def test_model_options_lists_defaults():
    assert model_options("resnet18") == {"stem": None, "zero_init_residual": False}
    assert model_options("wrn")["depth"] == 28


def test_register_custom_model(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("Tiny")
    def tiny(num_classes=10, in_channels=3, image_size=32, hidden=4):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))

    model = create_model("tiny", num_classes=3, in_channels=1, image_size=2)
    assert model(torch.randn(2, 1, 2, 2)).shape == (2, 3)
    assert model.underbudget_name == "tiny"
    with pytest.raises(ConfigError, match="already registered"):
        register_model("tiny")(lambda **kw: nn.Identity())
    with pytest.raises(ConfigError, match="no ':'"):
        register_model("a:b")


def test_count_parameters_trainable_and_shared():
    model = create_model("lenet5")
    total = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    model.conv1.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - 3 * 6 * 25 - 6
    shared = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(shared, shared)) == 20
