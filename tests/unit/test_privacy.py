"""Privacy guarantees, end to end: what leaves the system cannot give a face back.

1. Irreversibility under attack. The full pipeline anonymizes a real face (the astronaut in
   ``skimage.data.astronaut()``); an attacker who knows the effect and the region then attacks
   the published output (Wiener deconvolution with the known PSF, smooth upscaling and smoothing
   of the mosaic, the exact inverse of the warp). Two judges must agree that nothing came back:
   our own face detector (no face overlapping the original one, at ``DETECT_THRESHOLD``) and
   the identity measure of ``test_effects`` (high-passed NCC, bound 0.5). Controls show that
   each attack does bring a face back from a weaker version of the same effect, so its failure
   on ours is a property of the effect, not of a toothless attack.
2. No output carries EXIF, GPS, XMP or IPTC metadata, whatever the output format.
3. Fail closed: a detector that cannot load or crashes means no output, even when another
   target's detector worked.
4. Logs (library, Lambda handler with Powertools at DEBUG) never carry image content.
5. The API needs a key on every route, has a usage plan, and refuses oversized bodies (413).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import dataclasses
import functools
import json
import logging
import re
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from api_routes import API_ROUTES, KEYLESS_ROUTES
from badinput import app1_exif, segment, tiff_structure, with_segment
from test_effects import FACE_BOX, IDENTITY_BOUND, identity_similarity, unwarp

from anonymizer import imageio
from anonymizer import pipeline as pipeline_module
from anonymizer.detection import CenterNetDetector, Detection, get_detector
from anonymizer.effects import BLOCKS_MAX, EffectSpec, blur_sigma, deform_field
from anonymizer.errors import DetectionError, InvalidImageError, InvalidOptionsError
from anonymizer.options import MARGIN_MIN, parse_options
from anonymizer.pipeline import Anonymizer, Result, summarize

FACE_ONLY = {"targets": "face"}
# The detector judge: our own face model at 0.3 (as in test_pipeline); a face counts as found
# when a detection overlaps the original one by IoU > 0.3. (Measured: no attacked default output
# scores above 0.13 there, below even the model's operating threshold of 0.15.)
DETECT_THRESHOLD = 0.3
OVERLAP_IOU = 0.3
WIENER_K = (1e-1, 1e-2, 1e-3, 1e-5)  # the attacker keeps the best; 1e-5 is already noise-dominated


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Anonymizer:
    return Anonymizer()


@pytest.fixture(scope="module")
def original(astronaut_jpeg: bytes) -> np.ndarray:
    """The pixels the pipeline sees (the decoded JPEG), read-only."""
    pixels = imageio.decode(astronaut_jpeg).pixels
    pixels.setflags(write=False)
    return pixels


@pytest.fixture(scope="module")
def face_box(original: np.ndarray) -> tuple[float, float, float, float]:
    """The one face the detector finds in the original, at the attacker's threshold."""
    found = face_judge().detect(original, threshold=DETECT_THRESHOLD)
    assert len(found) == 1, found
    return found[0].box


@functools.cache
def face_judge() -> CenterNetDetector:
    """The face network without its verifier (which only ever lowers scores): the stricter judge."""
    return CenterNetDetector(dataclasses.replace(get_detector("face").card, verifier=None))


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def faces_at(image: np.ndarray, box) -> list[Detection]:
    """Faces the detector finds in ``image`` that overlap ``box`` (IoU > OVERLAP_IOU)."""
    found = face_judge().detect(np.ascontiguousarray(image), threshold=DETECT_THRESHOLD)
    return [d for d in found if iou(d.box, box) > OVERLAP_IOU]


def crop(img: np.ndarray, box) -> np.ndarray:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return img[y1:y2, x1:x2]


def similarity(original: np.ndarray, attacked: np.ndarray, face_box) -> float:
    """Identity similarity on the face as detected and on the face as labelled by hand
    (``test_effects.FACE_BOX``: hair to chin, ear to ear); the worse (higher) of the two."""
    return max(identity_similarity(crop(original, b), crop(attacked, b)) for b in (face_box, FACE_BOX))


def paste(image: np.ndarray, region, pixels: np.ndarray) -> np.ndarray:
    out = image.copy()
    x1, y1, x2, y2 = region
    out[y1:y2, x1:x2] = pixels
    return out


@dataclass(frozen=True)
class Published:
    image: np.ndarray  # the decoded output of the pipeline
    region: tuple[int, int, int, int]  # where the effect was applied (box + margin)
    face: dict  # the face options the pipeline used (report["options"]["face"])


def publish(engine: Anonymizer, jpeg: bytes, face_box, **options: str) -> Published:
    result = engine.anonymize(jpeg, parse_options({**FACE_ONLY, **options}))
    (det,) = result.report["detections"]
    assert iou(det["box"], face_box) > 0.9  # the pipeline hid the face the attacker targets
    return Published(imageio.decode(result.data).pixels, tuple(det["region"]), result.report["options"]["face"])


