"""The CNN: 7 conv layers (3x3 and 1x1), batch norm, max pooling, global avg ⊕ max pooling, linear head.

Default layout (``stem="stride"``): a stride-2 3x3 conv (28x28 → 14x14), four convs at 14x14
(3x3, 1x1, 3x3, 3x3), max-pool, two 3x3 convs at 7x7, then global average ⊕ max pooling. The seed
kept two convs at 28x28 before its first max-pool; on a 2-core CPU the full-resolution batch norm,
ReLU and pooling dominated the step time, while one-epoch accuracy is the same within seed noise
(measured, README). ``stem="pool"`` is a stride-1 conv then max-pool; ``stem="seed"`` is the seed's
layout. ``pool="avg"`` is the seed's global average pooling.

Hyper-parameters live in the frozen :class:`ModelConfig`, saved next to the weights so
:func:`load_model` rebuilds exactly the architecture that was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnistops.errors import ModelError, ModelNotFoundError


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`MnistNet`."""

    c1: int = 16  # conv1 3x3 stem (widths in multiples of 16 keep oneDNN/ATen on vectorised paths)
    c2: int = 16  # conv2 3x3, 14x14 (28x28 then max-pool with stem="seed")
    c3: int = 16  # conv3 1x1 transition (cheap channel squeeze), 14x14
    c4: int = 16  # conv4 3x3, 14x14
    c5: int = 16  # conv5 3x3, 14x14, then max-pool → 7x7
    c6: int = 32  # conv6 3x3, 7x7
    c7: int = 32  # conv7 3x3, 7x7 → global pooling → the embedding
    dropout: float = 0.0  # before the linear head
    num_classes: int = 10  # outputs
    stem: str = "stride"  # 28→14 by "stride" (stride-2 conv1), "pool" (max-pool) or "seed" (after conv2)
    pool: str = "avg+max"  # global pooling before the head: "avg" (the seed) or "avg+max" (2*c7 features)


class AvgMaxPool(nn.Module):
    """Global average ⊕ global max pooling: [N,C,H,W] → [N,2C].

    The max half says whether a stroke feature occurs anywhere, which the average dilutes: worth
    about 0.08 point of one-epoch accuracy over six seeds for 320 more head parameters (README).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the pooling ops, not mean()/amax(): amax's backward builds an equality mask and was
        # 2x slower in bf16; ONNX gets GlobalAveragePool/GlobalMaxPool
        return torch.cat([F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)], 1).flatten(1)


def _pool(cfg: ModelConfig) -> list[nn.Module]:
    if cfg.pool == "avg":
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if cfg.pool == "avg+max":
        return [AvgMaxPool()]
    raise ModelError(f"unknown pool {cfg.pool!r} (expected 'avg' or 'avg+max')")


def _block(cin: int, cout: int, k: int, pool: bool = False, stride: int = 1) -> nn.Sequential:
    # bias is redundant before BatchNorm. A pooling block pools straight after the conv, so batch
    # norm and ReLU (and their backward passes) run on 4x fewer values: at 28x28 they were the
    # costliest ops of a training step (torch.profiler).
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)
    if pool:
        return nn.Sequential(conv, nn.MaxPool2d(2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _body(cfg: ModelConfig) -> list[nn.Module]:
    if cfg.stem not in ("stride", "pool", "seed"):
        raise ModelError(f"unknown stem {cfg.stem!r} (expected 'stride', 'pool' or 'seed')")
    if cfg.stem != "seed":
        stride = cfg.stem == "stride"
        return [
            _block(1, cfg.c1, 3, pool=not stride, stride=2 if stride else 1),  # 28 → 14
            _block(cfg.c1, cfg.c2, 3),
            _block(cfg.c2, cfg.c3, 1),
            _block(cfg.c3, cfg.c4, 3),
            _block(cfg.c4, cfg.c5, 3, pool=True),  # 14 → 7
            _block(cfg.c5, cfg.c6, 3),
            _block(cfg.c6, cfg.c7, 3),
        ]
    # the seed's layout (and models saved before `stem` existed)
    return [
        _block(1, cfg.c1, 3),
        _block(cfg.c1, cfg.c2, 3),
        nn.MaxPool2d(2),  # 28 → 14
        _block(cfg.c2, cfg.c3, 1),
        _block(cfg.c3, cfg.c4, 3),
        _block(cfg.c4, cfg.c5, 3),
        nn.MaxPool2d(2),  # 14 → 7
        _block(cfg.c5, cfg.c6, 3),
        _block(cfg.c6, cfg.c7, 3),
    ]


class MnistNet(nn.Module):
    """Tiny CNN. Input: normalized float32 [N,1,28,28]; output: logits [N,10]."""

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        self.body = nn.Sequential(*_body(cfg), *_pool(cfg))
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(self.embedding_dim, cfg.num_classes))

    @property
    def embedding_dim(self) -> int:
        """Size D of the penultimate embedding (c7, or 2*c7 with avg+max pooling)."""
        return self.cfg.c7 * (2 if self.cfg.pool == "avg+max" else 1)

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


def whiten_stem_(model: MnistNet, images: torch.Tensor, eps: float = 1e-2) -> None:
    """Initialise the stem's filters as ± PCA-whitening filters of the images' 3x3 patches.

    The stem sees 3x3 patches (9 values). Filter pair i is ±v_i / sqrt(λ_i + eps) for the
    eigenpairs (λ_i, v_i) of the patch covariance, largest variance first, so from step 0 the
    stem passes on every direction of pixel variation at unit scale (the ± pair survives the
    ReLU either way). A 16-channel stem gets the 8 leading pairs; channels beyond 18 keep their
    random init. Borrowed from airbench's frozen whitening layer; here the filters stay trainable.
    Over six seeds it lifted one-epoch accuracy by about 0.1 point (README).

    Args:
        model: a fresh model (its first conv is overwritten in place).
        images: normalised float [N,1,28,28]; a few thousand images are plenty.
        eps: added to the eigenvalues so near-constant directions are not amplified into noise.
    """
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))  # the stem
    k, stride, pad = conv.kernel_size[0], conv.stride[0], int(conv.padding[0])
    patches = F.unfold(images, k, padding=pad, stride=stride).transpose(1, 2).reshape(-1, k * k)  # [N*L, 9]
    patches = patches - patches.mean(0)
    eigval, eigvec = torch.linalg.eigh(patches.T @ patches / len(patches))  # ascending
    filt = (eigvec / torch.sqrt(eigval + eps)).T.flip(0)  # [9,9], rows by descending variance
    pairs = torch.stack([filt, -filt], 1).reshape(-1, k * k)  # [18,9]: f1, -f1, f2, -f2, ...
    m = min(conv.out_channels, len(pairs))
    with torch.no_grad():
        conv.weight.view(conv.out_channels, -1)[:m] = pairs[:m].to(conv.weight.dtype)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_model(model: MnistNet, path: Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``{"config", "state_dict", **extra}`` to ``path`` (model.pt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save({"config": asdict(model.cfg), "state_dict": state, **(extra or {})}, path)


def model_config(d: dict[str, Any]) -> ModelConfig:
    """Rebuild a saved :class:`ModelConfig`.

    Configs saved before a field existed get the layout they were trained with: no ``stem`` is
    the seed layout, no ``pool`` is global average pooling.
    """
    return ModelConfig(**{"stem": "seed", "pool": "avg", **d})


def load_model(path: Path) -> MnistNet:
    """Rebuild a model from ``model.pt`` (or a folder containing it), in eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise ModelNotFoundError(f"no model at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = MnistNet(model_config(ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"cannot load {path}: {exc}") from exc
    return model.eval()
