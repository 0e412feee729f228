"""D2-Sparse pieces: densities, timescales, independence, detached coupling, EMA, variants."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from underbudget.config import OptimConfig, TrainConfig, load_config
from underbudget.errors import ConfigError
from underbudget.methods.d2sparse import (
    D2SparseConfig,
    DualLoss,
    DualNet,
    SlowEMA,
    build_dual,
    consistency,
    ema_decay,
    initial_masks,
)
from underbudget.methods.d2sparse.dynamic import guided_scores
from underbudget.sparsity import RigL, Targets
from underbudget.train import Callback, Trainer
from underbudget.utils.seeding import derive_seed, generator

SEED = 7



class Net(nn.Module):
    """Tiny conv net with BatchNorm (buffers) and three prunable layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv1(x))), 2)
        x = F.relu(self.conv2(x)).mean((2, 3))
        return self.fc(x)


def make_net(key: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(SEED, key))
        return Net()


class Batches:
    """Deterministic loader: the batches of epoch e depend only on e."""

    def __init__(self, n_batches=4, batch=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n_batches * batch, 1, 8, 8, generator=g)
        self.y = torch.randint(0, 4, (n_batches * batch,), generator=g)
        self.x += self.y.view(-1, 1, 1, 1).float() * 0.5  # learnable
        self.n, self.batch, self.epoch = n_batches, batch, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        order = torch.randperm(self.n * self.batch, generator=generator(0, self.epoch))
        for i in range(self.n):
            idx = order[i * self.batch : (i + 1) * self.batch]
            yield self.x[idx], self.y[idx]


def optim():
    return OptimConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine")


def train_cfg():
    return TrainConfig(device="cpu", progress=False, eval_every=0, checkpoint=False)


class Watch(Callback):
    """Records every network's masks and checks the weights after each optimizer step."""

    def __init__(self, setup):
        self.setup = setup
        self.history = {w: [] for w in setup.masks}
        self.violations = 0

    def after_optimizer_step(self, trainer):
        for which, masks in self.setup.masks.items():
            self.history[which].append({n: m.clone() for n, m in masks.items()})
            for name, mask in masks.items():
                p = trainer.model.get_parameter(name)
                self.violations += int((p.detach()[~mask] != 0).sum())


def run_setup(mcfg: D2SparseConfig, epochs=10, loader=None, extra=()):
    loader = loader or Batches()
    setup = build_dual(
        mcfg, make_net, steps_per_epoch=len(loader), total_steps=epochs * len(loader), seed=SEED
    )
    watch = Watch(setup)
    trainer = Trainer(
        setup.model,
        optim(),
        train_cfg(),
        callbacks=[*setup.callbacks, watch, *extra],
        loss_fn=setup.loss_fn,
        eval_forward=setup.eval_forward,
        params=setup.params,
    )
    trainer.fit(loader, epochs)
    return setup, trainer, watch


def config(**kw) -> D2SparseConfig:
    base = dict(
        density=0.3,
        fast_interval=4,
        slow_interval=12,
        fast_alpha=0.4,
        slow_alpha=0.1,
        fast_t_end=0.75,
        slow_t_end=0.75,
    )
    base.update(kw)
    cfg = D2SparseConfig(**base)
    cfg.validate()
    return cfg


def changes(history) -> int:
    return sum(any(not torch.equal(a[n], b[n]) for n in a) for a, b in zip(history, history[1:]))


def test_both_networks_keep_their_density_and_s_changes_less_often():
    setup, trainer, watch = run_setup(config())
    assert watch.violations == 0  # pruned weights of both networks stay exactly zero
    for which in ("fast", "slow"):
        first, hist = watch.history[which][0], watch.history[which]
        total = sum(m.numel() for m in first.values())
        for masks in hist:  # measured after every step: same count per layer, same density
            assert {n: int(m.sum()) for n, m in masks.items()} == {
                n: int(m.sum()) for n, m in first.items()
            }
        assert sum(int(m.sum()) for m in first.values()) == pytest.approx(0.3 * total, abs=2)
    # 40 steps, T_end = 30: F updates at 4, 8, ..., 28 (7 times), S at 12 and 24 (twice)
    fast_changes, slow_changes = changes(watch.history["fast"]), changes(watch.history["slow"])
    assert 0 < slow_changes < fast_changes
    assert setup.evolution.measures()["fast_updates"] == 7
    assert setup.evolution.measures()["slow_updates"] == 2


def test_masks_differ_exactly_when_timescales_differ():
    same, _, _ = run_setup(
        config(same_init=True, lambda_fast=0.0, lambda_slow=0.0, slow_interval=4, slow_alpha=0.4)
    )
    other, _, _ = run_setup(config(same_init=True, lambda_fast=0.0, lambda_slow=0.0))
    # identical start, same timescale, no coupling: F and S stay identical
    assert same.evolution.measures()["iou_fast_slow"] == 1.0
    for (n, a), b in zip(
        same.model.fast.state_dict().items(), same.model.slow.state_dict().values()
    ):
        assert torch.equal(a, b), n
    # identical start, S on a slower timescale: the masks drift apart
    assert other.evolution.measures()["iou_fast_slow"] < 0.95


