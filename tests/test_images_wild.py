"""Images as users have them: every bit depth and mode read at its true scale (checked against arrays computed
here from the pixels written), EXIF orientation applied, and bad files (bombs, strips, truncated, empty, not an
image) refused with one InputError naming the problem, before anything is decoded and in bounded time. Also
NaN relevance in the renderer, which is shown as 0 with a warning or refused, never a black picture."""
import importlib
import io
import os
import struct
import subprocess
import sys
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, features

import fvgraph.image as fimage
from fvgraph.errors import FvGraphWarning, InputError
from fvgraph.image import (DEFAULT, ImageLimits, demo_images, load_image, open_image, read_rgb, resize_crop,
                           set_image_limits)

RNG = np.random.RandomState(7)


def png(w, h, bit_depth=8, colour_type=0, raw=None):
    """A PNG written byte by byte (so headers can lie): IHDR as given, IDAT = zlib(raw), raw rows of zeros
    with filter bytes when not given."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    if raw is None:
        channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
        raw = (b"\x00" + bytes(w * channels * bit_depth // 8)) * h
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def encoded(im, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def refused(source, *fragments, limits=None, spec=None, seconds=1.0):
    """The InputError's message, checked to name each fragment, raised within `seconds`."""
    t = time.perf_counter()
    with pytest.raises(InputError) as e:
        if spec is None:
            open_image(source, limits=limits)
        else:
            load_image(source, spec, limits=limits)
    assert time.perf_counter() - t < seconds
    message = str(e.value)
    assert "\n" not in message
    for f in fragments:
        assert f in message, (f, message)
    return message


@pytest.fixture(autouse=True)
def _own_limits(monkeypatch):
    """Each test starts from the defaults, whatever the environment or another test set."""
    monkeypatch.delenv("FVGRAPH_MAX_IMAGE_PIXELS", raising=False)
    monkeypatch.delenv("FVGRAPH_MAX_IMAGE_ASPECT", raising=False)
    monkeypatch.setattr(fimage, "_SET", {})


# ------------------------------------------------------------------------------------------ bad images
def test_decompression_bombs_are_refused_from_the_header(tmp_path):
    bomb = png(30000, 30000, raw=b"\x00" * 64)  # 900 megapixels claimed, a few dozen bytes
    assert len(bomb) < 200
    refused(bomb, "over the limit of 50 megapixels", "--max-image-pixels", "FVGRAPH_MAX_IMAGE_PIXELS")
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    refused(path, str(path), "900.0 megapixels", "--max-image-pixels", spec=DEFAULT)
    # under Pillow's own warning (89 MP) but over ours: fvgraph's check, naming the size
    refused(png(9000, 9000, raw=b"\x00" * 64), "9000x9000 pixels (81.0 megapixels)", "50 megapixels")
    with warnings.catch_warnings():  # between Pillow's warning and its error: no DecompressionBombWarning leaks
        warnings.simplefilter("error")
        refused(png(10000, 10000, raw=b"\x00" * 64), "10000x10000 pixels", "over the limit")


