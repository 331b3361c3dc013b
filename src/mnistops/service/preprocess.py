"""Client input → uint8 [28,28] MNIST-style image (bright ink on a black background).

Three inputs reach the model: raw 28x28 pixel lists (the draw-a-digit page), image files
(multipart upload) and base64 image files (JSON). Files go through :func:`to_mnist`, which
repeats the original MNIST normalisation: ink bounding box → fit into 20x20 keeping the aspect
ratio (anti-aliased) → paste into 28x28 with the centre of mass at the centre.

Decisions (documented for the API docs):

* Formats: PNG, JPEG, BMP and WEBP (browsers' ``canvas.toBlob`` can emit WEBP). GIF, TIFF and
  everything else are refused; Pillow is only allowed to try these four decoders.
* Size: each side at least :data:`MIN_SIDE` px (smaller cannot hold a recognisable digit), each
  side at most :data:`MAX_SIDE` and at most :data:`MAX_PIXELS` pixels, checked from the header
  *before* any pixel is decoded (decompression bombs). JPEGs are first asked to decode at a
  reduced scale (libjpeg DCT scaling), so large phone photos stay cheap.
* Transparency is composited on white (black strokes on a transparent canvas); if that leaves
  no ink (light strokes on a transparent canvas) it is composited on black instead.
* Global Pillow state (``Image.MAX_IMAGE_PIXELS``, warning filters) is never modified: both are
  process-wide and changing them per request would race between threads.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from mnistops.errors import InputError, InvalidImageError, PayloadTooLargeError

SIZE = 28  # output side
FIT = 20  # the digit's bounding box is scaled to fit FIT x FIT (MNIST)
CENTER = 14.0  # target centre of mass (row, col); measured on MNIST test: 13.99 / 14.01
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
MIN_SIDE = 8
MAX_SIDE = 10_000
MAX_PIXELS = 4096 * 4096
WORK_SIDE = 512  # larger inputs are box-downscaled to this before the per-pixel work
MIN_CONTRAST = 24.0  # ink must differ from the background by this much (0-255 scale)
DENOISE = 0.2  # ink below this fraction of the strongest ink is background noise
SPECK = 0.01  # connected blobs holding less than this share of the ink mass are dropped

_SIGNATURES = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def decode_image(data: bytes, max_bytes: int) -> np.ndarray:
    """Decode an uploaded PNG/JPEG/BMP/WEBP file and preprocess it the MNIST way.

    Args:
        data: The raw file bytes.
        max_bytes: Largest accepted payload.

    Returns:
        uint8 array [28,28], ink bright on black.

    Raises:
        PayloadTooLargeError: ``data`` is longer than ``max_bytes``.
        InvalidImageError: Empty, not an image, unsupported format, truncated, too small, too
            large (decompression bomb) or without any ink.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidImageError(f"image must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise InvalidImageError("empty image payload")
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"image is {len(data)} bytes; the limit is {max_bytes}")
    im = _open_checked(bytes(data))
    white, black = _to_gray(im)
    try:
        return to_mnist(white)
    except InvalidImageError:
        if black is None:
            raise
        return to_mnist(black)


def _open_checked(data: bytes) -> Image.Image:
    """Open with only the allowed decoders, check the header size, then force a full decode."""
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"image too large (decompression bomb): {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        fmt = next((f for sig, f in _SIGNATURES.items() if data.startswith(sig)), None)
        if fmt:
            raise InvalidImageError(f"unsupported image format {fmt}; use PNG, JPEG, BMP or WEBP") from exc
        raise InvalidImageError("not a decodable PNG, JPEG, BMP or WEBP image") from exc
    if im.format not in ALLOWED_FORMATS:  # defensive: `formats=` already restricts the decoders
        raise InvalidImageError(f"unsupported image format {im.format}")
    if im.format == "JPEG":
        im.draft(None, (WORK_SIDE, WORK_SIDE))  # DCT-domain downscale; size stays >= WORK_SIDE
    w, h = im.size
    # our limit is below Pillow's own bomb-warning threshold, so anything that would warn is refused
    limit = min(MAX_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_PIXELS)
    if w > MAX_SIDE or h > MAX_SIDE or w * h > limit:
        raise InvalidImageError(f"image too large: {w}x{h} (limit {MAX_SIDE} per side, {limit} pixels)")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise InvalidImageError(f"image too small: {w}x{h} (each side must be at least {MIN_SIDE} px)")
    try:
        im.load()  # force the full decode: truncated or corrupt data fails here, not later
        return ImageOps.exif_transpose(im)
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"image too large (decompression bomb): {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise InvalidImageError(f"truncated or corrupt image: {exc}") from exc


