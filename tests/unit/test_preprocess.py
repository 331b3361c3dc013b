"""Client input → MNIST-style [28,28] uint8: decoding, safety checks and the MNIST normalisation."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnistops.errors import InputError, InvalidImageError, PayloadTooLargeError
from mnistops.service.preprocess import (
    FIT,
    MAX_PIXELS,
    decode_image,
    from_base64,
    from_pixels,
    to_mnist,
)

LIMIT = 5_000_000


def draw_digit(
    w: int = 120, h: int = 100, box: tuple[int, int, int, int] = (10, 8, 50, 70), ink: int = 0, bg: int = 255
) -> Image.Image:
    """A '7'-like stroke plus a bar inside ``box`` (x0, y0, x1, y1), placed off-centre on purpose."""
    im = Image.new("L", (w, h), bg)
    d = ImageDraw.Draw(im)
    x0, y0, x1, y1 = box
    width = max(2, (x1 - x0) // 8)
    d.line([(x0, y0), (x1, y0), (x0 + (x1 - x0) // 3, y1)], fill=ink, width=width)
    d.line([(x0 + (x1 - x0) // 4, (y0 + y1) // 2), (x1 - 2, (y0 + y1) // 2)], fill=ink, width=width)
    return im


def encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def center_of_mass(img: np.ndarray) -> tuple[float, float]:
    m = img.astype(np.float64)
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    return float((m * ys).sum() / m.sum()), float((m * xs).sum() / m.sum())


def ink_box(img: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(img)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def assert_mnist_like(out: np.ndarray) -> None:
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    cy, cx = center_of_mass(out)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1, (cy, cx)
    h, w = ink_box(out)
    assert max(h, w) <= FIT and max(h, w) >= FIT - 1, (h, w)
    assert np.median(out) == 0  # black background (a top-heavy '7' may touch the bottom row, as in MNIST)
    assert out.max() == 255


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP"])
def test_decode_formats_give_centred_mnist_digit(fmt: str) -> None:
    out = decode_image(encode(draw_digit().convert("RGB"), fmt), LIMIT)
    assert_mnist_like(out)


def test_formats_agree_with_each_other() -> None:
    png = decode_image(encode(draw_digit(), "PNG"), LIMIT).astype(int)
    bmp = decode_image(encode(draw_digit(), "BMP"), LIMIT).astype(int)
    jpg = decode_image(encode(draw_digit(), "JPEG"), LIMIT).astype(int)
    assert np.array_equal(png, bmp)  # both lossless
    assert np.abs(png - jpg).mean() < 12  # JPEG artefacts only


def test_colour_digit_on_coloured_background() -> None:
    rgb = Image.new("RGB", (90, 90), (250, 240, 120))  # yellow paper
    ImageDraw.Draw(rgb).ellipse((50, 10, 80, 60), outline=(200, 0, 0), width=5)  # red '0', top right
    out = decode_image(encode(rgb, "PNG"), LIMIT)
    assert_mnist_like(out)
    assert out[14, 14] == 0  # the hole of the zero stays empty


def test_alpha_black_strokes_on_transparent_equal_opaque() -> None:
    opaque = draw_digit()
    rgba = Image.new("RGBA", opaque.size, (0, 0, 0, 0))
    rgba.putalpha(Image.eval(opaque, lambda v: 255 - v))  # black ink where the digit is
    assert np.array_equal(
        decode_image(encode(rgba, "PNG"), LIMIT), decode_image(encode(opaque, "PNG"), LIMIT)
    )


def test_alpha_white_strokes_on_transparent_fall_back_to_black_background() -> None:
    mask = Image.eval(draw_digit(), lambda v: 255 - v)
    rgba = Image.new("RGBA", mask.size, (255, 255, 255, 0))
    rgba.putalpha(mask)  # white ink, transparent elsewhere: on white it would be blank
    assert_mnist_like(decode_image(encode(rgba, "PNG"), LIMIT))


def test_palette_and_16bit_grey() -> None:
    ref = decode_image(encode(draw_digit(), "PNG"), LIMIT)
    pal = decode_image(encode(draw_digit().convert("P"), "PNG"), LIMIT)
    i16 = Image.fromarray((np.asarray(draw_digit(), dtype=np.uint16) * 257).astype(np.uint16))
    assert np.array_equal(pal, ref)
    assert np.array_equal(decode_image(encode(i16, "PNG"), LIMIT), ref)


def test_light_background_is_inverted() -> None:
    dark_on_light = decode_image(encode(draw_digit(ink=0, bg=255), "PNG"), LIMIT)
    light_on_dark = decode_image(encode(draw_digit(ink=255, bg=0), "PNG"), LIMIT)
    grey_paper = decode_image(encode(draw_digit(ink=40, bg=180), "PNG"), LIMIT)
    assert np.array_equal(dark_on_light, light_on_dark)
    assert np.abs(grey_paper.astype(int) - dark_on_light).max() <= 2
    assert dark_on_light[0, 0] == 0  # background black, ink bright


@pytest.mark.parametrize("box", [(2, 2, 30, 40), (70, 50, 115, 95), (40, 2, 60, 30)])
def test_off_centre_digit_is_centred(box: tuple[int, int, int, int]) -> None:
    assert_mnist_like(decode_image(encode(draw_digit(box=box), "PNG"), LIMIT))


def test_aspect_ratio_is_kept() -> None:
    tall = np.zeros((100, 100), np.uint8)
    tall[10:70, 40:52] = 255  # 60 x 12 bar → 20 x 4
    wide = np.zeros((100, 100), np.uint8)
    wide[30:45, 5:95] = 255  # 15 x 90 → 3-4 x 20
    assert ink_box(to_mnist(tall)) == (20, 4)
    h, w = ink_box(to_mnist(wide))
    assert w == 20 and h in (3, 4)


def test_small_digit_is_scaled_up_to_the_20px_box() -> None:
    small = np.zeros((28, 28), np.uint8)
    small[2:12, 3:9] = 255  # 10 x 6 in the corner
    out = to_mnist(small)
    assert ink_box(out) == (20, 12)
    assert_mnist_like(out)


def test_to_mnist_is_nearly_idempotent() -> None:
    once = to_mnist(np.asarray(draw_digit()))
    twice = to_mnist(once)
    assert np.abs(once.astype(int) - twice).mean() < 3


def test_isolated_speck_is_ignored() -> None:
    clean = np.asarray(draw_digit(), dtype=np.uint8).copy()
    specked = clean.copy()
    specked[95, 115] = 0  # one dark pixel far from the digit
    assert np.array_equal(to_mnist(clean), to_mnist(specked))


def test_large_jpeg_photo_is_handled() -> None:
    im = draw_digit(w=2000, h=1500, box=(300, 200, 900, 1200)).convert("RGB")
    assert_mnist_like(decode_image(encode(im, "JPEG"), LIMIT))


def test_truncated_png_is_rejected() -> None:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    data = encode(noisy, "PNG")
    with pytest.raises(InvalidImageError, match=r"truncated|corrupt"):
        decode_image(data[: len(data) // 2], LIMIT)


def test_truncated_jpeg_is_rejected() -> None:
    data = encode(draw_digit().convert("RGB"), "JPEG")
    with pytest.raises(InvalidImageError):
        decode_image(data[: len(data) // 2], LIMIT)


@pytest.mark.parametrize("data", [np.random.default_rng(1).bytes(500), b"hello", b"\x89PNG\r\n\x1a\n"])
def test_non_images_are_rejected(data: bytes) -> None:
    with pytest.raises(InvalidImageError):
        decode_image(data, LIMIT)


@pytest.mark.parametrize("fmt", ["GIF", "TIFF"])
def test_unsupported_formats_are_named(fmt: str) -> None:
    with pytest.raises(InvalidImageError, match=f"unsupported image format {fmt}"):
        decode_image(encode(draw_digit(), fmt), LIMIT)


def _png_header_only(w: int, h: int) -> bytes:
    """A valid PNG signature + IHDR claiming w x h, with a tiny IDAT (pixels never present)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [30000, 5000])  # above Pillow's own limit / only above ours
