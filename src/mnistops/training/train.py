"""One-epoch training: whole dataset in memory, batches by slicing a shuffled index, one-cycle LR.

Writes a self-contained model folder (``model.pt``, ``model.onnx``, ``metrics.json``,
``config.json`` and PNGs) and tracks the run in MLflow.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from mnistops.training import hw
from mnistops.training.augment import AugmentConfig, augment_batch, save_samples
from mnistops.training.data import MEAN, STD, Mnist, Split, normalize, split_train_val
from mnistops.training.evaluate import evaluate_model
from mnistops.training.model import (
    MnistNet,
    ModelConfig,
    count_params,
    model_config,
    save_model,
    whiten_stem_,
)
from mnistops.training.optim import Bf16Weights, Ema, NesterovSGD, Packed, no_gc, one_cycle

WHITEN_IMAGES = 5000  # images whose patches set the stem's whitening filters (~1M patches)


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (saved with every model in config.json)."""

    seed: int = 0  # torch RNG seed: same seed → identical weights
    batch_size: int = 64  # images per step (860 steps: one epoch needs many small steps)
    max_lr: float = 0.15  # one-cycle peak learning rate (Nesterov SGD; momentum cycles 0.95-0.85-0.95)
    pct_start: float = 0.2  # share of the epoch spent warming up
    div_factor: float = 25.0  # initial lr = max_lr / div_factor
    final_div_factor: float = 1e4  # final lr = initial lr / final_div_factor
    weight_decay: float = 5e-4  # L2 on all parameters
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto = bf16 only if the CPU has it natively
    channels_last: bool = True  # NHWC memory format (faster oneDNN convolutions on CPU)
    threads: int = 0  # torch intra-op threads; 0 = library default (all cores)
    log_every: int = 10  # steps between logged loss values
    whiten_stem: bool = True  # start the stem as ± PCA-whitening filters of 3x3 patches (+~0.1 pt)
    ema_decay: float = 0.99  # EMA of the weights becomes the final model (+~0.06 pt); 0 = off
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(noise_p=0.02)
    )  # + noise on 2% of images: σ=0.3 accuracy ~98% (more noise costs clean accuracy)
    model: ModelConfig = field(default_factory=ModelConfig)  # architecture

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of ``asdict`` (rebuilds the nested configs)."""
        d = dict(d)
        d.pop("momentum", None)  # older configs: one-cycle always set momentum (0.85-0.95), never this
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        d["model"] = model_config(d["model"]) if "model" in d else ModelConfig()
        return cls(**d)

    def use_bf16(self) -> bool:
        """Whether autocast to bf16 is used for this run on this CPU."""
        return self.precision == "bf16" or (self.precision == "auto" and hw.native_bf16())


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    model: MnistNet
    out_dir: Path
    metrics: dict[str, Any]
    losses: list[tuple[int, float]]


def fit(
    split: Split, cfg: TrainConfig, init: MnistNet | None = None, progress: bool = True
) -> tuple[MnistNet, list[tuple[int, float]], float]:
    """Train for exactly one epoch over ``split.train_x``.

    Args:
        split: training data (uint8 images, int64 labels); only train_x/train_y are used.
        cfg: hyper-parameters.
        init: start from these weights (fine-tuning) instead of a fresh model.
        progress: show a progress bar with loss and throughput.

    Returns:
        (model in eval mode, [(step, loss)], wall seconds of the epoch).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    x01 = split.train_x.unsqueeze(1).float().div_(255.0)  # [N,1,28,28] in [0,1]
    model = MnistNet(cfg.model) if init is None else init
    if init is None and cfg.whiten_stem:
        whiten_stem_(model, normalize(split.train_x[:WHITEN_IMAGES]))
    model.train()
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)  # type: ignore[call-overload]
    y = split.train_y
    n, bs = len(x01), cfg.batch_size
    steps = -(-n // bs)
    packed = Packed(model)  # after the channels-last move: the packed views keep those strides
    low = Bf16Weights(model) if cfg.use_bf16() else None  # conv/linear run on bf16 copies of the weights
    opt = NesterovSGD(packed, cfg.weight_decay, low)
    schedule = one_cycle(steps, cfg.max_lr, cfg.pct_start, cfg.div_factor, cfg.final_div_factor)
    xdtype = torch.bfloat16 if low is not None else torch.float32
    ema = Ema(model, packed, cfg.ema_decay) if cfg.ema_decay > 0 else None
    perm = torch.randperm(n, generator=g)
    losses: list[tuple[int, float]] = []
    with _progress(progress, steps) as advance, no_gc(), low or contextlib.nullcontext():
        t0 = time.perf_counter()  # epoch time starts once the collector is paused and the bar is up
        for step in range(steps):
            idx = perm[step * bs : (step + 1) * bs]
            xb = augment_batch(x01[idx], cfg.augment, g).sub_(MEAN).div_(STD)
            xb = xb.to(dtype=xdtype, memory_format=fmt)
            loss = F.cross_entropy(model(xb).float(), y[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step(*schedule[step])
            if ema is not None:
                ema.update()
            if step % cfg.log_every == 0 or step == steps - 1:
                lv = float(loss.detach())
                losses.append((step, lv))
                advance(step + 1, lv, (step + 1) * bs / (time.perf_counter() - t0))
    seconds = time.perf_counter() - t0
    if ema is not None:
        model = ema.module  # the averaged weights (BN statistics averaged too)
    model = model.to(memory_format=torch.contiguous_format)
    return model.eval(), losses, seconds


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Any]:
    if not enabled:
        yield lambda *_: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    cols = (
        TextColumn("train"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[ips]:,.0f} img/s"),
        TimeElapsedColumn(),
    )
    with Progress(*cols, transient=False) as bar:
        task = bar.add_task("train", total=total, loss=float("nan"), ips=0.0)

        def advance(done: int, loss: float, ips: float) -> None:
            bar.update(task, completed=done, loss=loss, ips=ips)

        yield advance


def export_onnx(model: MnistNet, path: Path) -> Path:
    """Export to ONNX: input ``image`` float32 [N,1,28,28] (normalised), output ``logits`` [N,10].

    Uses the TorchScript exporter: for this static CNN it yields the same graph as the
    torch.export-based one in ~0.3 s instead of ~10 s.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
            dynamo=False,
        )
    return path


def write_model_dir(
    model: MnistNet, cfg: TrainConfig, mnist: Mnist, out_dir: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    """Save weights, ONNX, evaluation artefacts, ``config.json`` and ``metrics.json`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, out_dir / "model.pt", extra={"train_config": asdict(cfg)})
    export_onnx(model, out_dir / "model.onnx")
    save_samples(mnist.train_images, out_dir / "augmentation_samples.png", cfg.augment, seed=cfg.seed)
    ev = evaluate_model(model, mnist, out_dir)
    metrics = {
        "test_accuracy": ev["test_accuracy"],
        "noisy_test_accuracy": ev["noisy_test_accuracy"],
        "rotated_test_accuracy": ev["rotated_test_accuracy"],
        "macro_f1": ev["macro_f1"],
        "params": count_params(model),
        "seed": cfg.seed,
        "data_md5": mnist.md5,
        **extra,
    }
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def default_out_dir(models_path: Path) -> Path:
    """A new timestamped folder under the models dir."""
    return models_path / time.strftime("%Y%m%d-%H%M%S")


def run_training(
    cfg: TrainConfig,
    settings: Any,
    out_dir: Path | None = None,
    mnist: Mnist | None = None,
    split: Split | None = None,
    init: MnistNet | None = None,
    track: bool = True,
    progress: bool = True,
    tags: dict[str, str] | None = None,
) -> TrainResult:
    """Train one epoch, write the model folder and track everything in MLflow.

    Args:
        cfg: hyper-parameters.
        settings: :class:`mnistops.settings.Settings` (paths and tracking URI).
        out_dir: model folder; default a timestamped folder under the models dir.
        mnist: preloaded data (loaded from the data dir otherwise).
        split: training split override (e.g. MNIST + labelled production data for retraining).
        init: fine-tune from these weights.
        track: log params, per-step loss, metrics and artefacts to MLflow.
        progress: show the progress bar.
        tags: extra MLflow run tags (e.g. the retrain job id).
    """
    from mnistops.training.data import load_mnist

    mnist = mnist or load_mnist(settings.data_path)
    split = split or split_train_val(mnist)
    out_dir = out_dir or default_out_dir(settings.models_path)
    model, losses, seconds = fit(split, cfg, init=init, progress=progress)
    extra: dict[str, Any] = {
        "train_seconds": round(seconds, 3),
        "train_images": len(split.train_x),
        "bf16": cfg.use_bf16(),
        "cpu": hw.describe(),
        "torch_threads": torch.get_num_threads(),
        "final_loss": losses[-1][1],
    }
    if track:
        extra["run_id"] = _track(cfg, settings, out_dir, losses, extra, mnist, model, tags or {})
    else:
        write_model_dir(model, cfg, mnist, out_dir, extra)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return TrainResult(model=model, out_dir=out_dir, metrics=metrics, losses=losses)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def _track(
    cfg: TrainConfig,
    settings: Any,
    out_dir: Path,
    losses: list[tuple[int, float]],
    extra: dict[str, Any],
    mnist: Mnist,
    model: MnistNet,
    tags: dict[str, str],
) -> str:
    import mlflow
    from mlflow.entities import Metric

    from mnistops.registry.tracking import client, setup_tracking

    exp_id = setup_tracking(settings)
    cl = client(settings)
    run = cl.create_run(exp_id, tags={"mnistops.kind": "train", **tags})
    run_id = run.info.run_id
    try:
        extra = {**extra, "run_id": run_id}
        metrics = write_model_dir(model, cfg, mnist, out_dir, extra)
        now = int(time.time() * 1000)
        params = _flatten(asdict(cfg))
        params["data_md5"] = mnist.md5
        cl.log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in params.items()])
        # per-step loss in one call per 1000 points: per-call logging to SQLite costs ~5 ms each
        points = [Metric("train_loss", v, now, s) for s, v in losses]
        finals = [
            Metric(k, float(v), now, 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        allm = points + finals
        for i in range(0, len(allm), 1000):
            cl.log_batch(run_id, metrics=allm[i : i + 1000])
        for name in sorted(p.name for p in out_dir.iterdir() if p.is_file()):
            cl.log_artifact(
                run_id, str(out_dir / name), artifact_path="model" if name.startswith("model") else None
            )
        cl.set_terminated(run_id, "FINISHED")
    except BaseException:
        cl.set_terminated(run_id, "FAILED")
        raise
    return run_id