def _to_gray(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Grey float32 [H,W] on the 0-255 scale, alpha on white; and on black when there is alpha."""
    try:
        if im.mode.startswith("I"):  # 16-bit greyscale PNG ("I;16", "I"): 0-65535
            return _shrink(np.asarray(im, dtype=np.float32) / 257.0), None
        if im.mode == "F":
            return _shrink(np.asarray(im, dtype=np.float32)), None
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
            lum = np.asarray(rgba.convert("L"), dtype=np.float32)
            if alpha.min() < 1.0:
                on_black = lum * alpha
                return _shrink(on_black + 255.0 * (1.0 - alpha)), _shrink(on_black)
            return _shrink(lum), None
        return _shrink(np.asarray(im.convert("L"), dtype=np.float32)), None
    except (ValueError, OSError) as exc:  # e.g. a pixel mode Pillow cannot convert
        raise InvalidImageError(f"unsupported pixel mode {im.mode}: {exc}") from exc


def _shrink(g: np.ndarray) -> np.ndarray:
    """Box-downscale so the longest side is at most WORK_SIDE (keeps later steps cheap)."""
    h, w = g.shape
    if max(h, w) <= WORK_SIDE:
        return g
    s = WORK_SIDE / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(g).resize(size, Image.Resampling.BOX), dtype=np.float32)


def to_mnist(gray: np.ndarray) -> np.ndarray:
    """Normalise a greyscale digit image the way MNIST was built.

    Steps: auto-invert when the background (median of the border ring) is closer to the light
    end, subtract the background, drop faint pixels and tiny specks, crop to the ink bounding
    box, scale it into 20x20 keeping the aspect ratio (box filter down, bilinear up), stretch the
    contrast so strokes saturate like MNIST, and paste into 28x28 with the centre of mass at
    (14, 14) (integer shift, clamped so no ink is cut off).

    Args:
        gray: [H,W] uint8 or float image on the 0-255 scale (any polarity).

    Returns:
        uint8 [28,28], ink bright on black.

    Raises:
        InputError: Not a finite 2-D array.
        InvalidImageError: No ink found (blank or near-uniform image).
    """
    g = np.asarray(gray)
    if g.ndim != 2 or g.size == 0 or g.dtype == np.bool_ or not np.issubdtype(g.dtype, np.number):
        raise InputError(f"expected a non-empty 2-D numeric image, got shape {g.shape} dtype {g.dtype}")
    g = g.astype(np.float32)
    if not np.isfinite(g).all():
        raise InputError("image contains NaN or infinite values")
    h, w = g.shape
    b = max(1, min(h, w) // 20)  # border ring width
    border = np.concatenate([g[:b].ravel(), g[-b:].ravel(), g[:, :b].ravel(), g[:, -b:].ravel()])
    bg = float(np.median(border))
    lo, hi = float(g.min()), float(g.max())
    ink = bg - g if bg - lo > hi - bg else g - bg  # light background → dark ink → invert
    np.clip(ink, 0.0, None, out=ink)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise InvalidImageError("no ink found")
    ink /= peak  # [0,1]
    ink[ink < DENOISE] = 0.0
    ink = _drop_specks(ink)
    rows, cols = np.nonzero(ink)
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]  # [h', w']
    fitted = _fit(crop)
    return _center(fitted)


def _drop_specks(ink: np.ndarray) -> np.ndarray:
    """Zero 8-connected blobs holding less than SPECK of the total ink mass."""
    labels, n = ndimage.label(ink > 0, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return ink
    mass = ndimage.sum_labels(ink, labels, index=np.arange(1, n + 1))
    keep = np.concatenate([[False], mass >= SPECK * mass.sum()])
    return np.where(keep[labels], ink, 0.0).astype(np.float32)


def _fit(crop: np.ndarray) -> np.ndarray:
    """Scale the cropped ink [h,w] so its longer side is FIT px; stretch strokes to saturation."""
    h, w = crop.shape
    s = FIT / max(h, w)
    size = (min(FIT, max(1, round(w * s))), min(FIT, max(1, round(h * s))))
    method = Image.Resampling.BOX if s < 1 else Image.Resampling.BILINEAR
    out = np.asarray(Image.fromarray(crop.astype(np.float32)).resize(size, method), dtype=np.float32)
    out = np.clip(out, 0.0, 1.0)
    strong = out[out > 0.05]
    if strong.size == 0:
        raise InvalidImageError("no ink found")
    # thin strokes get dim after a big downscale; MNIST strokes are saturated (max ~255)
    ref = float(np.percentile(strong, 90))
    return np.clip(out / max(ref, 1e-6), 0.0, 1.0)


def _center(fitted: np.ndarray) -> np.ndarray:
    """Paste [h,w] (h,w <= FIT) into 28x28 with its centre of mass at (CENTER, CENTER)."""
    h, w = fitted.shape
    total = float(fitted.sum())
    cy = float((fitted.sum(axis=1) * np.arange(h)).sum()) / total
    cx = float((fitted.sum(axis=0) * np.arange(w)).sum()) / total
    top = min(max(round(CENTER - cy), 0), SIZE - h)
    left = min(max(round(CENTER - cx), 0), SIZE - w)
    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    canvas[top : top + h, left : left + w] = fitted
    return np.round(canvas * 255.0).astype(np.uint8)


def from_pixels(pixels: Sequence[Sequence[float]] | np.ndarray, preprocess: bool = False) -> np.ndarray:
    """Validate a 28x28 pixel grid (ints or floats 0-255) from JSON.

    By default the grid is used as-is: the draw-a-digit page already sends a downscaled,
    MNIST-style canvas (bright ink on black). With ``preprocess=True`` it goes through
    :func:`to_mnist` (auto-invert, crop, fit, centre), for clients that send arbitrary drawings.

    Args:
        pixels: 28 rows of 28 numbers in [0,255]; floats are rounded; bools are refused.
        preprocess: Apply the MNIST normalisation.

    Returns:
        uint8 [28,28].

    Raises:
        InputError: Wrong shape, non-numbers, bools, NaN/inf or values outside [0,255].
        InvalidImageError: ``preprocess=True`` and the grid is blank.
    """
    if isinstance(pixels, np.ndarray):
        if pixels.dtype == np.bool_ or not np.issubdtype(pixels.dtype, np.number):
            raise InputError(f"pixels must be numbers, got dtype {pixels.dtype}")
        if pixels.shape != (SIZE, SIZE):
            raise InputError(f"pixels must be 28x28, got shape {list(pixels.shape)}")
        arr = pixels.astype(np.float64)
    else:
        arr = _grid_from_lists(pixels)
    if not np.isfinite(arr).all():
        raise InputError("pixels contain NaN or infinite values")
    if arr.min() < 0 or arr.max() > 255:
        raise InputError(f"pixels must be in [0, 255], got min {arr.min():g} max {arr.max():g}")
    out = np.rint(arr).astype(np.uint8)
    return to_mnist(out) if preprocess else out


def _grid_from_lists(pixels: object) -> np.ndarray:
    """Check types and shape of a list-of-lists grid before numpy can coerce anything."""
    if not isinstance(pixels, list | tuple):
        raise InputError(f"pixels must be a list of 28 rows, got {type(pixels).__name__}")
    if len(pixels) != SIZE:
        raise InputError(f"pixels must be 28x28, got {len(pixels)} rows")
    for i, row in enumerate(pixels):
        if not isinstance(row, list | tuple):
            raise InputError(f"pixels row {i} must be a list, got {type(row).__name__}")
        if len(row) != SIZE:
            raise InputError(f"pixels must be 28x28, but row {i} has {len(row)} values")
        for v in row:
            # type() rather than isinstance(): bool is a subclass of int and must be refused
            if type(v) not in (int, float) and not isinstance(v, np.integer | np.floating):
                raise InputError(f"pixels must be numbers 0-255, got {type(v).__name__} in row {i}")
    try:
        return np.asarray(pixels, dtype=np.float64)
    except OverflowError as exc:  # ints beyond float range
        raise InputError("pixels must be in [0, 255]") from exc


def from_base64(s: str, max_bytes: int) -> np.ndarray:
    """Decode a base64 image file (optionally a ``data:image/...;base64,`` URL) and preprocess it.

    Args:
        s: Base64 text (standard or URL-safe alphabet; whitespace and missing padding tolerated).
        max_bytes: Largest accepted *decoded* payload.

    Returns:
        uint8 [28,28] (see :func:`decode_image`).

    Raises:
        PayloadTooLargeError: The decoded file would exceed ``max_bytes``.
        InvalidImageError: Not valid base64, or not a valid image.
    """
    if not isinstance(s, str):
        raise InvalidImageError(f"image_base64 must be a string, got {type(s).__name__}")
    if s.startswith("data:"):
        head, sep, s = s.partition(",")
        if not sep or not head.endswith(";base64"):
            raise InvalidImageError("data URL must be of the form data:image/...;base64,<data>")
    text = "".join(s.split())
    text += "=" * (-len(text) % 4)
    # check the size before decoding (4 chars → at most 3 bytes) so huge strings cost no decode
    if len(text) // 4 * 3 - text[-2:].count("=") > max_bytes:
        raise PayloadTooLargeError(f"image is larger than the limit of {max_bytes} bytes")
    try:
        raw = base64.b64decode(text, altchars=b"-_" if ("-" in text or "_" in text) else None, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError("image_base64 is not valid base64") from exc
    return decode_image(raw, max_bytes)
