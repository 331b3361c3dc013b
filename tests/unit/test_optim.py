"""The training-loop helpers reproduce the torch utilities they replace."""

from __future__ import annotations

import gc

import pytest
import torch

from mnistops.model import MnistNet
from mnistops.optim import Ema, no_gc, one_cycle


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


def test_ema_matches_torch_averaged_model() -> None:
    m = MnistNet()
    ours = Ema(m, 0.9)
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
