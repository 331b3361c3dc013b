"""idx parsing, checksums and fetching from a folder (synthetic files, no network)."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from mnistops.errors import ChecksumError, DataNotFoundError, IdxFormatError
from mnistops.training import data


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_parse_idx_roundtrip() -> None:
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    assert np.array_equal(data.parse_idx(idx_bytes(arr)), arr)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    assert data.parse_idx(idx_bytes(labels)).tolist() == [3, 1, 4]


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"", "bad magic"),
        (b"\x01\x00\x08\x03" + b"\x00" * 12, "bad magic"),
        (b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00" * 4, "unsupported idx dtype"),
        (b"\x00\x00\x08\x02" + struct.pack(">II", 2, 2) + b"\x00" * 4, "dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated header"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"\x00\x01", "body has 2"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 1) + b"\x00\x01", "body has 2"),
    ],
)
def test_parse_idx_rejects_corrupt(raw: bytes, match: str) -> None:
    with pytest.raises(IdxFormatError, match=match):
        data.parse_idx(raw, "x")


def test_fetch_from_folder_raw_and_gz(tmp_path: Path, cached_data_dir: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(data.FILES):
        if i % 2:  # half gzipped, half raw: both spellings are accepted
            with gzip.open(src / f"{name}.gz", "wb") as f:
                f.write((cached_data_dir / name).read_bytes())
        else:
            shutil.copy(cached_data_dir / name, src / name)
    out = data.fetch(tmp_path / "cache", source=src)
    for name, md5 in data.FILES.items():
        assert data.md5_file(out / name) == md5
    assert not list(out.glob("*.part"))


def test_checksum_failure_names_file_and_expected_sum(tmp_path: Path, cached_data_dir: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in data.FILES:
        shutil.copy(cached_data_dir / name, src / name)
    bad = src / "t10k-labels-idx1-ubyte"
    raw = bytearray(bad.read_bytes())
    raw[100] ^= 0xFF
    bad.write_bytes(bytes(raw))
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError) as exc:
        data.fetch(cache, source=src)
    assert "t10k-labels-idx1-ubyte" in exc.value.message
    assert data.FILES["t10k-labels-idx1-ubyte"] in exc.value.message
    # nothing half-written is left to be used
    assert not (cache / "t10k-labels-idx1-ubyte").exists()
    assert not list(cache.glob("*.part")) and not list(cache.glob(".*part"))


def test_partial_file_in_cache_is_rejected(tmp_path: Path, cached_data_dir: Path) -> None:
    for name in data.FILES:
        shutil.copy(cached_data_dir / name, tmp_path / name)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(ChecksumError, match="t10k-images"):
        data.load_mnist(tmp_path)


def test_missing_source_file(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="train-images"):
        data.fetch(tmp_path / "cache", source=tmp_path)


def test_normalize_shapes() -> None:
    import torch

    x = torch.zeros(3, 28, 28, dtype=torch.uint8)
    out = data.normalize(x)
    assert out.shape == (3, 1, 28, 28) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, -data.MEAN / data.STD))
