"""Training-loop helpers that keep per-step overhead low: the one-cycle schedule as a table,
the parameters packed into one buffer for a whole-buffer Nesterov SGD and weight EMA, and a
pause of Python's cyclic garbage collector.

At batch 64 a step is ~8 ms, and a large share of it is fixed per-call cost, not arithmetic
(py-spy: ``OneCycleLR.step`` alone was 3.6% of the epoch). Each helper here replaces a
general-purpose torch utility with the same numbers at a fraction of the per-step cost.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
from collections.abc import Iterator
from typing import Generic, TypeVar, cast

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)
BASE_MOMENTUM, MAX_MOMENTUM = 0.85, 0.95  # torch OneCycleLR's defaults for cycled momentum


def one_cycle(
    total_steps: int, max_lr: float, pct_start: float, div_factor: float, final_div_factor: float
) -> list[tuple[float, float]]:
    """(learning rate, momentum) for each step, the values ``torch.optim.lr_scheduler.OneCycleLR``
    (cosine annealing, two phases, cycled momentum) would set.

    Warm-up anneals lr from ``max_lr / div_factor`` to ``max_lr`` and momentum from 0.95 to 0.85
    over the first ``pct_start`` of the steps; the rest anneals lr down to
    ``max_lr / div_factor / final_div_factor`` and momentum back to 0.95.
    """
    if total_steps < 2 or not 0 < pct_start < 1:
        raise ValueError(f"one_cycle needs total_steps >= 2, 0 < pct_start < 1 ({total_steps}, {pct_start})")
    initial = max_lr / div_factor
    final = initial / final_div_factor
    ends = (pct_start * total_steps - 1, total_steps - 1)
    phases = ((initial, max_lr, MAX_MOMENTUM, BASE_MOMENTUM), (max_lr, final, BASE_MOMENTUM, MAX_MOMENTUM))

    def cos(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    out = []
    for step in range(total_steps):
        phase = 0 if step <= ends[0] else 1
        begin = 0.0 if phase == 0 else ends[0]
        pct = (step - begin) / (ends[phase] - begin)
        lr0, lr1, m0, m1 = phases[phase]
        out.append((cos(lr0, lr1, pct), cos(m0, m1, pct)))
    return out


class Packed:
    """A model's float parameters and buffers re-homed into one contiguous fp32 tensor.

    Every parameter and float buffer becomes a view of :attr:`data` with its own shape and
    strides (channels-last weights stay channels-last), and every parameter's ``.grad`` a view of
    :attr:`grad`, which autograd then accumulates into in place. The optimizer and the EMA each
    become a handful of whole-buffer ops per step instead of a loop over ~40 small tensors.

    Attributes:
        data: float32 [P + B]: the P parameter values, then the B float-buffer values.
        params: view ``data[:P]``.
        grad: float32 [P], the parameters' gradients (None when built with ``grads=False``).
    """

    def __init__(self, model: nn.Module, grads: bool = True) -> None:
        params = list(model.parameters())
        bufs = [
            (mod, name, b)
            for mod in model.modules()
            for name, b in mod._buffers.items()
            if b is not None and b.is_floating_point()
        ]
        n_params = sum(p.numel() for p in params)
        tensors = [*params, *(b for _, _, b in bufs)]
        if any(t.dtype != torch.float32 or not _dense(t) for t in tensors):
            raise ValueError("Packed needs float32 tensors with dense (non-overlapping) strides")
        self.data = torch.empty(n_params + sum(b.numel() for _, _, b in bufs))
        self.params = self.data[:n_params]
        self.grad = torch.zeros(n_params) if grads else None
        offset = 0
        for p in params:
            p.data = self._home(p.detach(), self.data, offset)
            if self.grad is not None:
                p.grad = self.grad.as_strided(p.size(), p.stride(), offset)
            offset += p.numel()
        for mod, name, b in bufs:
            mod._buffers[name] = self._home(b, self.data, offset)
            offset += b.numel()

    @staticmethod
    def _home(t: torch.Tensor, flat: torch.Tensor, offset: int) -> torch.Tensor:
        view = flat.as_strided(t.size(), t.stride(), offset)
        view.copy_(t)
        return view


def _dense(t: torch.Tensor) -> bool:
    # strides that are a permutation of a contiguous layout: the tensor covers exactly numel slots
    dims = sorted((s, n) for s, n in zip(t.stride(), t.size(), strict=True) if n > 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


class NesterovSGD:
    """``torch.optim.SGD(momentum, nesterov=True, weight_decay)`` on a :class:`Packed` model.

    Same update, element by element (L2 added to the gradient, the first step's buffer is the
    gradient itself, Nesterov look-ahead), as four ops on the packed buffer. torch's SGD, even
    with ``foreach=True``, spent 0.35 ms of an ~8 ms step looping over the parameter tensors.
    With ``low`` (:class:`Bf16Weights`) the packed fp32 values are the masters: :meth:`step`
    takes the copies' gradients first and refreshes the copies after the update.
    """

    def __init__(self, packed: Packed, weight_decay: float, low: Bf16Weights | None = None) -> None:
        if packed.grad is None:
            raise ValueError("NesterovSGD needs a Packed model built with grads=True")
        self.params, self.grad = packed.params, packed.grad
        self.weight_decay = weight_decay
        self.low = low
        self.buf: torch.Tensor | None = None

    def zero_grad(self) -> None:
        """Zero the packed gradient (the per-parameter views keep pointing into it)."""
        self.grad.zero_()
        if self.low is not None:
            self.low.zero_grad()

    @torch.no_grad()
    def step(self, lr: float, momentum: float) -> None:
        """One update with this step's learning rate and momentum."""
        if self.low is not None:
            self.low.to_master()
        g = torch.add(self.grad, self.params, alpha=self.weight_decay)
        if self.buf is None:
            self.buf = g.clone()
        else:
            self.buf.mul_(momentum).add_(g)
        g.add_(self.buf, alpha=momentum)
        self.params.add_(g, alpha=-lr)
        if self.low is not None:
            self.low.refresh()