def test_uncoupled_pair_equals_two_separate_rigl_runs():
    mcfg = config(lambda_fast=0.0, lambda_slow=0.0)
    setup, trainer, _ = run_setup(mcfg, epochs=8)
    loader = Batches()
    total = 8 * len(loader)
    for which, prefix in (("fast", "fast."), ("slow", "slow.")):
        net = make_net(f"init-{which}")
        masks = initial_masks(net, "", 0.3, "erk", Targets(), derive_seed(SEED, "mask", which))
        rigl = RigL(
            masks=masks,
            update_interval=getattr(mcfg, f"{which}_interval"),
            alpha=getattr(mcfg, f"{which}_alpha"),
            t_end=int(0.75 * total),
            total_steps=total,
        )
        alone = Trainer(net, optim(), train_cfg(), callbacks=[rigl])
        alone.fit(loader, 8)
        pair = getattr(setup.model, which).state_dict()
        for name, value in alone.model.state_dict().items():
            torch.testing.assert_close(pair[name], value, rtol=1e-5, atol=1e-6)
        for name, mask in rigl.masks.items():
            assert torch.equal(setup.masks[which][prefix + name], mask)


def test_consistency_gradient_reaches_each_network_only_through_its_own_logits():
    torch.manual_seed(0)
    model = DualNet(make_net("a"), make_net("b"))
    x, y = next(iter(Batches()))
    for kind in ("mse", "kl"):
        for lam_f, lam_s in ((0.7, 0.0), (0.0, 0.9), (0.4, 0.6)):
            loss_fn = DualLoss(
                model.fast,
                model.slow,
                kind=kind,
                temperature=2.0,
                lambda_fast=lam_f,
                lambda_slow=lam_s,
            )
            model.zero_grad()
            loss_fn(None, x, y)[0].backward()
            got = {n: p.grad.clone() for n, p in model.named_parameters()}
            # reference: each network's own loss with the other's logits as constants
            ref = copy.deepcopy(model)
            ref.zero_grad()
            with torch.no_grad():
                f_const, s_const = ref.fast(x), ref.slow(x)
            f, s = ref.fast(x), ref.slow(x)
            if kind == "mse":
                cons_f = ((f - s_const) ** 2).mean()
                cons_s = ((s - f_const) ** 2).mean()
            else:

                def kl(student, teacher):
                    pt = F.softmax(teacher / 2, 1)
                    return (pt * (pt.log() - F.log_softmax(student / 2, 1))).sum(1).mean() * 4

                cons_f, cons_s = kl(f, s_const), kl(s, f_const)
            (F.cross_entropy(f, y) + lam_f * cons_f).backward(retain_graph=True)
            (F.cross_entropy(s, y) + lam_s * cons_s).backward()
            for name, p in ref.named_parameters():
                torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6)


def test_consistency_values_match_hand_formulas():
    s = torch.tensor([[1.0, 0.0, -1.0]])
    t = torch.tensor([[0.0, 0.0, 1.0]])
    assert consistency(s, t, "mse").item() == pytest.approx((1 + 0 + 4) / 3)
    pt = torch.softmax(t / 2, 1)
    ps = torch.softmax(s / 2, 1)
    hand = float((pt * (pt / ps).log()).sum()) * 4
    assert consistency(s, t, "kl", 2.0).item() == pytest.approx(hand, rel=1e-5)
    with pytest.raises(ConfigError, match="did you mean 'mse'"):
        consistency(s, t, "mse2")


def test_ema_slow_weights_follow_the_formula():
    torch.manual_seed(0)
    fast = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    slow = copy.deepcopy(fast)
    mask = {"slow.0.weight": torch.rand(5, 6) > 0.5, "slow.2.weight": torch.rand(3, 5) > 0.3}
    from underbudget.sparsity import MaskSet

    masks = MaskSet(mask)
    model = DualNet(fast, slow, slow_frozen=True)
    masks.apply(model)
    for decay, rate, warmup in ((0.9, 1.0, False), (0.9, 1.0, True), (0.8, 0.5, False)):
        ema = SlowEMA(fast, slow, masks, "slow.", decay=decay, rate=rate, warmup=warmup, seed=3)
        expected = {n: p.detach().clone() for n, p in slow.named_parameters()}
        expected_buf = {n: b.clone() for n, b in slow.named_buffers()}
        opt = torch.optim.SGD(fast.parameters(), lr=0.1)
        updates = 0
        for k in range(1, 7):
            x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
            opt.zero_grad()
            F.cross_entropy(model.fast(x), y).backward()
            opt.step()
            ema.after_optimizer_step(None)
            draw = float(torch.rand((), generator=generator(3, "ema", k)))
            if rate >= 1 or draw < rate:
                updates += 1
                a = min(decay, 1 - 1 / (k + 1)) if warmup else decay
                for n, p in fast.named_parameters():
                    value = a * expected[n] + (1 - a) * p.detach()
                    m = mask.get("slow." + n)
                    expected[n] = value * m if m is not None else value
                for n, b in fast.named_buffers():
                    if b.is_floating_point():
                        expected_buf[n] = a * expected_buf[n] + (1 - a) * b
                    else:
                        expected_buf[n] = b.clone()
            for n, p in slow.named_parameters():
                torch.testing.assert_close(p.detach(), expected[n], rtol=1e-6, atol=1e-7)
            for n, b in slow.named_buffers():
                torch.testing.assert_close(b, expected_buf[n])
        assert ema.updates == updates and (rate < 1) == (0 < updates < 6)
    assert ema_decay(1, 0.999, True) == 0.5 and ema_decay(5000, 0.999, True) == 0.999


