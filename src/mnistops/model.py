"""The CNN: 7 conv layers (3x3 and 1x1), batch norm, max pooling, global average pooling, linear head.

Hyper-parameters live in the frozen :class:`ModelConfig`, saved next to the weights so
:func:`load_model` rebuilds exactly the architecture that was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistops.errors import ModelError, ModelNotFoundError


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`MnistNet`."""

    c1: int = 12  # conv1 3x3, 28x28
    c2: int = 16  # conv2 3x3, 28x28, then max-pool → 14x14
    c3: int = 16  # conv3 1x1 transition (cheap channel squeeze)
    c4: int = 16  # conv4 3x3, 14x14
    c5: int = 16  # conv5 3x3, 14x14, then max-pool → 7x7
    c6: int = 32  # conv6 3x3, 7x7
    c7: int = 32  # conv7 3x3, 7x7 → global average pool → the embedding
    dropout: float = 0.0  # before the linear head
    num_classes: int = 10  # outputs


def _block(cin: int, cout: int, k: int) -> nn.Sequential:
    # bias is redundant before BatchNorm
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class MnistNet(nn.Module):
    """Tiny CNN. Input: normalized float32 [N,1,28,28]; output: logits [N,10]."""

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        self.body = nn.Sequential(
            _block(1, cfg.c1, 3),
            _block(cfg.c1, cfg.c2, 3),
            nn.MaxPool2d(2),  # 28 → 14
            _block(cfg.c2, cfg.c3, 1),
            _block(cfg.c3, cfg.c4, 3),
            _block(cfg.c4, cfg.c5, 3),
            nn.MaxPool2d(2),  # 14 → 7
            _block(cfg.c5, cfg.c6, 3),
            _block(cfg.c6, cfg.c7, 3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.c7, cfg.num_classes))

    @property
    def embedding_dim(self) -> int:
        """Size D of the penultimate embedding."""
        return self.cfg.c7

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embeddings [N,D] of normalized images [N,1,28,28]."""
        out: torch.Tensor = self.body(x)
        return out

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits [N,10] from embeddings [N,D]."""
        out: torch.Tensor = self.head(feats)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N,10] of normalized images [N,1,28,28]."""
        return self.classify(self.features(x))


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_model(model: MnistNet, path: Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``{"config", "state_dict", **extra}`` to ``path`` (model.pt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"config": asdict(model.cfg), "state_dict": state, **(extra or {})}, path)


def load_model(path: Path) -> MnistNet:
    """Rebuild a model from ``model.pt`` (or a folder containing it), in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise ModelNotFoundError(f"no model at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = MnistNet(ModelConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"cannot load {path}: {exc}") from exc
    return model.eval()