# --- attacks --------------------------------------------------------------------------------


def wiener_deconvolve_color(region: np.ndarray, sigma: float, k: float) -> np.ndarray:
    """Per-channel Wiener deconvolution with the known Gaussian PSF (FFT, periodic), as BGR uint8."""
    fy = np.fft.fftfreq(region.shape[0])[:, None]
    fx = np.fft.fftfreq(region.shape[1])[None, :]
    otf = np.exp(-2.0 * np.pi**2 * sigma**2 * (fx**2 + fy**2))  # FT of the Gaussian PSF
    gain = otf / (otf * otf + k)
    out = np.empty(region.shape, np.float64)
    for c in range(region.shape[2]):
        g = region[:, :, c].astype(np.float64)
        mean = g.mean()
        out[:, :, c] = np.fft.ifft2(np.fft.fft2(g - mean) * gain).real + mean
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def mosaic_grid(width: int, height: int, blocks: int) -> tuple[int, int]:
    """Blocks across and down, as the pixelate effect lays them out."""
    longer = max(width, height)
    return max(1, round(blocks * width / longer)), max(1, round(blocks * height / longer))


def block_means(region: np.ndarray, blocks: int) -> np.ndarray:
    """The exact block colours, read at the centre of each block of the known grid."""
    h, w = region.shape[:2]
    bw, bh = mosaic_grid(w, h, blocks)
    xs = ((np.arange(bw) + 0.5) * w / bw).astype(int)
    ys = ((np.arange(bh) + 0.5) * h / bh).astype(int)
    return np.ascontiguousarray(region[ys][:, xs])


def pixelate_attacks(region: np.ndarray, blocks: int) -> Iterator[tuple[str, np.ndarray]]:
    h, w = region.shape[:2]
    means = block_means(region, blocks)
    yield "bicubic upscaling of the block means", cv2.resize(means, (w, h), interpolation=cv2.INTER_CUBIC)
    yield "Lanczos upscaling of the block means", cv2.resize(means, (w, h), interpolation=cv2.INTER_LANCZOS4)
    bw, bh = mosaic_grid(w, h, blocks)
    block = max(w / bw, h / bh)
    yield "Gaussian smoothing of the mosaic, sigma half a block", cv2.GaussianBlur(region, (0, 0), block / 2)