def test_ema_variant_trains_only_f_and_keeps_s_sparse():
    setup, trainer, watch = run_setup(config(slow_mode="ema", ema_decay=0.9), epochs=6)
    assert watch.violations == 0
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for p in setup.model.fast.parameters()}
    assert not setup.model.slow.training  # S is never in training mode
    first = setup.evolution.state
    assert all(
        torch.equal(first["fast"]["initial"][n], first["slow"]["initial"][n])
        for n in first["fast"]["initial"]
    )  # S starts as F, mask included
    x, y = next(iter(Batches()))
    with torch.no_grad():  # S tracks F: it predicts like F, far above chance
        agree = (setup.model.slow(x).argmax(1) == setup.model.fast(x).argmax(1)).float().mean()
    assert agree > 0.7
    assert setup.evolution.measures()["slow_updates"] >= 1  # RigL on S got S's gradient
    assert all(p.grad is None for p in setup.model.slow.parameters())


def test_shared_weights_two_masks_one_network():
    setup, trainer, _ = run_setup(config(shared_weights=True), epochs=6)
    model = setup.model
    f, s = setup.masks["fast"], setup.masks["slow"]
    for name, param in model.named_parameters():
        if name in f:  # zero outside the union, and each mask keeps its layer count
            assert int((param.detach()[~(f[name] | s[name])] != 0).sum()) == 0
    assert setup.evolution.measures()["fast_updates"] > setup.evolution.measures()["slow_updates"]
    x, _ = next(iter(Batches()))
    net, masks = setup.deployed()
    net.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x))  # the deployed copy is S
        assert not torch.allclose(model.run(x, "fast"), model(x))
    for name, mask in masks.items():
        assert int((net.get_parameter(name)[~mask] != 0).sum()) == 0


def test_slow_growth_guided_by_fast_weights():
    w = torch.tensor([0.0, 3.0, -2.0, 0.0, 1.0])
    alive = torch.tensor([False, True, True, True, False])
    grad = torch.tensor([9.0, 0.0, 0.0, 0.0, 5.0])
    scores = guided_scores(w, alive, grad)
    order = torch.argsort(scores, descending=True).tolist()
    assert order == [1, 2, 3, 0, 4]  # F alive by magnitude first, then by S's gradient
    setup, _, _ = run_setup(config(slow_growth="fast", slow_interval=8), epochs=4)
    assert setup.evolution.measures()["slow_updates"] >= 1


def test_single_network_ablation_trains_s_alone():
    setup, trainer, watch = run_setup(config(single=True))
    assert list(setup.masks) == ["slow"] and watch.violations == 0
    assert setup.evolution.measures()["slow_updates"] == 2


def test_interval_never_shorter_than_one_pass():
    setup = build_dual(
        config(fast_interval=2, slow_interval=3),
        make_net,
        steps_per_epoch=5,
        total_steps=50,
        seed=0,
    )
    assert setup.intervals == {"fast": 5, "slow": 5}
    setup = build_dual(
        config(fast_interval=2, interval_floor=False),
        make_net,
        steps_per_epoch=5,
        total_steps=50,
        seed=0,
    )
    assert setup.intervals["fast"] == 2


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.slow_growth=fastest", "did you mean 'fast'"),
        ("method.consistency=kld", "did you mean 'kl'"),
        ("method.slow_mode=emaa", "did you mean 'ema'"),
        ("method.density=0", "method.density must be in"),
        ("method.fast_t_end=1.5", "fraction of training"),
        ("method.shared_weights=true", "exclude each other"),
    ],
)
def test_config_errors_name_the_fix(override, message):
    overrides = ["method.name=d2sparse", override]
    if "shared" in override:
        overrides.append("method.slow_mode=ema")
    with pytest.raises(ConfigError, match=message):
        load_config({"data": {"name": "synthetic"}}, overrides)