def test_decompression_bomb_rejected_before_decoding(side: int) -> None:
    before = Image.MAX_IMAGE_PIXELS
    assert side * side > MAX_PIXELS
    # if the pixels were decoded we would get "truncated", not "too large"
    with pytest.raises(InvalidImageError, match="too large"):
        decode_image(_png_header_only(side, side), LIMIT)
    assert before == Image.MAX_IMAGE_PIXELS  # global Pillow state untouched


def test_tiny_image_is_rejected() -> None:
    with pytest.raises(InvalidImageError, match="too small"):
        decode_image(encode(Image.new("L", (4, 4), 0), "PNG"), LIMIT)


def test_payload_limits() -> None:
    data = encode(draw_digit(), "PNG")
    with pytest.raises(PayloadTooLargeError) as err:
        decode_image(data, len(data) - 1)
    assert err.value.http_status == 413
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image(b"", LIMIT)


@pytest.mark.parametrize("colour", [0, 255, 128])
def test_blank_image_has_no_ink(colour: int) -> None:
    with pytest.raises(InvalidImageError, match="no ink found"):
        decode_image(encode(Image.new("L", (50, 50), colour), "PNG"), LIMIT)
    faint = np.full((28, 28), 100.0) + np.random.default_rng(0).normal(0, 2, (28, 28))
    with pytest.raises(InvalidImageError, match="no ink found"):
        to_mnist(faint)