class Bf16Weights:
    """bf16 working copies of a model's conv and linear parameters, over their fp32 masters.

    What ``torch.autocast(dtype=bfloat16)`` does for those layers, without its per-step cost:
    autocast casts each weight to bf16 in every forward and each weight gradient back in the
    backward (16 extra autograd nodes a step, and its dispatch on every op: ~4% of the step).
    Inside this context the layers hold bf16 leaf copies; after the backward, :meth:`to_master`
    copies their gradients into the masters' gradients, and after the update :meth:`refresh`
    casts the masters back into the copies, one foreach op each (:class:`NesterovSGD` calls
    both). The numbers are autocast's: both round the same fp32 values, and one bf16 gradient
    converts to fp32 exactly. The caller feeds bf16 inputs and takes the loss in fp32, as
    autocast would.
    """

    def __init__(self, model: nn.Module) -> None:
        self._slots = [
            (mod, name, p)
            for mod in model.modules()
            if isinstance(mod, nn.Conv2d | nn.Linear)
            for name, p in mod._parameters.items()
            if p is not None
        ]
        self._masters: list[torch.Tensor] = [p for _, _, p in self._slots]
        self._low = [nn.Parameter(p.detach().to(torch.bfloat16)) for p in self._masters]  # keeps strides

    def __enter__(self) -> Bf16Weights:
        self.refresh()  # the masters may have changed since __init__
        for (mod, name, _), low in zip(self._slots, self._low, strict=True):
            mod._parameters[name] = low
        return self

    def __exit__(self, *exc: object) -> None:
        for mod, name, master in self._slots:
            mod._parameters[name] = master

    def zero_grad(self) -> None:
        """Drop the copies' gradients (the backward then hands over fresh ones, no zeroing op)."""
        for low in self._low:
            low.grad = None

    @torch.no_grad()
    def to_master(self) -> None:
        """Write the copies' gradients into the masters' (fp32) gradients."""
        grads = [low.grad for low in self._low]
        masters = [p.grad for p in self._masters]
        if any(g is None for g in grads) or any(g is None for g in masters):
            raise RuntimeError("Bf16Weights.to_master: a layer got no gradient, or a master has no .grad")
        torch._foreach_copy_(masters, grads)  # type: ignore[arg-type]  # None ruled out above

    @torch.no_grad()
    def refresh(self) -> None:
        """Cast the (updated) masters into the bf16 copies."""
        torch._foreach_copy_(cast(list[torch.Tensor], self._low), self._masters)


class Ema(Generic[M]):
    """Exponential moving average of a :class:`Packed` model's weights and batch-norm statistics.

    Same update as ``AveragedModel(get_ema_multi_avg_fn(decay), use_buffers=True)``: the first
    update copies, later ones lerp by ``1 - decay``; here one lerp over the packed buffer.
    """

    def __init__(self, model: M, source: Packed, decay: float) -> None:
        self.module: M = copy.deepcopy(model)
        self.decay = decay
        self.updates = 0
        self._src, self._dst = source.data, Packed(self.module, grads=False).data

    @torch.no_grad()
    def update(self) -> None:
        """Fold the source model's current weights into the average."""
        if self.updates == 0:
            self._dst.copy_(self._src)
        else:
            self._dst.lerp_(self._src, 1.0 - self.decay)
        self.updates += 1


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector (collect once, disable; re-enable on exit).

    Each step allocates thousands of short-lived autograd objects; the collector rescanning them
    was ~6% of an epoch (py-spy). Nothing in the training loop makes reference cycles. The freeze
    state is left alone: a service that retrains in-process keeps its startup objects frozen.
    """
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