def attacks(effect: str, published: Published, original: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """(name, attacked full image) for every attack on ``effect``; the published output first."""
    image, (x1, y1, x2, y2) = published.image, published.region
    region = np.ascontiguousarray(image[y1:y2, x1:x2])
    yield "as published", image
    if effect == "blur":
        sigma = blur_sigma(x2 - x1, y2 - y1, published.face["strength"])
        for k in WIENER_K:
            yield (
                f"Wiener deconvolution, known PSF, k={k:g}",
                paste(image, published.region, wiener_deconvolve_color(region, sigma, k)),
            )
    elif effect == "pixelate":
        for name, attacked in pixelate_attacks(region, published.face["blocks"]):
            yield name, paste(image, published.region, attacked)
    elif effect == "deform":
        # The strongest attacker: knows the exact field (computing it needs the original pixels).
        spec = EffectSpec(name="deform", shape=published.face["shape"], strength=published.face["strength"])
        field = deform_field(np.ascontiguousarray(original[y1:y2, x1:x2]), spec)
        for iterations, name in ((1, "negative displacement"), (30, "exact inverse warp")):
            yield f"{name} with the known field", paste(image, published.region, unwarp(region, field, iterations))
    else:
        raise AssertionError(effect)


@dataclass(frozen=True)
class Verdict:
    attack: str
    similarity: float
    faces: tuple[Detection, ...] | None  # None: not run (fail-fast after a similarity failure)

    @property
    def recovered(self) -> bool:
        return self.similarity >= IDENTITY_BOUND or bool(self.faces)

    def __str__(self) -> str:
        faces = (
            "not run" if self.faces is None else [(round(d.score, 3), round(d.box[0])) for d in self.faces] or "none"
        )
        return f"{self.attack}: similarity {self.similarity:.3f}, faces found {faces}"


def judge(attacked_images, original, face_box, *, fail_fast: bool = False) -> list[Verdict]:
    verdicts = []
    for name, attacked in attacked_images:
        sim = similarity(original, attacked, face_box)
        if fail_fast and sim >= IDENTITY_BOUND:
            verdicts.append(Verdict(name, sim, None))
            break
        verdicts.append(Verdict(name, sim, tuple(faces_at(attacked, face_box))))
        if fail_fast and verdicts[-1].recovered:
            break
    return verdicts


def assert_nothing_recovered(verdicts: list[Verdict]) -> None:
    report = "\n".join(str(v) for v in verdicts)
    assert not any(v.recovered for v in verdicts), f"identity came back (bound {IDENTITY_BOUND}):\n{report}"


# --- 1. irreversibility under attack --------------------------------------------------------


def test_detector_finds_a_mildly_blurred_face(original, face_box):
    # Control for the detector judge: the attacker's detector and threshold do find a face
    # that is merely softened (sigma 2 px), and the identity measure calls it the same face.
    softened = cv2.GaussianBlur(original, (0, 0), 2)
    assert faces_at(softened, face_box)
    assert similarity(original, softened, face_box) > 0.9


@pytest.mark.parametrize("effect", ["blur", "pixelate", "deform"])
def test_face_stays_hidden_under_attack(engine, astronaut_jpeg, original, face_box, effect):
    # Measured (default options, face margin 0.15; similarity = worse of detected box and
    # FACE_BOX): blur 0.22, its Wiener deconvolutions 0.05-0.12; pixelate 0.18, upscaled /
    # smoothed 0.32-0.38; deform 0.40 (a warp flatters NCC), inverse-warped 0.17-0.26. The
    # best detector score near the face is 0.12 (deform, exact inverse); elsewhere <= 0.10.
    published = publish(engine, astronaut_jpeg, face_box, effect=effect)
    verdicts = judge(attacks(effect, published, original), original, face_box)
    assert len(verdicts) >= 3
    assert_nothing_recovered(verdicts)


def _blurred_region_control(original, region):
    # sigma 8 px: the detector has just lost the face (score 0.14), features are faint (0.65)
    sigma = 8.0
    weak = cv2.GaussianBlur(original, (0, 0), sigma)
    x1, y1, x2, y2 = region
    return weak, paste(weak, region, wiener_deconvolve_color(np.ascontiguousarray(weak[y1:y2, x1:x2]), sigma, 1e-2))


def _mosaic_control(original, region):
    # 16 blocks across (twice the default): smoothing the block means brings the face back
    x1, y1, x2, y2 = region
    face = np.ascontiguousarray(original[y1:y2, x1:x2])
    h, w = face.shape[:2]
    means = cv2.resize(face, mosaic_grid(w, h, 16), interpolation=cv2.INTER_AREA)
    mosaic = cv2.resize(means, (w, h), interpolation=cv2.INTER_NEAREST)
    (_, attacked), *_ = pixelate_attacks(mosaic, 16)
    return paste(original, region, mosaic), paste(original, region, attacked)


def _warp_control(original, region):
    # the warp alone, without deform's coarse, noisy reduction: the exact inverse undoes it
    x1, y1, x2, y2 = region
    face = np.ascontiguousarray(original[y1:y2, x1:x2])
    field = deform_field(face, EffectSpec(name="deform"))
    h, w = face.shape[:2]
    map_x = np.arange(w, dtype=np.float32)[None, :] + field[:, :, 0]
    map_y = np.arange(h, dtype=np.float32)[:, None] + field[:, :, 1]
    warped = cv2.remap(face, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return paste(original, region, warped), paste(original, region, unwarp(warped, field, 30))


@pytest.mark.parametrize(
    ("attack", "control"),
    [("Wiener", _blurred_region_control), ("upscaling", _mosaic_control), ("inverse warp", _warp_control)],
)
def test_each_attack_recovers_a_face_from_a_weaker_effect(original, face_box, attack, control):
    # Controls for the attacks, on the region the pipeline uses (158, 40, 291, 201). Measured
    # (similarity, detector score): Wiener takes a sigma-8 blur from (0.65, 0.14) to (0.66, 0.54);
    # bicubic upscaling takes a 16-block mosaic from (0.71, 0.04) to (0.81, 0.82); the exact
    # inverse takes the bare warp from (0.22, 0.51) to (0.93, 0.90).
    x1, y1, x2, y2 = face_box
    dx, dy = 0.15 * (x2 - x1), 0.15 * (y2 - y1)  # the pipeline's default face margin
    region = (int(np.floor(x1 - dx)), int(np.floor(y1 - dy)), int(np.ceil(x2 + dx)), int(np.ceil(y2 + dy)))
    weak, attacked = control(original, region)
    # the weak effect alone hides the face from one judge at least ...
    assert similarity(original, weak, face_box) < IDENTITY_BOUND or not faces_at(weak, face_box), attack
    # ... and the attack brings it back before both
    after = similarity(original, attacked, face_box)
    assert after > IDENTITY_BOUND, f"{attack}: {after:.3f}"
    assert faces_at(attacked, face_box), attack


# The weakest settings a request may choose. Measured before the limits existed: blocks=16 gave 0.72
# as published and a detected face (0.82) after bicubic upscaling (12 blocks: 0.67); margin=0 gave
# 0.55-0.64 and a detected deformed face (0.49). Hence blocks <= 8 and margin >= 0.1.
WEAKEST_ALLOWED = [
    pytest.param("pixelate", {"blocks": str(BLOCKS_MAX)}, id=f"pixelate-blocks{BLOCKS_MAX}"),
    pytest.param("pixelate", {"margin": str(MARGIN_MIN)}, id="pixelate-margin-min"),
    pytest.param("blur", {"margin": str(MARGIN_MIN)}, id="blur-margin-min"),
    pytest.param("deform", {"margin": str(MARGIN_MIN)}, id="deform-margin-min"),
]


@pytest.mark.parametrize("options", [{"blocks": "16"}, {"margin": "0"}, {"margin": "0.05"}])
def test_settings_known_to_leak_identity_are_refused(options):
    with pytest.raises(InvalidOptionsError):
        parse_options({"targets": "face", **options})


@pytest.mark.parametrize(("effect", "options"), WEAKEST_ALLOWED)
def test_weakest_allowed_options_keep_the_face_hidden(engine, astronaut_jpeg, original, face_box, effect, options):
    # The guarantee must hold for every setting a request may choose, not only the defaults.
    try:
        published = publish(engine, astronaut_jpeg, face_box, effect=effect, **options)
    except InvalidOptionsError:
        return  # no longer allowed: nothing to prove
    assert_nothing_recovered(judge(attacks(effect, published, original), original, face_box, fail_fast=True))


# --- 2. no metadata in any output -----------------------------------------------------------

CANARY = "privacy-canary-7f3a"
NEEDLES = (
    b"Exif",
    b"GPS",
    b"http://ns.adobe.com/xap",
    b"Photoshop 3.0",
    b"8BIM",
    b"xmpmeta",
    b"GPSLatitude",
    struct.pack("<6I", 48, 1, 51, 1, 2952, 100),  # the GPS latitude we plant
    CANARY.encode(),
)


def _ifd_at(offset: int, entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian IFD placed at ``offset`` of its TIFF structure, values after it."""
    entries = sorted(entries)
    out = struct.pack("<H", len(entries))
    extra = b""
    extra_at = offset + 2 + 12 * len(entries) + 4
    for tag, typ, count, value in entries:
        if len(value) <= 4:
            field = value.ljust(4, b"\0")
        else:
            field = struct.pack("<I", extra_at + len(extra))
            extra += value + b"\0" * (len(value) & 1)
        out += struct.pack("<HHI", tag, typ, count) + field
    return out + struct.pack("<I", 0) + extra


def exif_with_gps() -> bytes:
    """EXIF with a description, an artist and a GPS IFD (lat/long and a processing method)."""
    description = f"{CANARY} description\0".encode()
    artist = f"{CANARY} artist\0".encode()

    def ifd0(gps_at: int) -> bytes:
        return tiff_structure(
            [(270, 2, len(description), description), (315, 2, len(artist), artist), (34853, 4, 1, gps_at)]
        )

    gps_at = len(ifd0(0))
    method = b"ASCII\0\0\0" + f"{CANARY} gps".encode()
    gps = _ifd_at(
        gps_at,
        [
            (1, 2, 2, b"N\0"),
            (2, 5, 3, struct.pack("<6I", 48, 1, 51, 1, 2952, 100)),
            (3, 2, 2, b"E\0"),
            (4, 5, 3, struct.pack("<6I", 2, 1, 17, 1, 4020, 100)),
            (27, 7, len(method), method),
        ],
    )
    return ifd0(gps_at) + gps


def xmp_segment() -> bytes:
    packet = (
        '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
        f'exif:GPSLatitude="48,51.492N"><dc:creator>{CANARY} xmp</dc:creator></rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )
    return segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + packet.encode())


def iptc_segment() -> bytes:
    byline = f"{CANARY} iptc".encode()
    iim = b"\x1c\x02\x00\x00\x02\x00\x04" + b"\x1c\x02\x50" + struct.pack(">H", len(byline)) + byline
    resource = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", len(iim)) + iim + b"\0" * (len(iim) & 1)
    return segment(0xED, b"Photoshop 3.0\0" + resource)


@pytest.fixture(scope="module")
def jpeg_with_all_metadata(astronaut_jpeg: bytes) -> bytes:
    data = astronaut_jpeg
    for seg in (iptc_segment(), xmp_segment(), app1_exif(exif_with_gps())):  # ends up EXIF, XMP, IPTC
        data = with_segment(data, seg)
    return data


def test_the_metadata_input_really_carries_everything(jpeg_with_all_metadata):
    assert {"exif", "gps", "xmp", "iptc"} <= set(imageio.metadata_markers(jpeg_with_all_metadata))
    for needle in NEEDLES:
        assert needle in jpeg_with_all_metadata
    assert imageio.decode(jpeg_with_all_metadata).pixels.shape == (512, 512, 3)


def pixel_data_spans(data: bytes, fmt: str) -> list[tuple[int, int]]:
    """Where the (compressed or raw) pixel payload lies in an encoded image.

    Short needles like b"GPS" occur by chance in pixel data (the BMP of the astronaut has two),
    so the byte search for them runs on everything else: headers, chunks, tags.
    """
    spans = []
    if fmt == "jpeg":  # entropy-coded data: from the end of the SOS header to EOI
        i = 2
        while data[i] == 0xFF and data[i + 1] != 0xDA:
            i += 2 + struct.unpack_from(">H", data, i + 2)[0]
        assert data[i + 1] == 0xDA
        spans.append((i + 2 + struct.unpack_from(">H", data, i + 2)[0], data.rindex(b"\xff\xd9")))
    elif fmt in ("png", "webp"):
        i, header, payload = (8, ">I4s", {b"IDAT"}) if fmt == "png" else (12, "<4sI", {b"VP8 ", b"VP8L", b"ALPH"})
        while i + 8 <= len(data):
            a, b = struct.unpack_from(header, data, i)
            size, kind = (a, b) if fmt == "png" else (b, a)
            if kind in payload:
                spans.append((i + 8, i + 8 + size))
            i += 8 + size + (4 if fmt == "png" else size & 1)
    elif fmt == "bmp":
        offset, (width, height), bits = (
            struct.unpack_from("<I", data, 10)[0],
            struct.unpack_from("<ii", data, 18),
            data[28],
        )
        spans.append((offset, offset + (width * bits + 31) // 32 * 4 * abs(height)))
    elif fmt == "tiff":
        e = "<" if data[:2] == b"II" else ">"
        (ifd,) = struct.unpack_from(e + "I", data, 4)
        (count,) = struct.unpack_from(e + "H", data, ifd)
        tags = {}
        for n in range(count):
            tag, typ, values = struct.unpack_from(e + "HHI", data, ifd + 2 + 12 * n)
            if tag in (273, 279) and typ in (3, 4):
                item = "H" if typ == 3 else "I"
                at = ifd + 2 + 12 * n + 8
                if struct.calcsize(item) * values > 4:
                    (at,) = struct.unpack_from(e + "I", data, at)
                tags[tag] = struct.unpack_from(e + item * values, data, at)
        spans += [(offset, offset + size) for offset, size in zip(tags[273], tags[279], strict=True)]
    assert spans and all(0 < a <= b <= len(data) for a, b in spans), fmt
    return spans


def outside_pixel_data(data: bytes, fmt: str) -> bytes:
    """The encoded image with its pixel payload cut out (a separator keeps needles from joining)."""
    parts, at = [], 0
    for start, end in sorted(pixel_data_spans(data, fmt)):
        parts.append(data[at:start])
        at = end
    return b"|".join([*parts, data[at:]])


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp", "bmp", "tiff"])
def test_no_output_carries_metadata(engine, jpeg_with_all_metadata, fmt):
    result = engine.anonymize(jpeg_with_all_metadata, parse_options({**FACE_ONLY, "format": fmt}))
    assert result.format == fmt and result.report["counts"] == {"face": 1}
    assert imageio.metadata_markers(result.data) == []
    # long needles (and our canary) anywhere in the file; all needles outside the pixel payload
    anywhere = [n for n in NEEDLES if len(n) >= 8 and n in result.data]
    structure = outside_pixel_data(result.data, fmt)
    assert len(structure) < len(result.data)  # the cut did find the pixel payload
    in_structure = [n for n in NEEDLES if n in structure]
    assert not anywhere and not in_structure, f"{fmt} output contains {anywhere + in_structure}"


def heif_with_all_metadata(pixels: np.ndarray, fmt: str) -> bytes:
    """A HEIC (pillow-heif) or AVIF (Pillow) photo carrying the hostile EXIF/GPS and XMP above."""
    import io

    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(pixels[:, :, ::-1]))
    packet = xmp_segment()[4 + len(b"http://ns.adobe.com/xap/1.0/\0") :]
    out = io.BytesIO()
    metadata = {"exif": b"Exif\0\0" + exif_with_gps(), "xmp": packet}
    if fmt == "heic":
        import pillow_heif

        pillow_heif.from_pillow(picture).save(out, format="HEIF", quality=90, **metadata)
    else:
        picture.save(out, format="AVIF", quality=90, **metadata)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["heic", "avif"])
def test_heic_and_avif_metadata_never_reaches_an_output(engine, original, fmt):
    data = heif_with_all_metadata(original, fmt)
    assert {"exif", "gps", "xmp"} <= set(imageio.metadata_markers(data))  # the input carries it all
    assert CANARY.encode() in data and b"GPS" in data
    for out_format in (None, "png", "webp", "tiff"):
        options = {**FACE_ONLY, **({"format": out_format} if out_format else {})}
        result = engine.anonymize(data, parse_options(options))
        assert result.format == (out_format or "jpeg") and result.report["counts"] == {"face": 1}
        assert imageio.metadata_markers(result.data) == []
        anywhere = [n for n in NEEDLES if len(n) >= 8 and n in result.data]
        in_structure = [n for n in NEEDLES if n in outside_pixel_data(result.data, result.format)]
        assert not anywhere and not in_structure, f"{fmt} -> {result.format} output contains {anywhere + in_structure}"


# --- 3. fail closed -------------------------------------------------------------------------


@pytest.fixture
def encode_calls(monkeypatch) -> list:
    """Records every call to imageio.encode: a failed run must not even encode an output."""
    calls: list = []
    real = imageio.encode

    def spy(*args, **kwargs):
        calls.append(args[2] if len(args) > 2 else kwargs.get("fmt"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_module.imageio, "encode", spy)
    return calls


class _Counting:
    """The real face detector, counting its runs."""

    def __init__(self, inner):
        self.inner, self.card, self.runs = inner, inner.card, 0

    def detect(self, *args, **kwargs):
        self.runs += 1
        return self.inner.detect(*args, **kwargs)


def _plate_card():
    return dataclasses.replace(get_detector("face").card, label="plate", version="plate-test")


class _Exploding:
    def run(self, *args, **kwargs):
        raise RuntimeError("onnxruntime: bad allocation")


def _plate_that_crashes_in_onnxruntime():
    """A real CenterNetDetector whose session fails mid-run (the library wraps it in DetectionError)."""
    broken = copy.copy(get_detector("face"))
    broken.card = _plate_card()
    broken.network = copy.copy(broken.network)
    broken.network.session = broken.network.wide = _Exploding()
    return broken


class _PlateRaising:
    def __init__(self, exc: Exception):
        self.card, self.exc = _plate_card(), exc

    def detect(self, *args, **kwargs):
        raise self.exc


def _plate_fails_to_load():
    raise RuntimeError("plate model file unreadable")


@pytest.mark.parametrize(
    ("plate", "expected"),
    [
        (_plate_fails_to_load, DetectionError),
        (_plate_that_crashes_in_onnxruntime, DetectionError),
        (lambda: _PlateRaising(MemoryError("out of memory in the plate model")), MemoryError),
    ],
    ids=["plate-fails-to-load", "plate-crashes-in-onnxruntime", "plate-raises-other-error"],
)
def test_broken_plate_detector_fails_closed_although_faces_worked(astronaut_jpeg, encode_calls, plate, expected):
    face = _Counting(get_detector("face"))

    def factory(label: str):
        return face if label == "face" else plate()

    engine = Anonymizer(factory)
    outcome: list[Result] = []
    with pytest.raises(expected):
        outcome.append(engine.anonymize(astronaut_jpeg, parse_options({"targets": "face,plate"})))
    assert face.runs == 1  # the face detector ran and found the face ...
    assert outcome == [] and encode_calls == []  # ... yet nothing was produced, not even encoded


def test_face_only_request_is_unaffected_by_a_broken_plate_model(astronaut_jpeg, encode_calls):
    # The other side of the coin (and proof that the encode spy sees a real run): fail closed on
    # the targets requested, not on unrelated ones.
    engine = Anonymizer(lambda label: get_detector("face") if label == "face" else _plate_fails_to_load())
    assert engine.anonymize(astronaut_jpeg, parse_options(FACE_ONLY)).report["counts"] == {"face": 1}
    assert encode_calls == ["jpeg"]


def test_output_that_would_carry_metadata_is_never_returned(engine, astronaut_jpeg, monkeypatch):
    monkeypatch.setattr(imageio, "metadata_markers", lambda data: ["exif"])
    with pytest.raises(RuntimeError, match="metadata"):
        engine.anonymize(astronaut_jpeg, parse_options(FACE_ONLY))


# --- 4. logs never carry image content ------------------------------------------------------

_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{256,}={0,2}")


def image_content_in(text: str, images: list[bytes]) -> list[str]:
    """What in ``text`` looks like image content: base64 or hex of any of ``images`` (at every
    alignment, from the start and the middle), raw or escaped JPEG markers, or any run of 256+
    base64-like characters."""
    found = []
    for data in images:
        for start in (0, len(data) // 2):
            for shift in range(3):
                piece = data[start + shift : start + shift + 48]
                for encoded in (base64.b64encode(piece), base64.urlsafe_b64encode(piece), binascii.hexlify(piece)):
                    if encoded.decode()[:32] in text:
                        found.append(f"encoding of image bytes at {start + shift}")
    # SOI as latin-1 text ("ÿØÿ"), as repr() and JSON escape it; JFIF / PNG signatures and chunks
    for marker in ("\xff\xd8\xff", "\\xff\\xd8", "\\u00ff\\u00d8", "JFIF", "\x89PNG", "IDAT"):
        if marker in text:
            found.append(f"marker {marker!r}")
    found += [f"base64-like run of {len(m.group())} chars" for m in _BASE64_RUN.finditer(text)]
    return found


def test_the_content_check_does_catch_image_content(astronaut_jpeg):
    head = astronaut_jpeg[:3000]
    assert image_content_in(base64.b64encode(astronaut_jpeg).decode(), [astronaut_jpeg])
    assert image_content_in("x" + base64.b64encode(astronaut_jpeg[1:301]).decode(), [b"unrelated"])
    assert image_content_in(repr(head), [b"unrelated"])
    assert image_content_in(head.decode("latin-1"), [b"unrelated"])
    assert image_content_in(json.dumps({"body": head.decode("latin-1")}), [b"unrelated"])
    assert not image_content_in('{"level":"INFO","message":"anonymized","faces":1}', [astronaut_jpeg])


def _records_text(caplog) -> str:
    parts = [caplog.text]
    for record in caplog.records:
        parts += [str(record.msg), repr(record.args), str(record.__dict__)]
    return "\n".join(parts)


def test_pipeline_logs_no_image_content(engine, astronaut_jpeg, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    result = engine.anonymize(astronaut_jpeg, parse_options(FACE_ONLY))
    report = engine.detect(astronaut_jpeg, parse_options(FACE_ONLY))
    with pytest.raises(InvalidImageError) as truncated:
        engine.anonymize(astronaut_jpeg[: len(astronaut_jpeg) // 2], parse_options(FACE_ONLY))
    out, err = capfd.readouterr()
    # what callers log or store: the summary line, the reports (S3 writes them as JSON), errors
    text = "\n".join(
        [
            _records_text(caplog),
            out,
            err,
            summarize(result.report),
            json.dumps(result.report),
            json.dumps(report),
            str(truncated.value),
        ]
    )
    assert image_content_in(text, [astronaut_jpeg, result.data]) == []


@pytest.fixture(scope="module")
def api_fn():
    """functions/api_anonymize/app.py as a cold Lambda container, under moto, at DEBUG."""
    from lambda_env import mock_lambda_env

    from anonymizer_local.emulator import load_function

    with mock_lambda_env(
        OUTPUT_BUCKET="privacy-out",
        UPLOAD_BUCKET="privacy-in",
        POWERTOOLS_LOG_LEVEL="DEBUG",
        POWERTOOLS_LOGGER_LOG_EVENT="false",  # as template.yaml sets it (test_template_* below)
        ANONYMIZER_TARGETS="face",
    ):
        yield load_function("api_anonymize")


@contextlib.contextmanager
def powertools_logs_to_stdout(fn):
    """Point the function's Powertools log handler at the current sys.stdout (capsys's, when
    called from a test body): the handler keeps the stream it was created with, which may be
    another test's capture when an earlier module configured the same service logger."""
    service = logging.getLogger(fn.logger.service)
    handlers = [h for h in service.handlers if isinstance(h, logging.StreamHandler)]
    assert handlers, "the Powertools logger has no stream handler"
    previous = [h.setStream(sys.stdout) for h in handlers]
    try:
        yield
    finally:
        for handler, stream in zip(handlers, previous, strict=True):
            if stream is not None:
                handler.setStream(stream)


@pytest.fixture
def use_anonymizer():
    import anonymizer.aws as aws

    previous = []

    def use(engine):
        previous.append(aws.set_anonymizer(engine))

    yield use
    if previous:
        aws.set_anonymizer(previous[0])


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_api_handler_logs_no_image_content(api_fn, engine, astronaut_jpeg, use_anonymizer, caplog, capsys):
    from anonymizer_local.emulator import FakeLambdaContext, api_event

    caplog.set_level(logging.DEBUG)  # every logger, Powertools' own and boto's included
    caplog.set_level(logging.DEBUG, logger=api_fn.logger.service)

    def call(engine_, query=None, body=astronaut_jpeg):
        use_anonymizer(engine_)
        event = api_event("POST", "/anonymize", query=query, headers={"Content-Type": "image/jpeg"}, body=body)
        return api_fn.lambda_handler(event, FakeLambdaContext())

    with powertools_logs_to_stdout(api_fn):
        ok = call(engine)
        report = call(engine, query={"format": ["json"]})
        corrupt = call(engine, body=astronaut_jpeg[: len(astronaut_jpeg) // 2])
        crashed = call(Anonymizer(lambda label: _plate_fails_to_load()))
    assert [r["statusCode"] for r in (ok, report, corrupt, crashed)] == [200, 200, 400, 500]
    out, err = capsys.readouterr()
    assert '"message":"anonymized"' in out.replace(" ", "")  # the capture does see Powertools' lines
    assert "request rejected" in out and "request failed" in out and "Traceback" in out
    output = base64.b64decode(ok["body"])
    text = "\n".join([out, err, _records_text(caplog)])
    assert image_content_in(text, [astronaut_jpeg, output]) == []


# --- 5. API authorization and request size --------------------------------------------------


@pytest.fixture(scope="module")
def tpl() -> dict:
    yaml = pytest.importorskip("yaml")
    from test_template import TEMPLATE, _CfnLoader

    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def test_template_every_api_route_requires_a_key_and_a_usage_plan(tpl):
    resources = tpl["Resources"]
    apis = {name: r for name, r in resources.items() if r["Type"] == "AWS::Serverless::Api"}
    assert apis, "no API in the template"
    for name, api in apis.items():
        auth = api["Properties"]["Auth"]
        assert auth["ApiKeyRequired"] is True, name
        plan = auth["UsagePlan"]
        assert plan["CreateUsagePlan"] in ("PER_API", "SHARED"), name
        assert {"RateLimit", "BurstLimit"} <= set(plan["Throttle"]) and {"Limit", "Period"} <= set(plan["Quota"])
    # no other way in: no implicit API, HTTP API, raw API Gateway resource or function URL
    # (AWS::ApiGateway::Account only names the role API Gateway writes its access logs with)
    others = sorted(
        name
        for name, r in resources.items()
        if r["Type"].startswith(
            ("AWS::ApiGateway::", "AWS::ApiGatewayV2::", "AWS::Lambda::Url", "AWS::Serverless::HttpApi")
        )
        and r["Type"] != "AWS::ApiGateway::Account"
    )
    assert others == []
    assert "Api" not in tpl.get("Globals", {}) or tpl["Globals"]["Api"].get("Auth", {}).get("ApiKeyRequired", True)
    routes = set()
    for name, r in resources.items():
        if r["Type"] != "AWS::Serverless::Function":
            continue
        assert "FunctionUrlConfig" not in r["Properties"], name
        for event_name, event in (r["Properties"].get("Events") or {}).items():
            assert event["Type"] != "HttpApi", f"{name}.{event_name}"
            if event["Type"] != "Api":
                continue
            props = event["Properties"]
            # without RestApiId SAM creates an implicit API that has no key
            assert props.get("RestApiId", {}).get("Ref") in apis, f"{name}.{event_name} is on an implicit API"
            route = (props["Method"].upper(), props["Path"])
            keyless = route in KEYLESS_ROUTES
            key = props.get("Auth", {}).get("ApiKeyRequired", True)
            assert key is not keyless, f"{name}.{event_name}: API key required = {key}"
            routes.add(route)
    assert routes == API_ROUTES


def test_template_never_logs_events(tpl):
    # Lambda events carry the image (base64 body): Powertools must not log them.
    env = tpl["Globals"]["Function"]["Environment"]["Variables"]
    assert env["POWERTOOLS_LOGGER_LOG_EVENT"] == "false"
    for name, r in tpl["Resources"].items():
        if r["Type"] == "AWS::Serverless::Function":
            local = r["Properties"].get("Environment", {}).get("Variables", {})
            assert local.get("POWERTOOLS_LOGGER_LOG_EVENT", "false") == "false", name


def test_template_bounds_the_object_size(tpl):
    # The synchronous API's limit is in the handler (below); uploads are bounded by MaxObjectBytes,
    # which the S3 flow checks before downloading anything.
    limit = tpl["Parameters"]["MaxObjectBytes"]
    assert limit["Type"] == "Number" and int(limit["Default"]) <= int(limit["MaxValue"]) <= 1 << 30
    assert tpl["Globals"]["Function"]["Environment"]["Variables"]["MAX_OBJECT_BYTES"] == {"Ref": "MaxObjectBytes"}


def test_template_keeps_images_out_of_traces(tpl):
    """Tracer records a traced method's response by default: the API's response is the image."""
    env = tpl["Globals"]["Function"]["Environment"]["Variables"]
    assert str(env.get("POWERTOOLS_TRACER_CAPTURE_RESPONSE", "true")).lower() == "false"


class _MustNotRun:
    def anonymize(self, *args, **kwargs):
        raise AssertionError("an oversized body reached the pipeline")

    detect = anonymize


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_api_refuses_bodies_over_its_payload_limit_with_413(api_fn, engine, use_anonymizer):
    from anonymizer.aws import api_flow
    from anonymizer_local.emulator import FakeLambdaContext, api_event

    limit = api_flow.MAX_SYNC_BODY_CHARS
    assert limit <= api_flow.SYNC_PAYLOAD_LIMIT and limit % 4 == 0

    def send(chars: int) -> dict:
        event = api_event("POST", "/anonymize", headers={"Content-Type": "image/jpeg"}, body=b"x")
        event["body"] = "A" * chars  # valid base64 of zero bytes: not an image, but not refused for size
        return api_fn.lambda_handler(event, FakeLambdaContext())

    use_anonymizer(engine)
    at_limit = send(limit)
    assert at_limit["statusCode"] == 400, at_limit["body"][:200]  # read, then refused as not an image
    use_anonymizer(_MustNotRun())
    over = send(limit + 4)
    assert over["statusCode"] == 413
    body = json.loads(over["body"])
    assert body["error"] == "payload_too_large" and "POST /uploads" in body["message"]
    assert len(over["body"]) < 1000  # the refusal does not echo the body