# --- pixels ----------------------------------------------------------------------------------
def _grid(value: object = 0) -> list[list[object]]:
    return [[value] * 28 for _ in range(28)]


def test_pixels_used_as_is() -> None:
    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (28, 28)).tolist()
    out = from_pixels(px)
    assert out.dtype == np.uint8 and np.array_equal(out, np.asarray(px))
    floats = [[12.4] * 28 for _ in range(28)]
    floats[3][4] = 254.6
    out = from_pixels(floats)
    assert out[0, 0] == 12 and out[3, 4] == 255


def test_pixels_preprocess_flag_centres_the_drawing() -> None:
    px = np.zeros((28, 28), int)
    px[1:11, 1:4] = 255  # a '1' in the top-left corner of the canvas
    assert from_pixels(px.tolist())[1, 1] == 255
    assert_mnist_like(from_pixels(px.tolist(), preprocess=True))


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (_grid()[:27], "got 27 rows"),
        ([*_grid()[:27], [0] * 29], "row 27 has 29 values"),
        ([0] * 784, "got 784 rows"),
        ([0] * 28, "row 0 must be a list"),
        ("0" * 784, "must be a list of 28 rows"),
        (np.zeros((28, 27)), r"got shape \[28, 27\]"),
    ],
)
def test_pixels_wrong_shape(pixels: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        from_pixels(pixels)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1, 256, 255.6, True, "12", None, 10**400])
def test_pixels_bad_values(bad: object) -> None:
    px = _grid()
    px[5][7] = bad
    with pytest.raises(InputError) as err:
        from_pixels(px)  # type: ignore[arg-type]
    assert type(err.value) is InputError  # a client input error (422), not an image error


def test_pixels_bool_array_rejected() -> None:
    with pytest.raises(InputError, match="numbers"):
        from_pixels(np.zeros((28, 28), dtype=bool))


# --- base64 ----------------------------------------------------------------------------------
def test_base64_png_and_data_url() -> None:
    data = encode(draw_digit(), "PNG")
    ref = decode_image(data, LIMIT)
    b64 = base64.b64encode(data).decode()
    assert np.array_equal(from_base64(b64, LIMIT), ref)
    assert np.array_equal(from_base64("data:image/png;base64," + b64, LIMIT), ref)
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)).rstrip("=")
    assert np.array_equal(from_base64(wrapped, LIMIT), ref)  # MIME line breaks, no padding


@pytest.mark.parametrize("text", ["!!!not base64!!!", "abc", "data:image/png,abcd"])
def test_invalid_base64(text: str) -> None:
    with pytest.raises(InvalidImageError):
        from_base64(text, LIMIT)


def test_base64_of_non_image_and_oversize() -> None:
    with pytest.raises(InvalidImageError):
        from_base64(base64.b64encode(b"just some text").decode(), LIMIT)
    data = encode(draw_digit(), "PNG")
    with pytest.raises(PayloadTooLargeError):
        from_base64(base64.b64encode(data).decode(), len(data) - 1)
    assert from_base64(base64.b64encode(data).decode(), len(data)).shape == (28, 28)
