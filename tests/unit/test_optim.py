"""The training-loop helpers reproduce the torch utilities they replace."""

from __future__ import annotations

import gc

import pytest
import torch

from mnistops.training.model import MnistNet
from mnistops.training.optim import Bf16Weights, Ema, NesterovSGD, Packed, no_gc, one_cycle


@pytest.mark.parametrize(("total", "pct"), [(860, 0.2), (123, 0.3), (10, 0.5)])
def test_one_cycle_matches_torch(total: int, pct: float) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9, nesterov=True)
    ref = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.15, total_steps=total, pct_start=pct, div_factor=25.0, final_div_factor=1e4
    )
    ours = one_cycle(total, 0.15, pct, 25.0, 1e4)
    assert len(ours) == total
    for step, (lr, momentum) in enumerate(ours):
        group = opt.param_groups[0]
        assert lr == pytest.approx(group["lr"], rel=1e-12, abs=1e-15), step
        assert momentum == pytest.approx(group["momentum"], rel=1e-12), step
        opt.step()
        if step < total - 1:
            ref.step()


def test_one_cycle_rejects_a_bad_shape() -> None:
    with pytest.raises(ValueError, match="pct_start"):
        one_cycle(100, 0.1, 1.5, 25.0, 1e4)


def _channels_last_net(seed: int) -> MnistNet:
    torch.manual_seed(seed)
    return MnistNet().train().to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def test_packed_views_keep_values_and_layout_and_share_one_buffer() -> None:
    m = _channels_last_net(0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    strides = {k: v.stride() for k, v in m.state_dict().items()}
    packed = Packed(m)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]) and v.stride() == strides[k], k
    assert packed.params.numel() == sum(p.numel() for p in m.parameters())
    with torch.no_grad():
        packed.data.zero_()
    assert all(float(v.abs().sum()) == 0 for v in m.state_dict().values() if v.is_floating_point())


def test_packed_rejects_overlapping_strides() -> None:
    m = torch.nn.Linear(3, 1)
    m.weight = torch.nn.Parameter(torch.zeros(1).expand(4, 3))
    with pytest.raises(ValueError, match="dense"):
        Packed(m)


def test_nesterov_sgd_matches_torch_sgd() -> None:
    ours, ref = _channels_last_net(0), _channels_last_net(0)
    opt = NesterovSGD(Packed(ours), weight_decay=5e-4)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    for lr, momentum in [(0.1, 0.9), (0.05, 0.85), (0.02, 0.95)]:
        x = torch.randn(16, 1, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (16,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ours(x), y).backward()  # accumulates into the packed grad
        opt.step(lr, momentum)
        ref_opt.param_groups[0].update(lr=lr, momentum=momentum)
        ref_opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        ref_opt.step()
    want = ref.state_dict()
    for k, v in ours.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, want[k], atol=1e-6), k


def test_bf16_weights_train_exactly_like_autocast() -> None:
    ours, ref = _channels_last_net(0), _channels_last_net(0)
    packed, low = Packed(ours), Bf16Weights(ours)
    opt = NesterovSGD(packed, weight_decay=5e-4, low=low)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    g = torch.Generator().manual_seed(2)
    with low:
        assert ours.head[1].weight.dtype == torch.bfloat16
        for _ in range(3):
            x = torch.randn(16, 1, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (16,), generator=g)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ours(x.to(torch.bfloat16)).float(), y).backward()
            opt.step(0.1, 0.9)
            ref_opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(ref(x), y)
            loss.backward()
            ref_opt.step()
    assert ours.head[1].weight.dtype == torch.float32  # the fp32 masters are back
    want = ref.state_dict()
    for k, v in ours.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_ema_matches_torch_averaged_model() -> None:
    m = _channels_last_net(0)
    ours = Ema(m, Packed(m), 0.9)
    ref = torch.optim.swa_utils.AveragedModel(
        m, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9), use_buffers=True
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        with torch.no_grad():
            for t in [*m.parameters(), *(b for b in m.buffers() if b.is_floating_point())]:
                t.add_(torch.randn(t.shape, generator=g))
        ours.update()
        ref.update_parameters(m)
    want = ref.module.state_dict()
    for k, v in ours.module.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, want[k], atol=1e-6), k


def test_no_gc_pauses_and_restores_the_collector() -> None:
    assert gc.isenabled()
    with no_gc():
        assert not gc.isenabled()
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_no_gc_leaves_a_service_s_frozen_objects_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    # what the service froze at startup must stay frozen: no_gc never unfreezes (checked by the
    # call, not the count, which other threads of the test process may change meanwhile)
    calls: list[str] = []
    monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    with no_gc():
        assert not gc.isenabled()
    assert gc.isenabled() and calls == []
