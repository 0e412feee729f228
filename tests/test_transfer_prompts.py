"""Visual prompt geometry: parameter counts, exact image window, border values, validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from underbudget.errors import ConfigError
from underbudget.transfer import ExpansivePrompt, PadPrompt, PatchPrompt, ShrinkPadPrompt


@pytest.mark.parametrize("size,r,channels", [(32, 20, 3), (33, 20, 3), (16, 16, 1), (10, 3, 2)])
def test_expansive_parameter_count_formula(size, r, channels):
    prompt = ExpansivePrompt(size, r, channels)
    assert prompt.num_parameters == channels * (size**2 - r**2)
    assert prompt.theta.shape == (channels, size, size)
    assert int(prompt.mask.sum()) == size**2 - r**2


@pytest.mark.parametrize("size,pad", [(32, 4), (31, 1), (9, 4)])
def test_pad_parameter_count_formula(size, pad):
    for cls in (PadPrompt, ShrinkPadPrompt):
        prompt = cls(size, pad, 3)
        assert prompt.num_parameters == 3 * (4 * pad * size - 4 * pad**2)
    assert ShrinkPadPrompt(size, pad, 3).r == size - 2 * pad


def test_patch_parameter_count_formula():
    prompt = PatchPrompt(32, 5, 3)
    assert prompt.num_parameters == 3 * 25
    assert sum(p.numel() for p in prompt.parameters()) == 3 * 25


@pytest.mark.parametrize("size,r", [(32, 20), (33, 20), (24, 17)])
def test_centre_window_is_the_resized_image_exactly(size, r):
    prompt = ExpansivePrompt(size, r, 3)
    with torch.no_grad():
        prompt.theta.normal_(0, 3)
    x = torch.rand(2, 3, 28, 28)
    out = prompt(x)
    lo = (size - r) // 2
    resized = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
    assert torch.equal(out[:, :, lo : lo + r, lo : lo + r], resized)
    rows, cols = prompt.window
    assert torch.equal(out[:, :, rows, cols], resized)
    # outside the window: exactly sigmoid(theta), the canvas there is zero
    border = prompt.mask.bool().expand(3, size, size)
    expected = torch.sigmoid(prompt.theta).detach().expand(2, -1, -1, -1)
    assert torch.equal(out[:, border], expected[:, border])
    assert out.min() >= 0 and out.max() <= 1


def test_odd_margin_puts_the_extra_pixel_bottom_right():
    prompt = ExpansivePrompt(7, 4, 1)
    mask = prompt.mask[0]
    assert mask[1:5, 1:5].sum() == 0
    assert mask[0].all() and mask[5].all() and mask[6].all() and mask[:, 0].all()


def test_only_border_entries_get_gradient_and_init_is_zero():
    prompt = ExpansivePrompt(12, 6, 3)
    assert torch.equal(prompt.theta, torch.zeros(3, 12, 12))
    prompt(torch.rand(2, 3, 12, 12)).sum().backward()
    grad = prompt.theta.grad
    inside = ~prompt.mask.bool().expand(3, -1, -1)
    assert (grad[inside] == 0).all()
    assert (grad[~inside] != 0).all()
    assert int((grad != 0).sum()) == prompt.num_parameters


def test_shrink_pad_prompt_frames_the_shrunk_image_without_sigmoid():
    prompt = ShrinkPadPrompt(10, 2, 3)
    with torch.no_grad():
        prompt.theta.fill_(-0.25)
    x = torch.rand(1, 3, 6, 6)
    out = prompt(x)
    assert torch.allclose(out[0, :, 0, :], torch.full((3, 10), -0.25))
    assert torch.equal(out[:, :, 2:8, 2:8], x)  # the image, shrunk to 6 x 6, uncovered


def test_pad_prompt_draws_its_border_over_the_full_size_image():
    prompt = PadPrompt(10, 2, 3)
    with torch.no_grad():
        prompt.theta.normal_(0, 1)
    x = torch.rand(2, 3, 7, 7)
    out = prompt(x)
    full = F.interpolate(x, size=(10, 10), mode="bilinear", align_corners=False)
    border = torch.ones(10, 10, dtype=torch.bool)
    border[2:8, 2:8] = False
    assert torch.equal(out[:, :, ~border], full[:, :, ~border])  # the image keeps 10 x 10
    theta = prompt.theta.detach()
    assert torch.equal(out[:, :, border], full[:, :, border] + theta[:, border])  # no sigmoid
    same = torch.rand(1, 3, 10, 10)  # an image of the frame's size is not resampled
    assert torch.equal(prompt(same)[:, :, 4, 4], same[:, :, 4, 4])
    # Bahng et al.'s 30-pixel border at 224: 3 x (224^2 - 164^2) parameters, none on the image
    bahng = PadPrompt(224, 30, 3)
    assert bahng.num_parameters == 69_840 and bahng(torch.rand(1, 3, 32, 32)).shape[-1] == 224


def test_patch_prompt_adds_a_corner_patch_to_the_full_image():
    prompt = PatchPrompt(12, 3, 3)
    with torch.no_grad():
        prompt.theta.copy_(torch.arange(27.0).view(3, 3, 3))
    x = torch.rand(2, 3, 8, 8)
    out = prompt(x)
    resized = F.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False)
    assert torch.equal(out[:, :, :3, :3], resized[:, :, :3, :3] + prompt.theta.detach())
    rest = torch.ones(12, 12, dtype=torch.bool)
    rest[:3, :3] = False
    assert torch.equal(out[:, :, rest], resized[:, :, rest])


def test_same_size_input_is_not_resampled_and_grayscale_is_repeated():
    prompt = ExpansivePrompt(16, 8, 3)
    x = torch.rand(2, 1, 8, 8)
    out = prompt(x)
    assert torch.equal(out[:, :, 4:12, 4:12], x.expand(-1, 3, -1, -1))


def test_invalid_geometry_and_inputs_are_config_errors():
    with pytest.raises(ConfigError, match="r <= 32"):
        ExpansivePrompt(32, 33, 3)
    with pytest.raises(ConfigError, match="positive integer"):
        ExpansivePrompt(32, 0, 3)
    for cls in (PadPrompt, ShrinkPadPrompt):
        with pytest.raises(ConfigError, match="pad < 16"):
            cls(32, 16, 3)
    with pytest.raises(ConfigError, match="patch <= 8"):
        PatchPrompt(8, 9, 3)
    prompt = ExpansivePrompt(8, 4, 3)
    with pytest.raises(ConfigError, match="channels=2"):
        prompt(torch.rand(1, 2, 4, 4))
    with pytest.raises(ConfigError, match="255"):
        prompt(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="batch, channels"):
        prompt(torch.rand(3, 4, 4))
