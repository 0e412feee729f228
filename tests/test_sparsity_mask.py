"""MaskSet: persistence, copies, state_dict keys, other architectures, torch.compile."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from underbudget import sparsity
from underbudget.errors import CheckpointError
from underbudget.sparsity import MaskedOptimizer, MaskSet


def cnn(width=8):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(width * 4, 10),
    )


def test_save_load_round_trip(tmp_path):
    model = cnn()
    masks = sparsity.prune(model, 0.3)
    path = tmp_path / "run" / "masks.safetensors"
    masks.save(path, metadata={"stage": 2})
    loaded = MaskSet.load(path, model=model)
    assert loaded.names() == masks.names()
    for n in masks:
        assert loaded[n].dtype == torch.bool
        assert torch.equal(loaded[n], masks[n])
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["stage"] == "2" and meta["format"] == "underbudget.masks"
    assert [p.name for p in path.parent.iterdir()] == ["masks.safetensors"]  # no temp files left


def test_loading_masks_for_another_architecture_fails_clearly(tmp_path):
    masks = sparsity.prune(cnn(8), 0.3)
    path = tmp_path / "masks.safetensors"
    masks.save(path)
    with pytest.raises(CheckpointError, match="another architecture") as info:
        MaskSet.load(path, model=cnn(16))
    assert "0.weight" in str(info.value) and "(8, 3, 3, 3)" in str(info.value)
    with pytest.raises(CheckpointError, match="lacks"):
        MaskSet.load(path, model=nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(CheckpointError, match="another architecture"):
        masks.apply(cnn(16))
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="truncated"):
        MaskSet.load(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        MaskSet.load(tmp_path / "nope.safetensors")


def test_state_dict_keys_unchanged_and_checkpoint_loads_into_plain_model():
    model = cnn()
    keys = list(model.state_dict())
    masks = sparsity.prune(model, 0.2)
    opt = MaskedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), masks)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert list(model.state_dict()) == keys
    plain = cnn()
    plain.load_state_dict(model.state_dict())
    assert MaskSet.from_weights(plain).density() == pytest.approx(0.2, abs=1e-2)


def test_deepcopy_of_masks_and_model():
    model = cnn()
    masks = sparsity.prune(model, 0.3)
    masks.binding()  # populate the cache that must not be deep-copied with the params
    dup = copy.deepcopy(masks)
    assert dup.names() == masks.names()
    assert all(torch.equal(dup[n], masks[n]) and dup[n] is not masks[n] for n in masks)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(1.0)
    dup.apply(twin)
    for n in masks:
        assert torch.all(twin.get_parameter(n)[~masks[n]] == 0)
        assert not torch.equal(twin.get_parameter(n), model.get_parameter(n))
    # the copy is independent
    m = dup["5.weight"].clone()
    m[:] = False
    dup["5.weight"] = m
    assert masks["5.weight"].any()


def test_measures_and_set_algebra():
    model = cnn()
    a = sparsity.prune(model, 0.5)
    b = sparsity.prune(cnn(), 0.5, "random", seed=1)
    b.update({n: b[n] for n in b})
    inter = a.intersection(b).nonzeros()
    union = a.union(b).nonzeros()
    assert a.iou(b) == pytest.approx(inter / union)
    assert a.intersection(b).is_subset_of(a) and not a.is_subset_of(b)
    total = sum(p.numel() for p in model.parameters())
    assert a.density_all(model) == pytest.approx((total - (a.numel() - a.nonzeros())) / total)
    assert a.version > 0


def _compiled_matches_eager(backend):
    model = cnn().eval()
    masks = sparsity.prune(model, 0.6)
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(compiled(x), model(x))
    sparsity.prune(compiled, 0.2, masks=masks)  # names resolve through the compiled wrapper
    assert masks.density() == pytest.approx(0.2, abs=0.01)
    out = compiled(x)
    torch.testing.assert_close(out, model(x))
    dense = cnn().eval()
    dense.load_state_dict(model.state_dict())
    torch.testing.assert_close(out, dense(x))


def test_torch_compile_matches_eager_after_a_mask_change():
    """AOT-traced graph (parameters are graph inputs, not constants); quick on CPU."""
    _compiled_matches_eager("aot_eager")


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager_after_a_mask_change():
    """The default inductor backend (about 30 s of C++ compilation on a small CPU)."""
    _compiled_matches_eager("inductor")


def test_masks_follow_a_change_of_memory_format():
    model = cnn()
    masks = sparsity.prune(model, 0.3)
    masks.apply()
    model.to(memory_format=torch.channels_last)
    keep = masks.binding().keep[0]
    assert keep.stride() == model[0].weight.stride()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    masks.apply()
    assert torch.all(model[0].weight[~masks["0.weight"]] == 0)
    assert bool((model[0].weight[masks["0.weight"]] != 0).all())
