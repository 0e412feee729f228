"""Evaluation: exact sums against a plain loop, re-cut batches, logits for calibration, and the
model left as it was found."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from underbudget.data import Augment, ImageSet, Loader
from underbudget.train.evaluate import channels_last_plan, eval_batch_size, evaluate


def image_set(n=37, shape=(1, 8, 8), classes=4, seed=0) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen)
    return ImageSet(images, labels, [f"c{i}" for i in range(classes)])


def small_net(classes=4) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, classes))


def reference(model, loader) -> dict:
    """The definition: per-example loss and correctness summed over the whole set."""
    model.eval()
    losses, hits, logits = [], [], []
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            losses.append(F.cross_entropy(out, y, reduction="none").double())
            hits.append(out.argmax(1) == y)
            logits.append(out)
    loss, hit = torch.cat(losses), torch.cat(hits)
    return {"loss": float(loss.mean()), "acc": float(hit.double().mean()),
            "errors": int((~hit).sum()), "n": hit.numel(), "logits": torch.cat(logits)}


def test_matches_the_plain_loop_for_any_batch_cut():
    data, model = image_set(), small_net()
    loader = Loader(data, 5, mean=0.5, std=0.25)
    ref = reference(model, loader)
    for size in (None, 1, 7, 37, 100):
        out = evaluate(model, loader, batch_size=size)
        assert out["n"] == ref["n"] == 37
        assert out["errors"] == ref["errors"] and out["acc"] == ref["acc"]
        assert abs(out["loss"] - ref["loss"]) < 1e-5


def test_return_logits_in_loader_order_on_cpu_and_usable_by_autograd():
    data, model = image_set(), small_net()
    loader = Loader(data, 8, mean=0.5, std=0.25)
    ref = reference(model, loader)
    out = evaluate(model, loader, return_logits=True, batch_size=16)
    assert out["logits"].device.type == "cpu" and out["logits"].dtype == torch.float32
    assert torch.allclose(out["logits"], ref["logits"], atol=1e-5)
    assert torch.equal(out["labels"], data.labels)
    temperature = torch.ones((), requires_grad=True)  # what calibration does with them
    F.cross_entropy(out["logits"] / temperature, out["labels"]).backward()
    assert temperature.grad is not None and torch.isfinite(temperature.grad)


def test_model_mode_and_weights_are_left_alone_and_it_still_trains():
    data, model = image_set(), small_net()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, Loader(data, 8, mean=0.5, std=0.25))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats untouched (eval mode)
    x = torch.randn(4, 1, 8, 8)
    model(x).sum().backward()  # no inference tensors were left behind in the model
    assert model[0].weight.grad is not None


def test_only_plain_in_memory_loaders_are_recut():
    data = image_set()
    cpu = torch.device("cpu")
    plain = Loader(data, 5, mean=0.5, std=0.25)
    assert eval_batch_size(plain, cpu) is None  # small batches are kept on a CPU
    assert eval_batch_size(Loader(data, 1000, mean=0.5, std=0.25), cpu) == 256  # cache-sized
    assert eval_batch_size(plain, cpu, 64) == 64
    augmented = Loader(data, 5, mean=0.5, std=0.25, augment=Augment(crop_padding=1))
    dropping = Loader(data, 5, mean=0.5, std=0.25, drop_last=True)
    batches = list(plain)
    for loader in (augmented, dropping, batches):
        assert eval_batch_size(loader, cpu, 64) is None
    out = evaluate(small_net(), dropping, batch_size=64)
    assert out["n"] == 35  # drop_last is honoured: the same examples as the loader gives
    assert evaluate(small_net(), batches, batch_size=64)["n"] == 37
    assert plain.batch_size == 5  # the caller's loader is not modified


def test_channels_last_inputs_and_auto_detection_give_the_same_result():
    data, model = image_set(), small_net()
    loader = Loader(data, 8, mean=0.5, std=0.25)
    ref = evaluate(model, loader, return_logits=True)
    cl = evaluate(model, loader, return_logits=True, channels_last=True)
    model_cl = small_net().to(memory_format=torch.channels_last)
    auto = evaluate(model_cl, loader, return_logits=True, channels_last=None)
    for out in (cl, auto):
        assert out["errors"] == ref["errors"]
        assert torch.allclose(out["logits"], ref["logits"], atol=1e-5)


def test_forward_override_is_what_gets_evaluated():
    data, model = image_set(), small_net()
    loader = Loader(data, 8, mean=0.5, std=0.25)
    out = evaluate(model, loader, forward=lambda x: torch.zeros(x.shape[0], 4))
    assert abs(out["loss"] - torch.log(torch.tensor(4.0)).item()) < 1e-6


def test_auto_channels_last_on_cpu_switches_weights_for_the_pass_only():
    data, model = image_set(), small_net()
    loader = Loader(data, 8, mean=0.5, std=0.25)
    ref = evaluate(model, loader, return_logits=True)
    weight = model[0].weight
    before = (weight.data_ptr(), weight.stride())
    seen = []
    cl_strides = torch.empty_like(weight, memory_format=torch.channels_last).stride()
    assert weight.stride() != cl_strides
    model[0].register_forward_pre_hook(lambda m, args: seen.append(m.weight.stride() == cl_strides))
    auto = evaluate(model, loader, return_logits=True, channels_last=None)
    assert seen and all(seen)  # the pass ran in channels-last
    assert (weight.data_ptr(), weight.stride()) == before  # the same storage and layout back
    assert auto["errors"] == ref["errors"]
    assert torch.allclose(auto["logits"], ref["logits"], atol=1e-5)
    cpu = torch.device("cpu")
    assert channels_last_plan(model, cpu, model, None) == (True, True)
    assert channels_last_plan(model, cpu, model, False) == (False, False)
    compiled = type("Compiled", (), {"_orig_mod": model})()  # what torch.compile returns
    assert channels_last_plan(model, cpu, compiled, None) == (False, False)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    assert channels_last_plan(mlp, cpu, mlp, None) == (False, False)


def test_cuda_batches_are_sized_by_free_memory(monkeypatch):
    cuda = torch.device("cuda")
    big = Loader(image_set(n=20000), 100, mean=0.5, std=0.25)  # 1x8x8: 256 float bytes each
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**30, 2**31))
    assert eval_batch_size(big, cuda) == 8192  # 1/256 of 1 GiB fits 16384: capped
    small = Loader(image_set(n=37), 5, mean=0.5, std=0.25)
    assert eval_batch_size(small, cuda) == 37  # never more than the set
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**16, 2**31))
    assert eval_batch_size(big, cuda) is None  # too little free memory: the loader's own size
