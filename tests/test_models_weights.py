"""load_weights / save_weights: formats, nesting, prefixes, clear errors on a wrong checkpoint."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.nn.utils import prune

from underbudget.errors import CheckpointError
from underbudget.models import create_model, load_weights, read_state_dict, save_weights


class Opaque:
    """An arbitrary Python object that weights_only loading must refuse."""


def trained(name: str = "resnet20", **kwargs) -> nn.Module:
    """A model with non-trivial BN running statistics."""
    model = create_model(name, **kwargs)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, kwargs.get("in_channels", 3), 8, 8))
    return model


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_safetensors_round_trip_is_atomic_and_exact(tmp_path):
    source = trained()
    path = save_weights(source, tmp_path / "w" / "model.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata()["model"] == "resnet20"
        assert "bn1.running_mean" in fh.keys()
    target = create_model("resnet20", seed=7)
    assert load_weights(target, path) is target
    assert_same_state(source, target)
    assert int(target.bn1.num_batches_tracked) == 1


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},
    ],
    ids=["raw", "state_dict", "model", "ddp", "compiled"],
)
def test_torch_save_files_load(tmp_path, wrap):
    source = trained("lenet5", in_channels=1, image_size=8)
    torch.save(wrap(source.state_dict()), tmp_path / "ckpt.pth")
    target = load_weights(
        create_model("lenet5", in_channels=1, image_size=8), tmp_path / "ckpt.pth"
    )
    assert_same_state(source, target)


def test_format_is_recognised_by_content_not_suffix(tmp_path):
    source = trained("convnet", widths=(4, 8))
    save_weights(source, tmp_path / "weights.bin")
    torch.save(source.state_dict(), tmp_path / "weights.safetensors")
    for name in ("weights.bin", "weights.safetensors"):
        target = load_weights(create_model("convnet", widths=(4, 8)), tmp_path / name)
        assert_same_state(source, target)


def test_prefix_kept_when_the_model_itself_uses_it(tmp_path):
    wrapped = nn.Sequential()
    wrapped.add_module("module", nn.Linear(3, 2))
    torch.save(wrapped.state_dict(), tmp_path / "w.pt")
    fresh = nn.Sequential()
    fresh.add_module("module", nn.Linear(3, 2))
    load_weights(fresh, tmp_path / "w.pt")
    assert torch.equal(fresh.module.weight, wrapped.module.weight)


def test_wrong_architecture_raises_one_clear_error(tmp_path):
    path = save_weights(create_model("resnet20"), tmp_path / "r20.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_weights(create_model("resnet32"), path)
    message = str(info.value)
    assert "r20.safetensors" in message and "resnet32" in message
    assert re.search(r"layer1\.3\.conv1\.weight \[16, 16, 3, 3\]", message)
    assert "\n" not in message
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_extra_blocks_count_in_message(tmp_path):
    # resnet32 minus resnet20: 3 stages x 2 blocks x (2 conv weights + 2 BNs x 5 entries) = 72,
    # of which 12 are num_batches_tracked (tolerated when missing) -> 60 reported.
    path = save_weights(create_model("resnet20"), tmp_path / "r20.safetensors")
    with pytest.raises(CheckpointError, match="60 key\\(s\\) missing"):
        load_weights(create_model("resnet32"), path)
    bigger = save_weights(create_model("resnet32"), tmp_path / "r32.safetensors")
    with pytest.raises(CheckpointError, match="72 key\\(s\\) not in the model: layer1.3"):
        load_weights(create_model("resnet20"), bigger)


def test_head_mismatch_and_skip_mismatched_head(tmp_path):
    source = trained("resnet20")
    path = save_weights(source, tmp_path / "cifar10.safetensors")
    target = create_model("resnet20", num_classes=100)
    with pytest.raises(
        CheckpointError, match=r"fc.weight checkpoint \[10, 64\] vs model \[100, 64\]"
    ):
        load_weights(target, path)
    head = target.fc.weight.detach().clone()
    load_weights(target, path, skip_mismatched_head=True)
    assert torch.equal(target.fc.weight, head)
    state, loaded = source.state_dict(), target.state_dict()
    assert all(torch.equal(state[k], loaded[k]) for k in state if not k.startswith("fc."))
    # A checkpoint without any head (a saved backbone) loads too.
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    torch.save(backbone, tmp_path / "backbone.pt")
    other = create_model("resnet20", num_classes=5)
    load_weights(other, tmp_path / "backbone.pt", skip_mismatched_head=True)
    assert torch.equal(other.conv1.weight, source.conv1.weight)


def test_strict_false_tolerates_missing_but_not_shape_mismatch(tmp_path):
    source = trained("resnet20")
    partial = {k: v for k, v in source.state_dict().items() if k.startswith("conv1")}
    partial["extra.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "partial.pt")
    target = create_model("resnet20")
    with pytest.raises(CheckpointError, match="not in the model: extra.weight \\[1\\]"):
        load_weights(target, tmp_path / "partial.pt")
    with pytest.warns(UserWarning, match="strict=False"):
        load_weights(target, tmp_path / "partial.pt", strict=False)
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    wrong = {"conv1.weight": torch.zeros(16, 3, 5, 5)}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_weights(target, tmp_path / "wrong.pt", strict=False)
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "none.pt")
    with pytest.raises(CheckpointError):
        load_weights(target, tmp_path / "none.pt", strict=False)


def test_pickled_objects_are_refused(tmp_path):
    sd = create_model("lenet5").state_dict()
    torch.save({"state_dict": sd, "extra": Opaque()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_weights(create_model("lenet5"), tmp_path / "unsafe.pt")


def test_unreadable_files(tmp_path):
    model = create_model("lenet5")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(model, tmp_path / "nope.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(CheckpointError, match="neither a safetensors nor a torch.save"):
        load_weights(model, tmp_path / "junk.pt")
    good = save_weights(model, tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_weights(model, tmp_path / "cut.safetensors")
    torch.save(model.state_dict(), tmp_path / "full.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="could not be read by torch.load"):
        load_weights(model, tmp_path / "cut.pt")
    torch.save({"epoch": 3}, tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        read_state_dict(tmp_path / "nothing.pt")


def test_prune_pairs_fold_into_weights(tmp_path):
    pruned = create_model("lenet5", in_channels=1, image_size=8)
    prune.l1_unstructured(pruned.conv1, "weight", amount=0.5)
    prune.random_unstructured(pruned.fc1, "weight", amount=0.3)
    assert "conv1.weight_orig" in pruned.state_dict()
    torch.save(pruned.state_dict(), tmp_path / "pruned.pt")
    plain = load_weights(
        create_model("lenet5", in_channels=1, image_size=8), tmp_path / "pruned.pt"
    )
    assert torch.equal(plain.conv1.weight, pruned.conv1.weight)
    assert torch.equal(plain.fc1.weight, pruned.fc1.weight)
    assert int((plain.conv1.weight == 0).sum()) == 75
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(plain(x), pruned(x))
