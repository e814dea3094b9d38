"""imageio: sniffing, header probing, bomb/animation/truncation refusal, orientation, encode, metadata.

Every input is generated in code (cv2/numpy, or hand-crafted bytes from the builders this shares
with the bad-input corpus in tests/badinput.py), never read from disk.
"""

import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from badinput import (
    ADOBE_RGB,
    DISPLAY_P3,
    IMG,
    NOISE,
    SRGB_CURVE,
    animated_webp,
    apng,
    app1_exif,
    asymmetric,
    bomb_gif_frame,
    bomb_heic,
    bomb_png,
    cv_encode,
    exif,
    gif_frame,
    icc_profile,
    make_cmyk_jpeg,
    make_gif,
    make_gray12_jpeg,
    make_heif,
    make_png,
    make_tiff,
    png_after_ihdr,
    png_chunk,
    segment,
    vp8l_chunk,
    webp_container,
    with_segment,
)

from anonymizer import imageio
from anonymizer.errors import ImageTooLargeError, InvalidImageError, UnsupportedImageError
from anonymizer.imageio import decode, encode, metadata_markers, output_format_for, probe

# ---------------------------------------------------------------------------------------------
# helpers (the byte builders and IMG/NOISE come from tests/badinput.py)


def upright(img: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for EXIF orientation 1..8, written independently with numpy."""
    return {
        1: img,
        2: img[:, ::-1],
        3: img[::-1, ::-1],
        4: img[::-1],
        5: img.swapaxes(0, 1),
        6: np.rot90(img, -1),
        7: np.rot90(img[:, ::-1], -1),
        8: np.rot90(img, 1),
    }[orientation]


JPEG = cv_encode(IMG, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95])
PNG = cv_encode(IMG, ".png")


def assert_clean_bgr(d: imageio.DecodedImage, h: int, w: int) -> None:
    assert d.pixels.shape == (h, w, 3) and d.pixels.dtype == np.uint8
    assert d.pixels.flags.c_contiguous
    if d.alpha is not None:
        assert d.alpha.shape == (h, w) and d.alpha.dtype == np.uint8 and d.alpha.flags.c_contiguous


# ---------------------------------------------------------------------------------------------
# sniffing and probing


@pytest.mark.parametrize(
    ("ext", "params", "fmt"),
    [
        (".jpg", [], "jpeg"),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], "jpeg"),
        (".png", [], "png"),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "webp"),  # VP8L
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], "webp"),  # VP8
        (".bmp", [], "bmp"),
        (".tiff", [], "tiff"),
        (".gif", [], "gif"),
    ],
)
def test_probe_reads_size_from_header(ext: str, params: list[int], fmt: str) -> None:
    data = cv_encode(asymmetric(23, 37), ext, params)
    assert probe(data) == imageio.ImageInfo(fmt, 37, 23, False)
    d = decode(data)
    assert d.format == fmt
    assert_clean_bgr(d, 23, 37)


def test_probe_other_containers() -> None:
    img = asymmetric(23, 37)
    rgba = np.dstack([img, np.full((23, 37), 200, np.uint8)])
    vp8x = cv_encode(rgba, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80])
    assert vp8x[12:16] == b"VP8X"
    assert probe(vp8x) == imageio.ImageInfo("webp", 37, 23, False)
    big_endian = make_tiff(img, le=False)
    assert probe(big_endian) == imageio.ImageInfo("tiff", 37, 23, False)
    assert np.array_equal(decode(big_endian).pixels, img)


def test_sniffing_ignores_names_and_uses_bytes() -> None:
    # the same bytes are what they are, whatever a caller thinks they are
    assert probe(PNG).format == "png"
    assert probe(JPEG).format == "jpeg"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"\x89PN", "truncated header"),
        (b"hello world, not an image at all", "not an image"),
        (np.random.default_rng(1).bytes(4096), "not an image"),
        (JPEG[:20], "truncated header"),
        (PNG[:20], "truncated header"),
        (b"BM" + b"\0" * 10, "truncated header"),
    ],
)
def test_probe_rejects_non_images(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        probe(data)
    with pytest.raises(InvalidImageError, match=message):
        decode(data)


def test_recognised_but_unsupported_formats() -> None:
    with pytest.raises(UnsupportedImageError, match="BigTIFF"):
        probe(b"II+\x00\x08\x00\x00\x00" + b"\0" * 32)
    with pytest.raises(UnsupportedImageError, match="not a HEIC or AVIF image"):
        probe(b"\x00\x00\x00\x18ftypM4A " + b"\0" * 32)  # audio in the ISO media container
    with pytest.raises(InvalidImageError, match="corrupt HEIF"):
        probe(b"\x00\x00\x00\x18ftypheic" + b"\0" * 32)  # a HEIC brand, but no image in it


# ---------------------------------------------------------------------------------------------
# bombs, animations, truncation


def test_decompression_bomb_refused_from_header() -> None:
    data = bomb_png()
    assert len(data) < 2000
    start = time.perf_counter()
    assert probe(data) == imageio.ImageInfo("png", 50_000, 50_000, False)
    with pytest.raises(ImageTooLargeError, match="50000x50000"):
        decode(data)
    assert time.perf_counter() - start < 0.5


def test_max_pixels_is_configurable() -> None:
    assert imageio.DEFAULT_MAX_PIXELS >= 50_000_000
    decode(PNG, max_pixels=48 * 80)
    with pytest.raises(ImageTooLargeError):
        decode(PNG, max_pixels=48 * 80 - 1)


def test_animated_gif_refused() -> None:
    data = make_gif(4, 3, frames=2)
    assert probe(data) == imageio.ImageInfo("gif", 4, 3, True)
    with pytest.raises(UnsupportedImageError, match="animated"):
        decode(data)
    assert "animation" in metadata_markers(data)


def test_single_frame_gif_decodes() -> None:
    data = make_gif(4, 3, frames=1)
    assert probe(data).animated is False
    d = decode(data)
    assert d.format == "gif" and d.quality is None
    assert_clean_bgr(d, 3, 4)
    assert (d.pixels == [0, 0, 255]).all()  # palette entry 0 is red, BGR here


def test_gif_frame_smaller_than_screen_and_transparency() -> None:
    lsd = struct.pack("<HH", 4, 3) + b"\x80\x00\x00"
    transparent_frame = gif_frame(2, 2, 1, 1, transparent=True)
    d = decode(b"GIF89a" + lsd + b"\xff\x00\x00\x00\x00\xff" + transparent_frame + b"\x3b")
    assert_clean_bgr(d, 3, 4)
    assert d.alpha is not None and (d.alpha == 0).all()  # colour 0 is the transparent one


def test_gif_frame_larger_than_screen_counts_for_the_pixel_limit() -> None:
    # a 1x1 screen must not smuggle a 60000x60000 frame past the bomb guard
    data = bomb_gif_frame()
    assert probe(data) == imageio.ImageInfo("gif", 1, 1, False)
    with pytest.raises(ImageTooLargeError):
        decode(data)


def test_animated_webp_refused() -> None:
    data = animated_webp()
    assert probe(data) == imageio.ImageInfo("webp", 16, 16, True)
    with pytest.raises(UnsupportedImageError, match="animated"):
        decode(data)


def test_apng_refused() -> None:
    png = cv_encode(asymmetric(16, 16), ".png")
    data = apng(png)
    assert probe(data).animated is True
    with pytest.raises(UnsupportedImageError, match="animated"):
        decode(data)
    # acTL after the image data is not an APNG
    late = png[:-12] + png_chunk(b"acTL", struct.pack(">II", 2, 0)) + png[-12:]
    assert probe(late).animated is False


@pytest.mark.parametrize(
    "data",
    [
        cv_encode(NOISE, ".jpg"),
        cv_encode(NOISE, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        cv_encode(NOISE, ".png"),
        cv_encode(NOISE, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
        cv_encode(NOISE, ".bmp"),
        make_tiff(NOISE),
        cv_encode(NOISE, ".gif"),
    ],
    ids=["jpeg", "progressive", "png", "webp", "bmp", "tiff", "gif"],
)
def test_truncated_files_are_refused(data: bytes) -> None:
    decode(data)  # the complete file is fine
    for keep in (len(data) - 1, len(data) - 2, int(len(data) * 0.8), len(data) // 2):
        cut = data[:keep]
        assert probe(cut) == probe(data)  # the header is still there
        with pytest.raises(InvalidImageError, match="truncated"):
            decode(cut)


def test_jpeg_with_trailing_bytes_after_eoi_decodes() -> None:
    d = decode(JPEG + b"\0" * 10)
    assert d.pixels.shape == (48, 80, 3)
    assert metadata_markers(JPEG + b"\0" * 10) == ["trailing-data"]


# ---------------------------------------------------------------------------------------------
# orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_applied_once(orientation: int) -> None:
    tagged = with_segment(JPEG, app1_exif(exif(orientation)))
    stored = decode(JPEG).pixels  # same entropy data, no tag
    expected = upright(stored, orientation)
    info = probe(tagged)
    assert (info.height, info.width) == expected.shape[:2]
    d = decode(tagged)
    assert np.array_equal(d.pixels, expected)
    # OpenCV's own EXIF handling (IMREAD_COLOR) agrees with ours, so the definition matches
    assert np.array_equal(d.pixels, cv2.imdecode(np.frombuffer(tagged, np.uint8), cv2.IMREAD_COLOR))
    # and the result is the upright original within JPEG tolerance
    assert np.abs(d.pixels.astype(int) - upright(IMG, orientation)).mean() < 3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_applied_once(orientation: int) -> None:
    # OpenCV's TIFF reader rotates on its own even with IMREAD_UNCHANGED; we must not do it twice
    d = decode(make_tiff(IMG, orientation, le=orientation % 2 == 0))
    assert np.array_equal(d.pixels, upright(IMG, orientation))


def test_png_and_webp_exif_orientation() -> None:
    png = png_after_ihdr(PNG, png_chunk(b"eXIf", exif(6)))
    assert probe(png) == imageio.ImageInfo("png", 48, 80, False)
    assert np.array_equal(decode(png).pixels, upright(IMG, 6))

    webp = webp_container(80, 48, 0x08, vp8l_chunk(IMG), (b"EXIF", exif(8)))
    assert probe(webp) == imageio.ImageInfo("webp", 48, 80, False)
    assert np.array_equal(decode(webp).pixels, upright(IMG, 8))


def test_orientation_is_applied_to_alpha_too() -> None:
    alpha = asymmetric(48, 80, seed=3)[:, :, 0]
    png = png_after_ihdr(cv_encode(np.dstack([IMG, alpha]), ".png"), png_chunk(b"eXIf", exif(5)))
    d = decode(png)
    assert np.array_equal(d.pixels, upright(IMG, 5))
    assert np.array_equal(d.alpha, upright(alpha, 5))


@pytest.mark.parametrize(
    "blob",
    [
        b"garbage, not TIFF",
        b"II*\x00\xff\xff\xff\x7f",  # IFD0 far outside the segment
        b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03",  # entry cut in half
        exif(9),  # out of range
        exif(0),
    ],
)
def test_corrupt_exif_means_orientation_1(blob: bytes) -> None:
    tagged = with_segment(JPEG, app1_exif(blob))
    assert probe(tagged) == imageio.ImageInfo("jpeg", 80, 48, False)
    assert np.array_equal(decode(tagged).pixels, decode(JPEG).pixels)


def test_huge_exif_block() -> None:
    blob = exif(8, padding=60_000)
    tagged = with_segment(JPEG, app1_exif(blob))
    assert len(tagged) > len(JPEG) + 60_000
    assert probe(tagged) == imageio.ImageInfo("jpeg", 48, 80, False)
    assert np.array_equal(decode(tagged).pixels, upright(decode(JPEG).pixels, 8))


# ---------------------------------------------------------------------------------------------
# pixel formats


def test_cmyk_jpeg() -> None:
    # Adobe CMYK JPEGs store inverted ink values: 255 = no ink
    blocks = np.array([[[255, 255, 255, 255], [0, 255, 255, 255]], [[255, 0, 255, 255], [255, 255, 255, 0]]], np.uint8)
    data = make_cmyk_jpeg(blocks)
    assert probe(data) == imageio.ImageInfo("jpeg", 16, 16, False)
    d = decode(data)
    assert_clean_bgr(d, 16, 16)
    expected = {(4, 4): (255, 255, 255), (4, 12): (255, 255, 0), (12, 4): (255, 0, 255), (12, 12): (0, 0, 0)}
    for (y, x), bgr in expected.items():
        assert np.abs(d.pixels[y, x].astype(int) - bgr).max() <= 2, (y, x, d.pixels[y, x])


def test_12_bit_jpeg_refused() -> None:
    data = make_gray12_jpeg(np.array([[0, 1000], [2048, 4095]]))
    assert probe(data) == imageio.ImageInfo("jpeg", 16, 16, False)
    with pytest.raises(UnsupportedImageError, match="12-bit"):
        decode(data)


def test_progressive_jpeg() -> None:
    data = cv_encode(IMG, ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 95])
    assert b"\xff\xc2" in data
    assert np.abs(decode(data).pixels.astype(int) - IMG).mean() < 3


def test_grayscale_inputs_become_bgr() -> None:
    gray = IMG[:, :, 1].copy()
    for data in (cv_encode(gray, ".png"), cv_encode(gray, ".jpg"), cv_encode(gray, ".tiff")):
        d = decode(data)
        assert_clean_bgr(d, 48, 80)
        assert d.alpha is None
        assert np.array_equal(d.pixels[:, :, 0], d.pixels[:, :, 2])


def test_16_bit_png_scaled_to_8_bit() -> None:
    wide = IMG.astype(np.uint16) * 257 + 3
    d = decode(cv_encode(wide, ".png"))
    assert np.array_equal(d.pixels, IMG) and d.alpha is None
    rgba = np.dstack([wide, np.full((48, 80), 0x8000, np.uint16)])
    d = decode(cv_encode(rgba, ".png"))
    assert np.array_equal(d.pixels, IMG) and (d.alpha == 0x80).all()
    gray = decode(cv_encode(wide[:, :, 0], ".png"))
    assert np.array_equal(gray.pixels[:, :, 1], IMG[:, :, 0])


def test_rgba_png_keeps_alpha() -> None:
    alpha = np.tile(np.arange(80, dtype=np.uint8) * 3, (48, 1))
    d = decode(cv_encode(np.dstack([IMG, alpha]), ".png"))
    assert np.array_equal(d.pixels, IMG) and np.array_equal(d.alpha, alpha)


def test_gray_alpha_png() -> None:
    data = make_png(6, 4, 4, [bytes([10, 200] * 6)] * 4)
    d = decode(data)
    assert_clean_bgr(d, 4, 6)
    assert (d.pixels == 10).all() and (d.alpha == 200).all()


def test_palette_png_with_and_without_transparency() -> None:
    rows = [bytes([0, 1, 2, 1, 0, 1])] * 4
    plte = png_chunk(b"PLTE", bytes([255, 0, 0, 0, 255, 0, 0, 0, 255]))
    d = decode(make_png(6, 4, 3, rows, plte))
    assert d.alpha is None
    assert d.pixels[0, :3].tolist() == [[0, 0, 255], [0, 255, 0], [255, 0, 0]]
    d = decode(make_png(6, 4, 3, rows, plte, png_chunk(b"tRNS", bytes([0, 255, 128]))))
    assert d.alpha[0, :3].tolist() == [0, 255, 128]


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp", ".tiff", ".gif"])
def test_tiny_and_thin_images(ext: str) -> None:
    one = decode(cv_encode(np.full((1, 1, 3), 77, np.uint8), ext))
    assert_clean_bgr(one, 1, 1)
    if ext in (".jpg", ".png"):
        thin = decode(cv_encode(np.full((1, 20_000, 3), 77, np.uint8), ext))
        assert_clean_bgr(thin, 1, 20_000)


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95, 100])
def test_jpeg_quality_estimate(quality: int) -> None:
    data = cv_encode(IMG, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert decode(data).quality == quality


def test_quality_only_for_jpeg() -> None:
    assert decode(PNG).quality is None


# ---------------------------------------------------------------------------------------------
# encode and metadata


@pytest.mark.parametrize("fmt", imageio.OUTPUT_FORMATS)
@pytest.mark.parametrize("with_alpha", [False, True])
def test_encode_round_trip_without_metadata(fmt: str, with_alpha: bool) -> None:
    alpha = np.tile(np.arange(80, dtype=np.uint8) * 3, (48, 1)) if with_alpha else None
    out = encode(IMG, alpha, fmt)
    assert metadata_markers(out) == []
    assert probe(out) == imageio.ImageInfo(fmt, 80, 48, False)
    d = decode(out)
    assert d.format == fmt
    lossless = fmt in ("png", "bmp", "tiff")
    if lossless:
        assert np.array_equal(d.pixels, IMG)
    else:
        assert np.abs(d.pixels.astype(int) - IMG).mean() < 4
    if with_alpha and fmt != "jpeg":
        assert d.alpha is not None
        assert np.array_equal(d.alpha, alpha) if lossless else np.abs(d.alpha.astype(int) - alpha).mean() < 4
    else:
        assert d.alpha is None


def test_encode_jpeg_settings() -> None:
    out = encode(IMG, None, "jpeg")
    assert decode(out).quality == imageio.DEFAULT_QUALITY
    assert b"\xff\xc0" in out and b"\xff\xc2" not in out  # baseline, not progressive
    assert encode(IMG, None, "jpeg", quality=10) == encode(IMG, None, "jpg", quality=50)
    assert encode(IMG, None, "jpeg", quality=100) == encode(IMG, None, "jpeg", quality=95)
    plain = cv_encode(IMG, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert len(out) < len(plain)  # optimized Huffman tables


def test_gif_is_written_as_png() -> None:
    assert output_format_for("gif") == "png"
    assert output_format_for("jpg") == "jpeg"
    assert [output_format_for(f) for f in imageio.OUTPUT_FORMATS] == list(imageio.OUTPUT_FORMATS)
    with pytest.raises(ValueError, match="output_format_for"):
        encode(IMG, None, "gif")
    assert set(imageio.CONTENT_TYPES) == {"jpeg", "png", "webp", "bmp", "tiff", "gif", "heic", "avif"}
    # HEIC and AVIF come out as JPEG (every browser shows it), or PNG when they have alpha
    assert [output_format_for(f) for f in ("heic", "heif", "avif")] == ["jpeg", "jpeg", "jpeg"]
    assert [output_format_for(f, alpha=True) for f in ("heic", "avif", "jpeg")] == ["png", "png", "jpeg"]
    for fmt in ("heic", "avif"):
        with pytest.raises(ValueError, match="output_format_for"):
            encode(IMG, None, fmt)
    assert imageio.CONTENT_TYPES["jpeg"] == "image/jpeg"


def test_encode_rejects_bad_arrays() -> None:
    with pytest.raises(ValueError):
        encode(IMG.astype(np.float32), None, "png")
    with pytest.raises(ValueError):
        encode(IMG[:, :, 0], None, "png")
    with pytest.raises(ValueError):
        encode(IMG, np.zeros((2, 2), np.uint8), "png")


def test_metadata_found_in_jpeg_and_stripped() -> None:
    data = JPEG
    for seg in (
        app1_exif(exif(1, gps=True)),
        segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>"),
        segment(0xE2, b"ICC_PROFILE\0\x01\x01" + b"\0" * 128),
        segment(0xED, b"Photoshop 3.0\08BIM\x04\x04" + b"\0" * 16),
        segment(0xFE, b"taken at home"),
    ):
        data = with_segment(data, seg)
    assert metadata_markers(JPEG) == []
    assert sorted(metadata_markers(data)) == ["comment", "exif", "gps", "icc", "iptc", "xmp"]
    d = decode(data)
    assert metadata_markers(encode(d.pixels, d.alpha, output_format_for(d.format), quality=d.quality)) == []


def test_metadata_found_in_png_webp_tiff_gif() -> None:
    png = png_after_ihdr(
        PNG,
        png_chunk(b"eXIf", exif(1, gps=True)),
        png_chunk(b"tEXt", b"Author\0someone"),
        png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0<x/>"),
        png_chunk(b"iCCP", b"icc\0\0" + zlib.compress(b"\0" * 64)),
        png_chunk(b"tIME", b"\x07\xe8\x01\x01\x00\x00\x00"),
    )
    assert metadata_markers(png) == ["exif", "gps", "text", "xmp", "icc", "time"]

    webp = webp_container(
        80, 48, 0x2C, (b"ICCP", b"\0" * 64), vp8l_chunk(IMG), (b"EXIF", exif(gps=True)), (b"XMP ", b"<x/>")
    )
    assert metadata_markers(webp) == ["icc", "exif", "gps", "xmp"]
    decode(webp)

    # the GPS/EXIF pointers target IFD0 itself: enough for a reader that must only see the tags
    tiff = make_tiff(IMG, extra=[(34853, 4, 1, 8), (271, 2, 6, b"Phone\0"), (34665, 4, 1, 8)])
    assert sorted(metadata_markers(tiff)) == ["exif", "gps", "text:Make"]
    assert metadata_markers(make_tiff(IMG)) == []

    comment = b"\x21\xfe\x05hello\x00"
    assert metadata_markers(make_gif(4, 3, 1, comment)) == ["comment"]
    assert metadata_markers(make_gif(4, 3, 1)) == []


def test_metadata_markers_fails_closed_on_garbage() -> None:
    with pytest.raises(InvalidImageError):
        metadata_markers(b"definitely not an image")
    with pytest.raises(InvalidImageError):
        metadata_markers(b"")


# ---------------------------------------------------------------------------------------------
# HEIC and AVIF (made here: pillow-heif writes HEIC, Pillow writes AVIF), with GPS in their EXIF


@pytest.mark.parametrize("fmt", ["heic", "avif"])
@pytest.mark.parametrize("size", [(160, 96), (81, 47)])  # 81 x 47: coded bigger, cropped by a clean aperture
def test_heic_and_avif_decode_upright_and_their_gps_never_comes_out(fmt: str, size: tuple[int, int]) -> None:
    img = cv2.resize(IMG, size, interpolation=cv2.INTER_NEAREST)
    for orientation in (1, 3, 6, 8):
        data = make_heif(img, fmt, orientation)
        assert {"exif", "gps"} <= set(metadata_markers(data))  # the input really carries GPS
        want = upright(img, orientation)
        assert probe(data) == imageio.ImageInfo(fmt, want.shape[1], want.shape[0], False)
        d = decode(data)
        assert d.format == fmt and not d.grey
        assert_clean_bgr(d, *want.shape[:2])
        assert np.abs(d.pixels.astype(int) - want).mean() < 6, orientation  # lossy, but upright and in BGR order
        out = encode(d.pixels, d.alpha, output_format_for(fmt))
        assert probe(out).format == "jpeg" and metadata_markers(out) == []
        assert b"GPS" not in out and b"Exif" not in out


def test_heic_bomb_refused_from_the_header() -> None:
    data = bytearray(make_heif(NOISE, "heic"))  # 64 x 64: coded as it is, no clean aperture
    at = data.find(b"ispe")
    struct.pack_into(">II", data, at + 8, 50_000, 50_000)  # the primary image claims 2.5 gigapixels
    start = time.perf_counter()
    assert probe(bytes(data)) == imageio.ImageInfo("heic", 50_000, 50_000, False)
    with pytest.raises(ImageTooLargeError, match="50000x50000"):
        decode(bytes(data))
    assert time.perf_counter() - start < 0.5
    # a cropped image whose coded size is the bomb is refused all the same: decoders allocate that
    with pytest.raises(ImageTooLargeError, match="a frame = 2500.0 megapixels"):
        decode(bomb_heic())


def test_avif_bomb_refused_from_the_header() -> None:
    data = bytearray(make_heif(NOISE, "avif"))
    at = data.find(b"ispe")
    struct.pack_into(">II", data, at + 8, 40_000, 40_000)
    assert probe(bytes(data)) == imageio.ImageInfo("avif", 40_000, 40_000, False)
    with pytest.raises(ImageTooLargeError, match="40000x40000"):
        decode(bytes(data))


def test_heic_with_several_images_is_refused_never_cut_to_its_primary() -> None:
    import io

    import pillow_heif
    from PIL import Image

    heif = pillow_heif.from_pillow(Image.fromarray(NOISE))
    heif.add_from_pillow(Image.fromarray(IMG))
    out = io.BytesIO()
    heif.save(out, format="HEIF")
    with pytest.raises(UnsupportedImageError, match="HEIC with 2 images"):
        decode(out.getvalue())


@pytest.mark.parametrize("fmt", ["heic", "avif"])
def test_heic_and_avif_grey_and_alpha(fmt: str) -> None:
    import io

    import pillow_heif
    from PIL import Image

    for mode, pixels in (("L", NOISE[:, :, 0]), ("RGBA", np.dstack([NOISE, NOISE[:, :, 1]]))):
        out = io.BytesIO()
        picture = Image.fromarray(np.ascontiguousarray(pixels), mode)
        if fmt == "heic":
            pillow_heif.from_pillow(picture).save(out, format="HEIF", quality=95)
        else:
            picture.save(out, format="AVIF", quality=95)
        d = decode(out.getvalue())
        assert d.grey == (mode == "L") and (d.alpha is not None) == (mode == "RGBA"), (fmt, mode)
        assert output_format_for(fmt, alpha=d.alpha is not None) == ("png" if mode == "RGBA" else "jpeg")


@pytest.mark.parametrize(("box", "version", "count_at"), [(b"iloc", 2, 14), (b"ipma", 0, 12)])
def test_heif_item_counts_cannot_make_the_parser_spin(box: bytes, version: int, count_at: int) -> None:
    data = bytearray(make_heif(NOISE, "heic"))
    at = data.find(box) - 4  # the box's size field
    data[at + 8] = version
    struct.pack_into(">I", data, at + count_at, 0xFFFF_FFFF)  # four billion items in a few bytes
    start = time.perf_counter()
    with pytest.raises(InvalidImageError):
        decode(bytes(data))
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("fmt", ["heic", "avif"])
def test_truncated_heic_and_avif_are_refused(fmt: str) -> None:
    data = make_heif(NOISE, fmt)
    with pytest.raises(InvalidImageError):
        decode(data[: len(data) - 200])


# ---------------------------------------------------------------------------------------------
# colour: ICC profiles are converted to sRGB, then dropped


def with_icc_png(bgr: np.ndarray, profile: bytes) -> bytes:
    return png_after_ihdr(cv_encode(bgr, ".png"), png_chunk(b"iCCP", b"test\0\0" + zlib.compress(profile)))


def with_icc_jpeg(bgr: np.ndarray, profile: bytes) -> bytes:
    jpeg = cv_encode(bgr, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 98])
    half = len(profile) // 2  # in two APP2 chunks, as big profiles are
    first = segment(0xE2, b"ICC_PROFILE\0\x01\x02" + profile[:half])
    second = segment(0xE2, b"ICC_PROFILE\0\x02\x02" + profile[half:])
    return jpeg[:2] + first + second + jpeg[2:]


@pytest.mark.parametrize(
    ("profile", "stored_rgb", "srgb"),
    [
        (DISPLAY_P3, (234, 51, 35), (255, 0, 0)),  # sRGB's red, as Display P3 stores it
        (DISPLAY_P3, (128, 128, 128), (128, 128, 128)),  # same white point and curve: greys stay
        (ADOBE_RGB, (144, 255, 60), (0, 255, 0)),  # sRGB's green, as Adobe RGB stores it
    ],
)
@pytest.mark.parametrize("container", [with_icc_png, with_icc_jpeg])
def test_icc_profiles_are_converted_to_srgb(profile, stored_rgb, srgb, container) -> None:
    block = np.zeros((16, 16, 3), np.uint8)
    block[:] = stored_rgb[::-1]
    data = container(block, profile)
    assert "icc" in metadata_markers(data)
    d = decode(data)
    assert d.colour in ("Display P3", "Adobe RGB (1998)")
    got = d.pixels[8, 8][::-1].astype(int)
    assert np.abs(got - np.array(srgb)).max() <= 4, got
    out = encode(d.pixels, None, "png")
    assert metadata_markers(out) == []  # the profile was applied, then dropped


def test_icc_conversion_agrees_with_littlecms() -> None:
    import io

    from PIL import Image, ImageCms

    colours = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for profile in (DISPLAY_P3, ADOBE_RGB):
        ours = decode(with_icc_png(colours, profile)).pixels
        reference = ImageCms.profileToProfile(
            Image.fromarray(colours[:, :, ::-1].copy()),
            ImageCms.ImageCmsProfile(io.BytesIO(profile)),
            ImageCms.createProfile("sRGB"),
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
        )
        diff = np.abs(ours.astype(int) - np.asarray(reference)[:, :, ::-1])
        assert diff.max() <= 3 and diff.mean() < 0.8, (diff.max(), diff.mean())


def test_srgb_and_broken_profiles_leave_pixels_alone() -> None:
    srgb = icc_profile(
        "sRGB IEC61966-2.1", [(0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)], SRGB_CURVE
    )
    for profile in (srgb, b"not a profile" * 20, DISPLAY_P3[:140]):
        d = decode(with_icc_png(NOISE, profile))
        assert d.colour is None and np.array_equal(d.pixels, NOISE)


def test_heic_and_avif_profiles_are_converted_too() -> None:
    block = np.zeros((64, 64, 3), np.uint8)
    block[:] = (35, 51, 234)  # BGR of sRGB's red as Display P3 stores it
    for fmt in ("heic", "avif"):
        d = decode(make_heif(block, fmt, icc=DISPLAY_P3))
        assert d.colour == "Display P3", fmt
        assert np.abs(d.pixels[32, 32][::-1].astype(int) - (255, 0, 0)).max() <= 12, (fmt, d.pixels[32, 32])


# ---------------------------------------------------------------------------------------------
# multi-page TIFF, grey, video


def test_multi_page_tiff_is_refused_never_cut_to_its_first_page() -> None:
    import io

    from PIL import Image

    out = io.BytesIO()
    pages = [Image.fromarray(IMG), Image.fromarray(NOISE)]
    pages[0].save(out, format="TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(UnsupportedImageError, match=r"multi-page tiff \(2 pages\)"):
        decode(out.getvalue())
    assert probe(out.getvalue()).format == "tiff"  # a tiff all the same
    decode(make_tiff(IMG))  # one page: fine


def test_grey_inputs_are_marked_and_written_grey() -> None:
    gray = IMG[:, :, 1].copy()
    for ext in (".png", ".jpg", ".tiff", ".bmp"):
        d = decode(cv_encode(gray, ext))
        assert d.grey, ext
        for fmt in ("jpeg", "png", "tiff", "bmp"):
            out = cv2.imdecode(np.frombuffer(encode(d.pixels, None, fmt, grey=True), np.uint8), cv2.IMREAD_UNCHANGED)
            assert out.ndim == 2, (ext, fmt)
    assert not decode(PNG).grey
    rgba = decode(cv_encode(np.dstack([gray, gray, gray, gray]), ".png"))
    assert not rgba.grey and rgba.alpha is not None


@pytest.mark.parametrize(("fourcc", "ext", "kind"), [("mp4v", ".mp4", "mp4"), ("MJPG", ".avi", "avi")])
def test_videos_get_their_own_error(tmp_path, fourcc: str, ext: str, kind: str) -> None:
    from anonymizer.errors import UnsupportedVideoError

    path = tmp_path / f"clip{ext}"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (64, 48))
    for _ in range(3):
        writer.write(cv2.resize(IMG, (64, 48)))
    writer.release()
    data = path.read_bytes()
    assert imageio.sniff_video(data) == kind
    with pytest.raises(UnsupportedVideoError, match="video is not supported yet") as caught:
        decode(data)
    assert caught.value.code == "video_not_supported" and caught.value.http_status == 415


def test_sniff_video_names_containers_and_leaves_images_alone() -> None:
    ebml = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\xf7\x81\x01\x42\x82\x84"
    assert imageio.sniff_video(ebml + b"webm" + b"\0" * 16) == "webm"
    assert imageio.sniff_video(ebml + b"matroska" + b"\0" * 16) == "mkv"
    assert imageio.sniff_video(b"\0\0\0\x14ftypqt  \0\0\0\0qt  " + b"\0" * 16) == "mov"
    assert imageio.sniff_video(b"\0\0\0\x08wide\0\0\x10\0mdat" + b"\0" * 16) == "mov"
    for image in (JPEG, PNG, make_heif(IMG, "heic"), make_heif(IMG, "avif")):
        assert imageio.sniff_video(image) is None