def test_bombs_and_strips_fail_without_allocating():
    """In a child process whose address space is capped at what it holds plus 300 MB: a decoded bomb (900 MB)
    or a resized strip (gigabytes) would be a MemoryError there, not the InputError."""
    script = r"""
import resource, sys
sys.path.insert(0, sys.argv[1])
from tests.test_images_wild import png
from fvgraph.image import DEFAULT, ImageLimits, load_image
from fvgraph.errors import InputError
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + 300 * 2**20, resource.RLIM_INFINITY))
for source, limits in [(png(30000, 30000, raw=b"\0" * 64), None), (png(1, 50000), None), (png(20000, 1), None),
                       (png(1, 20000), ImageLimits(max_aspect=1e9)), (png(30000, 30000, raw=b"\0" * 64),
                        ImageLimits(max_pixels=10**10, max_aspect=1e9))]:
    try:
        load_image(source, DEFAULT, limits=limits)
        print("read")
    except InputError as e:
        print("refused", e)
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", script, root], capture_output=True, text=True, timeout=60, env=env)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 5, r.stdout + r.stderr
    assert all(line.startswith("refused") for line in lines[:4]), lines
    # the control: with its limits raised, the bomb is decoded, and the cap makes that fail for want of memory
    # (so the four refusals above came before any such allocation)
    assert lines[4].startswith("refused") and "not enough memory" in lines[4], lines[4]


def test_image_limits_must_be_positive_finite_numbers():
    from fvgraph.errors import InputError
    from fvgraph.image import image_limits, set_image_limits
    before = image_limits()
    for bad in (float("inf"), "inf", float("nan"), -1, 0, "lots"):
        with pytest.raises(InputError, match="must be a positive finite number"):
            set_image_limits(max_pixels=bad)
        with pytest.raises(InputError, match="must be a positive finite number"):
            set_image_limits(max_aspect=bad)
    assert image_limits() == before  # a refused value changes nothing


def test_strips_are_refused_by_their_aspect_and_by_the_size_their_resize_would_make():
    refused(png(1, 50000), "1x50000 pixels", "50000 times", "over the limit of 32")
    refused(png(20000, 1), "20000x1 pixels", "FVGRAPH_MAX_IMAGE_ASPECT", "--max-image-aspect N")
    loose = ImageLimits(max_aspect=1e9)
    strip = png(1, 20000)
    assert len(strip) < 200
    refused(strip, "resize=shorter", "would make a 224x4480000 picture", "--max-image-pixels", limits=loose,
            spec=DEFAULT)
    # the same strip letterboxed is small: read, and padded with the spec's value around a one-pixel column
    x = load_image(strip, {**DEFAULT, "resize": "letterbox", "pad_value": 114}, limits=loose)
    assert x.shape == (1, 3, 224, 224)
    pad = (114 / 255 - np.asarray(DEFAULT["mean"])) / np.asarray(DEFAULT["std"])
    np.testing.assert_allclose(x[0, :, 0, 0], pad, atol=1e-5)
    # an array decoded elsewhere (serve's upload) meets the same bound before the resize is done
    t = time.perf_counter()
    with pytest.raises(InputError, match="would make"):
        resize_crop(np.zeros((1, 20000, 3), np.uint8), DEFAULT)
    assert time.perf_counter() - t < 0.5


def test_truncated_empty_and_not_images(tmp_path):
    jpeg = encoded(Image.fromarray(RNG.randint(0, 256, (64, 64, 3)).astype(np.uint8)), "JPEG")
    refused(jpeg[: len(jpeg) // 2], "truncated or corrupt")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    refused(empty, str(empty), "empty file (0 bytes)")
    refused(b"", "empty (0 bytes)")
    text = tmp_path / "notes.png"
    text.write_text("these are my notes, not a picture\n")
    refused(text, str(text), "not an image fvgraph can read", "unknown format")
    refused(png(0, 5), "0x5 pixels (empty)")
    refused(b"P5\n7 0\n255\n", "7x0 pixels (empty)")
    refused(tmp_path / "missing.jpg", "no such image file")
    refused(tmp_path, "is a folder")
    refused(Image.new("RGB", (0, 3)), "0x3 pixels (empty)")
    # EPS would run Ghostscript: not a format fvgraph opens
    refused(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "not an image fvgraph can read")
    with pytest.raises(InputError, match="path, bytes or a PIL image"):
        open_image(12345)


def test_a_float_image_with_nan_is_refused():
    a = np.ones((4, 4), np.float32)
    a[1, 2] = np.nan
    refused(encoded(Image.fromarray(a), "TIFF"), "1 of its 16 pixels are NaN or infinite")


# ------------------------------------------------------------------------------------------ true scale
def test_16_bit_greyscale_png_reads_at_its_true_scale_and_agrees_with_8_bit():
    v = RNG.randint(0, 65536, (40, 50)).astype(np.uint16)
    x = open_image(encoded(Image.fromarray(v), "PNG"))
    assert x.shape == (40, 50, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, np.repeat((v / 65535.0)[..., None], 3, 2), atol=1e-7)
    # the same picture in 8 bits: within 1/255 (here 0.5/255, the rounding), as read and as the model sees it
    eight = np.round(v / 257.0).astype(np.uint8)
    x8 = open_image(encoded(Image.fromarray(eight), "PNG"))
    assert np.abs(x - x8).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(read_rgb(encoded(Image.fromarray(v), "PNG"))[..., 0], eight)
    # an 8-bit photo stored as 16-bit (each value times 257) reads exactly as the 8-bit file, and the model's
    # inputs (resized in float for one, in 8 bits for the other) agree to 1/255
    photo = np.asarray(Image.open(demo_images()[0]).convert("L"))
    deep, flat = encoded(Image.fromarray(photo.astype(np.uint16) * 257), "PNG"), encoded(Image.fromarray(photo), "PNG")
    np.testing.assert_allclose(open_image(deep), open_image(flat), atol=1e-7)
    a, b = load_image(deep, DEFAULT), load_image(flat, DEFAULT)
    assert a.shape == b.shape == (1, 3, 224, 224)
    assert np.abs((a - b) * np.asarray(DEFAULT["std"])[:, None, None]).max() <= 1 / 255


def test_16_bit_rgb_and_rgba_pngs_within_one_level():
    v = RNG.randint(0, 65536, (6, 5, 4)).astype(">u2")
    for colour_type, channels in ((2, 3), (6, 4)):
        raw = b"".join(b"\x00" + row.tobytes() for row in v[..., :channels])
        x = open_image(png(5, 6, 16, colour_type, raw))
        assert x.shape == (6, 5, 3)
        assert np.abs(x - v[..., :3] / 65535.0).max() <= 1 / 255


def test_int32_tiff_by_its_declared_range():
    a = np.linspace(-2 ** 20, 2 ** 31 - 1, 12).astype(np.int32).reshape(3, 4)
    x = open_image(encoded(Image.fromarray(a), "TIFF"))
    np.testing.assert_allclose(x[..., 1], np.clip(a, 0, None) / (2 ** 31 - 1), atol=1e-7)
    dim = (np.arange(12, dtype=np.int32) * 1000).reshape(3, 4)  # 0..11000 in a 32-bit file: nearly black, said so
    with pytest.warns(FvGraphWarning, match="declared range"):
        y = open_image(encoded(Image.fromarray(dim), "TIFF"))
    np.testing.assert_allclose(y[..., 0], dim / (2 ** 31 - 1), atol=1e-9)


def test_float_tiffs_by_their_range():
    unit = RNG.rand(5, 6).astype(np.float32)
    np.testing.assert_allclose(open_image(encoded(Image.fromarray(unit), "TIFF"))[..., 2], unit, atol=1e-7)
    bytes_like = (unit * 200).astype(np.float32)  # max <= 255: taken as 0..255
    np.testing.assert_allclose(open_image(encoded(Image.fromarray(bytes_like), "TIFF"))[..., 0], bytes_like / 255,
                               atol=1e-6)
    signed = unit - 0.5  # negatives become 0
    np.testing.assert_allclose(open_image(encoded(Image.fromarray(signed), "TIFF"))[..., 0], np.maximum(signed, 0),
                               atol=1e-7)


def test_palette_with_transparency_one_bit_la_and_cmyk():
    palette = RNG.randint(0, 256, (16, 3)).astype(np.uint8)
    index = RNG.randint(0, 16, (7, 9)).astype(np.uint8)
    p = Image.fromarray(index, "P")
    p.putpalette(palette.ravel().tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning about transparency in a palette
        got = read_rgb(encoded(p, "PNG", transparency=bytes([0, 128] + [255] * 14)))  # a tRNS alpha per entry
    np.testing.assert_array_equal(got, palette[index])  # the colour of each index; alpha dropped

    bits = RNG.rand(8, 13) > 0.5
    np.testing.assert_array_equal(open_image(encoded(Image.fromarray(bits), "PNG"))[..., 1], bits.astype(np.float32))

    grey, alpha = RNG.randint(0, 256, (2, 5, 4)).astype(np.uint8)
    la = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
    np.testing.assert_array_equal(read_rgb(encoded(la, "PNG")), np.repeat(grey[..., None], 3, 2))

    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:8] = (200, 40, 0, 30)
    cmyk[8:] = (0, 120, 255, 90)
    got = read_rgb(encoded(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=100)).astype(float)
    c, k = cmyk[..., :3].astype(float), cmyk[..., 3:].astype(float)
    expected = (255 - c) * (255 - k) / 255
    assert np.abs(got - expected).max() <= 4


def test_animation_takes_its_first_frame():
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]
    frames = [Image.new("RGB", (8, 6), c) for c in colours]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    got = read_rgb(data)
    assert got.shape == (6, 8, 3)
    assert np.abs(got.astype(int) - colours[0]).max() <= 2


def test_exif_orientation_is_applied():
    a = np.zeros((32, 64, 3), np.uint8)
    a[:, :32] = 255  # left half white
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # stored rotated: shown turned 90 degrees clockwise
    got = read_rgb(encoded(im, "JPEG", exif=exif, quality=95))
    assert got.shape == (64, 32, 3)
    expected = np.rot90(a, k=-1)  # the left half becomes the top
    assert np.abs(got.astype(int) - expected).mean() < 3 and got[:28].min() > 200 and got[36:].max() < 50
    # the resize bound sees the turned size: a 10x300 stored picture shown as 300x10 letterboxes to 224 wide
    tall = Image.fromarray(np.full((300, 10, 3), 90, np.uint8))
    exif = tall.getexif()
    exif[0x0112] = 8
    x = load_image(encoded(tall, "JPEG", exif=exif), {**DEFAULT, "resize": "letterbox", "pad_value": 0})
    shown = (x[0].transpose(1, 2, 0) * np.asarray(DEFAULT["std"]) + np.asarray(DEFAULT["mean"])) * 255
    rows = np.where(np.abs(shown[:, 112, 0] - 90) < 6)[0]
    assert 5 <= len(rows) <= 10 and np.abs(shown[:, 112, 0] - 90).min() < 6  # a band about 7 rows high


def test_webp_lossless_reads_exactly():
    assert features.check("webp")  # this build reads WebP; the case is meant to run
    a = RNG.randint(0, 256, (12, 10, 3)).astype(np.uint8)
    np.testing.assert_array_equal(read_rgb(encoded(Image.fromarray(a), "WEBP", lossless=True)), a)


def test_pil_images_and_i16_modes_in_memory():
    v = RNG.randint(0, 65536, (3, 4)).astype(np.uint16)
    np.testing.assert_allclose(open_image(Image.fromarray(v))[..., 0], v / 65535.0, atol=1e-7)
    big = Image.frombytes("I;16B", (4, 3), v.astype(">u2").tobytes())
    np.testing.assert_allclose(open_image(big)[..., 2], v / 65535.0, atol=1e-7)


# ------------------------------------------------------------------------------------------ limits
def test_a_large_legal_image_reads_and_the_limit_is_exact():
    a = np.zeros((3000, 4000), np.uint8)  # 12 megapixels: within the default limit
    a[::5] = 200
    t = time.perf_counter()
    x = open_image(encoded(Image.fromarray(a), "PNG", compress_level=1))
    assert time.perf_counter() - t < 5
    assert x.shape == (3000, 4000, 3) and x[0, 7, 0] == np.float32(200 / 255) and x[1, 7, 2] == 0
    limits = ImageLimits(max_pixels=100 * 100)
    assert open_image(png(100, 100), limits=limits).shape == (100, 100, 3)
    refused(png(101, 100), "101x100 pixels", "over the limit of 0.01 megapixels", limits=limits)
    refused(png(101, 100), "0.01 megapixels", limits=10_000)  # a number is the pixel limit


def test_the_limit_from_the_environment_and_the_setter(monkeypatch):
    monkeypatch.setenv("FVGRAPH_MAX_IMAGE_PIXELS", "5000")
    refused(png(100, 100), "over the limit of 0.005 megapixels")
    monkeypatch.setenv("FVGRAPH_MAX_IMAGE_PIXELS", "1e9")  # raised: the 100-megapixel header passes the check,
    message = refused(png(10000, 10000, raw=b"\x00" * 64), "truncated or corrupt", seconds=5)  # decoding fails
    assert "limit" not in message
    monkeypatch.setenv("FVGRAPH_MAX_IMAGE_PIXELS", "lots")
    refused(png(4, 4), "FVGRAPH_MAX_IMAGE_PIXELS='lots' is not a positive number")
    monkeypatch.setenv("FVGRAPH_MAX_IMAGE_PIXELS", "5000")
    assert set_image_limits(max_pixels=20_000).max_pixels == 20_000  # the setter (--max-image-pixels) wins
    assert open_image(png(100, 100)).shape == (100, 100, 3)
    monkeypatch.setenv("FVGRAPH_MAX_IMAGE_ASPECT", "2")
    refused(png(30, 10), "over the limit of 2")
    with pytest.raises(InputError, match="positive"):
        set_image_limits(max_pixels=0)


# ------------------------------------------------------------------------------------------ the renderer
def test_nan_relevance_is_shown_as_zero_with_a_warning_or_refused():
    from fvgraph.render import KINDS, picture
    rel = RNG.randn(3, 10, 12).astype(np.float32)
    bad = rel.copy()
    bad[0, 1, 1], bad[2, 5, 7], bad[1, 0, 3] = np.nan, np.inf, -np.inf
    zeroed = np.where(np.isfinite(bad), bad, 0)
    for kind in KINDS:
        with pytest.warns(FvGraphWarning, match="3 of 360 values NaN or infinite"):
            got = picture(bad, kind)
        np.testing.assert_array_equal(got, picture(zeroed, kind))
        assert got.max() > 0  # not a black picture
    with pytest.raises(InputError, match="all NaN or infinite"):
        picture(np.full((4, 4), np.nan, np.float32))


def test_curves_leave_out_nan_points_and_integrate_without_np_trapezoid(monkeypatch):
    import fvgraph.render as render
    with pytest.warns(FvGraphWarning, match="1 NaN or infinite point"):
        im = render.curves({"deletion": {"a": ([0, 0.5, 1], [1, np.nan, 0])}})
    assert im.shape == (300, 420, 3)
    calls = []

    def trapz(y, x, axis=-1):
        calls.append(len(y))
        return float(np.sum((np.asarray(y)[1:] + np.asarray(y)[:-1]) / 2 * np.diff(x)))
    if "trapezoid" in vars(np):
        monkeypatch.delattr(np, "trapezoid")  # as on numpy < 2.0
    monkeypatch.setattr(np, "trapz", trapz, raising=False)
    try:
        importlib.reload(render)
        assert render.trapezoid is trapz
        render.curves({"t": {"a": ([0, 0.5, 1], [0, 1, 1])}})
        assert calls == [3]
    finally:
        monkeypatch.undo()
        importlib.reload(render)
    assert render.trapezoid is (getattr(np, "trapezoid", None) or np.trapz)  # numpy 2, or 1.x (CI tests both)
