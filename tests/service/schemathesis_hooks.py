"""schemathesis hooks: generators for what the OpenAPI schema can only name.

JSON Schema cannot say "a decodable PNG with a digit on it". The schema names it instead:
``format: image-base64`` for JSON and ``encoding.file.contentType: image/*`` for uploads, and
documents the 422 ``invalid_image`` answer. These hooks generate exactly such images, so that
"schema-valid" means "accepted" for image content too; negative data (wrong types, missing or
extra fields, ...) is still generated from the schema and must be rejected.

Loaded by ``schemathesis.toml`` (so ``schemathesis run …`` from the repo root uses them) and by
``tests/service/test_schemathesis.py``.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

from mnistops.errors import InvalidImageError
from mnistops.service.preprocess import from_pixels

_PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/bmp": "BMP", "image/webp": "WEBP"}


@st.composite
def digit_images(draw: st.DrawFn) -> np.ndarray:
    """A small grey or RGB image, uniform background, one block of ink at least 80 levels off it."""
    h, w = draw(st.integers(8, 40)), draw(st.integers(8, 40))
    bg = draw(st.integers(0, 255))
    ink = draw(st.integers(0, 255).filter(lambda v: abs(v - bg) >= 80))
    img = np.full((h, w), bg, np.uint8)
    top, left = draw(st.integers(1, h // 2)), draw(st.integers(1, w // 2))
    img[top : top + max(2, h // 3), left : left + max(2, w // 4)] = ink
    return np.stack([img] * 3, -1) if draw(st.booleans()) else img


def image_files(pil_format: str) -> st.SearchStrategy[bytes]:
    """Encoded image files of one format (what a multipart ``file`` part carries)."""

    def encode(img: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=pil_format, **({"quality": 95} if pil_format == "JPEG" else {}))
        return buf.getvalue()

    return digit_images().map(encode)


def image_base64() -> st.SearchStrategy[str]:
    """``image_base64`` values: base64 of any accepted format, sometimes as a data URL."""
    files = st.sampled_from(sorted(_PIL_FORMATS.items())).flatmap(
        lambda item: image_files(item[1]).map(lambda data: (item[0], data))
    )

    def render(parts: tuple[tuple[str, bytes], bool]) -> str:
        (mime, data), as_url = parts
        text = base64.b64encode(data).decode()
        return f"data:{mime};base64,{text}" if as_url else text

    return st.tuples(files, st.booleans()).map(render)


def _has_ink(pixels: Any) -> bool | None:
    """Whether a schema-valid grid survives ``preprocess`` (None: not a valid grid, leave it)."""
    try:
        from_pixels(pixels, preprocess=True)
    except InvalidImageError:
        return False
    except Exception:  # not a valid grid: negative data, keep it as generated
        return None
    return True


def _inked(item: Any) -> Any:
    """A pixel body asking for ``preprocess`` gets a stroke if it is blank (a blank canvas is a 422)."""
    if isinstance(item, dict) and item.get("preprocess") is True and _has_ink(item.get("pixels")) is False:
        grid = [list(row) for row in item["pixels"]]
        level = 255 if grid[0][0] < 128 else 0
        for r in range(10, 18):
            grid[r][12:16] = [level] * 4
        return {**item, "pixels": grid}
    return item


schemathesis.openapi.format("image-base64", image_base64())
for _mime, _fmt in _PIL_FORMATS.items():
    schemathesis.openapi.media_type(_mime, image_files(_fmt))


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    """Give blank ``preprocess`` grids ink, in single and batch bodies, in every phase.

    (``map_body`` would miss the coverage phase, which builds its cases without strategies.)
    """
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("items"), list):
        fixed = {**body, "items": [_inked(it) for it in body["items"]]}
    else:
        fixed = _inked(body)
    if fixed != body:  # assigning marks the case as edited: schemathesis then re-validates it
        case.body = fixed
