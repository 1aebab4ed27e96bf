"""Export an image in PNG, TIFF, WebP or JPEG with its recipe, and open images back as arrays.

Every format carries the ``paradiff`` recipe JSON (see :mod:`.metadata`), which
:func:`.metadata.read_recipe` reads back, and the A1111-style ``parameters`` text:

====== ======================================== ================================================
format recipe JSON                              ``parameters`` text
====== ======================================== ================================================
PNG    ``paradiff`` iTXt chunk                  ``parameters`` iTXt chunk (exactly ``save_png``)
TIFF   tag 270 ImageDescription (ASCII JSON)    XMP packet (tag 700), as ``exif:UserComment``
WebP   EXIF ImageDescription (0x010E)           EXIF UserComment (0x9286)
JPEG   EXIF ImageDescription (0x010E)           EXIF UserComment (0x9286)
====== ======================================== ================================================

Software (tag 305 / EXIF 0x0131) is ``Paradiff <version>`` in TIFF, WebP and JPEG. UserComment
is encoded as A1111 does (``UNICODE\\0`` + UTF-16-BE, or ``ASCII\\0\\0\\0`` + ASCII when the text
is plain ASCII). TIFF keeps the parameters in XMP because Pillow writes an EXIF sub-IFD only into
uncompressed TIFFs; XML cannot hold control characters, so those become U+FFFD there (the recipe
JSON in tag 270 is exact).

Depth: PNG and TIFF keep a ``(H, W)`` uint16 heightmap at 16 bits. WebP and JPEG hold 8 bits only:
a heightmap is stretched min-to-max onto 0..255 (:func:`to_8bit`), which keeps its shape but
loses depth (65536 levels become 256) and the absolute heights. TIFF is deflate-compressed with
the horizontal predictor (lossless); WebP is lossless at ``quality=100`` only.

JPEG's EXIF segment holds at most 64 KiB. A recipe that does not fit (a 64x64 grid lists 4096
tile rects) is stored with the plan in its compact form, without the tile list, which
``read_recipe`` rebuilds; if even that does not fit (prompts of thousands of non-ASCII
characters), the UserComment is left out, and past that the save is refused.

This module imports no Qt: the GUI calls it from a worker thread.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from xml.sax.saxutils import escape

import numpy as np
from PIL import ExifTags, Image

from ..core.plan import TilePlan
from ..core.request import GenerationRequest, RequestError
from .metadata import (
    EXIF_IMAGE_DESCRIPTION,
    MAX_METADATA_BYTES,
    SOFTWARE,
    atomic_write,
    parameters_text,
    pillow_pixel_limit,
    png_info,
    recipe,
    recipe_json,
)

# Deliberately above Pillow's default (~89 megapixels): Paradiff makes 16384² (268 MP) images and
# must open them again. 1 << 30 is 32768², 3 GiB as RGB.
MAX_PIXELS = 1 << 30

_EXIF_SOFTWARE = 0x0131
_EXIF_USER_COMMENT = 0x9286
_JPEG_MAX_EXIF = 65533  # bytes in one APP1 segment after its length field (Pillow refuses more)
_TIFF_PREDICTOR = 317


@dataclass(frozen=True)
class ImageFormat:
    """One export format and what it can hold."""

    name: str  # key in FORMATS
    label: str  # for users and file dialogs
    pillow: str  # Pillow's format name
    extensions: tuple[str, ...]  # first one is the usual
    deep: bool  # keeps (H, W) uint16 at 16 bits
    max_side: int  # px, the format's own limit

    @property
    def file_filter(self) -> str:
        """A Qt-style dialog filter, e.g. ``JPEG image (*.jpg *.jpeg)``."""
        return f"{self.label} (" + " ".join(f"*{e}" for e in self.extensions) + ")"


FORMATS: dict[str, ImageFormat] = {
    "png": ImageFormat("png", "PNG image", "PNG", (".png",), deep=True, max_side=2**31 - 1),
    # Classic TIFF: Pillow's libtiff writer makes no BigTIFF, so a file must stay under 4 GiB.
    "tiff": ImageFormat("tiff", "TIFF image", "TIFF", (".tif", ".tiff"), deep=True, max_side=2**32 - 1),
    "webp": ImageFormat("webp", "WebP image", "WEBP", (".webp",), deep=False, max_side=16383),
    "jpeg": ImageFormat("jpeg", "JPEG image", "JPEG", (".jpg", ".jpeg"), deep=False, max_side=65500),
}
_BY_EXTENSION = {ext: f.name for f in FORMATS.values() for ext in f.extensions}
_ALLOWED = ", ".join(_BY_EXTENSION)


def format_for(path: str | os.PathLike[str]) -> str:
    """The ``FORMATS`` key for ``path``'s extension (case-insensitive)."""
    ext = Path(path).suffix.lower()
    if ext not in _BY_EXTENSION:
        raise RequestError("format", f"cannot save {Path(path).name!r}: allowed: {_ALLOWED}")
    return _BY_EXTENSION[ext]


def _format_named(fmt: str) -> str:
    key = str(fmt).lower().lstrip(".")
    if key in FORMATS:
        return key
    if "." + key in _BY_EXTENSION:  # "jpg", "tif"
        return _BY_EXTENSION["." + key]
    raise RequestError("format", f"unknown format {fmt!r}: allowed: {', '.join(FORMATS)}")


# -- pixels ------------------------------------------------------------------------------------


def to_8bit(image: np.ndarray) -> np.ndarray:
    """A ``(H, W)`` uint16 heightmap stretched min-to-max onto uint8 (flat input gives zeros).

    Loses depth: 65536 levels become 256, and the absolute heights are gone.
    """
    lo, hi = int(image.min()), int(image.max())
    out = np.zeros(image.shape, np.uint8)
    if hi == lo:
        return out
    span = hi - lo
    # In row blocks: a 16384² heightmap as one uint32 temporary would be another 1 GiB.
    for y in range(0, image.shape[0], 1024):
        block = image[y:y + 1024].astype(np.uint32) - lo
        out[y:y + 1024] = (block * 255 + span // 2) // span  # rounded to nearest
    return out


def _pillow_image(image: np.ndarray, spec: ImageFormat) -> Image.Image:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype == np.uint16 and image.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(image) if spec.deep else to_8bit(image))
    if image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        return Image.fromarray(np.ascontiguousarray(image))
    raise ValueError(f"image must be (H, W, 3) uint8, (H, W) uint8 or (H, W) uint16; "
                     f"got {image.shape} {image.dtype}")


# -- metadata ----------------------------------------------------------------------------------


def user_comment(text: str) -> bytes:
    """EXIF UserComment bytes for ``text``, encoded the way A1111 (piexif) writes and reads them."""
    if text.isascii():
        return b"ASCII\0\0\0" + text.encode("ascii")
    return b"UNICODE\0" + text.encode("utf-16-be", "replace")


# Characters XML 1.0 cannot hold at all, not even as references.
_XML_INVALID = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xmp(parameters: str) -> bytes:
    text = escape(_XML_INVALID.sub("\ufffd", parameters), {"\r": "&#13;"})  # a bare CR would read back as LF
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about="" xmlns:exif="http://ns.adobe.com/exif/1.0/"'
        ' xmlns:xmp="http://ns.adobe.com/xap/1.0/">\n'
        f'   <xmp:CreatorTool>{escape(SOFTWARE)}</xmp:CreatorTool>\n'
        f'   <exif:UserComment><rdf:Alt><rdf:li xml:lang="x-default">{text}</rdf:li></rdf:Alt></exif:UserComment>\n'
        '  </rdf:Description>\n'
        ' </rdf:RDF>\n'
        '</x:xmpmeta>\n'
        '<?xpacket end="w"?>'
    ).encode()


def _exif(request: GenerationRequest, plan: TilePlan, info: dict[str, Any], parameters: str,
          spec: ImageFormat) -> bytes:
    """EXIF bytes with the recipe, shrunk step by step (see the module docs) to fit ``spec``."""
    limit = _JPEG_MAX_EXIF if spec.name == "jpeg" else MAX_METADATA_BYTES
    for tiles, with_parameters in ((True, True), (False, True), (False, False)):
        exif = Image.Exif()
        exif[EXIF_IMAGE_DESCRIPTION] = json.dumps(recipe(request, plan, info, tiles=tiles), ensure_ascii=True)
        exif[_EXIF_SOFTWARE] = SOFTWARE
        if with_parameters:
            exif.get_ifd(ExifTags.IFD.Exif)[_EXIF_USER_COMMENT] = user_comment(parameters)
        data = exif.tobytes()
        if len(data) <= limit:
            return data
    raise RequestError("format", f"the recipe ({len(data)} bytes) does not fit in {spec.label}'s EXIF block "
                                 f"of {limit} bytes; save as PNG or TIFF")


# -- writing -----------------------------------------------------------------------------------


class _ProgressFile:
    """A file object for Pillow that reports how far the file has grown after each write.

    It has no ``fileno`` on purpose: given one, Pillow's encoders write to the descriptor and no
    byte passes through ``write``. Growth is the highest position written, so a writer that
    seeks back to patch a header does not count those bytes twice.
    """

    def __init__(self, f: IO[bytes], on_progress: Callable[[int], object]) -> None:
        self._f = f
        self._on_progress = on_progress
        self._size = 0

    def write(self, data: bytes) -> int:
        n = self._f.write(data)
        end = self._f.tell()
        if end > self._size:
            self._size = end
            self._on_progress(end)
        return n

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def flush(self) -> None:
        self._f.flush()

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True


def _prepare(path: str | os.PathLike[str], image: np.ndarray, fmt: str | None,
             quality: int) -> tuple[ImageFormat, Image.Image]:
    """The format and the Pillow image to write, after the checks every save shares."""
    spec = FORMATS[format_for(path) if fmt is None else _format_named(fmt)]
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise RequestError("quality", f"must be a whole number from 1 to 100, got {quality!r}")
    pil = _pillow_image(image, spec)
    if max(pil.size) > spec.max_side:
        raise RequestError("format", f"{spec.label} holds at most {spec.max_side} px a side; this image is "
                                     f"{pil.width}x{pil.height}: save as PNG or TIFF")
    return spec, pil


def save_image(
    path: str | os.PathLike[str],
    image: np.ndarray,
    request: GenerationRequest,
    plan: TilePlan,
    info: dict[str, Any],
    *,
    fmt: str | None = None,
    quality: int = 95,
    on_progress: Callable[[int], object] | None = None,
) -> Path:
    """Write ``image`` with its recipe as ``fmt`` (default: from the extension), atomically.

    ``image`` is ``(H, W, 3)`` uint8 RGB, or ``(H, W)`` uint8 / uint16 grayscale. ``quality``
    (1–100) applies to JPEG and WebP; WebP at 100 is lossless. ``on_progress(bytes_written)``
    is called with growing byte counts, the last one the file size; PNG and JPEG report as the
    encoder writes, WebP (encoded in memory) and TIFF (libtiff writes to the file descriptor, so it
    never holds the whole file in memory) once at the end. An exception from ``on_progress``
    (e.g. a cancel) aborts the save; as with any failure, no partial file is left and an older
    file at ``path`` is kept.
    """
    spec, pil = _prepare(path, image, fmt, quality)
    parameters = parameters_text(request, plan, info.get("model_name", request.model), info.get("loras"))

    options: dict[str, Any]
    if spec.name == "png":
        options = {"pnginfo": png_info(request, plan, info)}
    elif spec.name == "tiff":
        options = {
            "compression": "tiff_adobe_deflate",
            "tiffinfo": {
                EXIF_IMAGE_DESCRIPTION: recipe_json(request, plan, info, ascii=True),
                _EXIF_SOFTWARE: SOFTWARE,
                700: _xmp(parameters),  # XMP
                _TIFF_PREDICTOR: 2,  # horizontal differencing: smooth images deflate several times smaller
            },
        }
    elif spec.name == "webp":
        exif = _exif(request, plan, info, parameters, spec)
        # For lossless WebP Pillow's `quality` means encoder effort; its default is a fair trade.
        options = {"exif": exif, "lossless": True} if quality == 100 else {"exif": exif, "quality": quality}
    else:
        options = {"exif": _exif(request, plan, info, parameters, spec), "quality": quality}
        if quality >= 90:
            # At high quality, 4:2:0 chroma subsampling is the largest loss left; keep full colour.
            options["subsampling"] = 0

    def write(f: IO[bytes]) -> None:
        if on_progress is None:
            pil.save(f, format=spec.pillow, **options)
        elif spec.name == "tiff":
            pil.save(f, format=spec.pillow, **options)
            on_progress(os.fstat(f.fileno()).st_size)  # libtiff moved the descriptor, not f's position
        else:
            pil.save(_ProgressFile(f, on_progress), format=spec.pillow, **options)  # type: ignore[arg-type]

    return atomic_write(path, write)


def save_plain(path: str | os.PathLike[str], image: np.ndarray, *, fmt: str | None = None, quality: int = 95,
               on_progress: Callable[[int], object] | None = None) -> Path:
    """Write ``image`` without a recipe (a picture opened from disk that has none), atomically."""
    spec, pil = _prepare(path, image, fmt, quality)
    options: dict[str, Any] = {}
    if spec.name == "tiff":
        options = {"compression": "tiff_adobe_deflate", "tiffinfo": {_TIFF_PREDICTOR: 2}}
    elif spec.name in ("webp", "jpeg"):
        options = {"lossless": True} if spec.name == "webp" and quality == 100 else {"quality": quality}

    def write(f: IO[bytes]) -> None:
        pil.save(f, format=spec.pillow, **options)
        if on_progress is not None:
            f.flush()
            on_progress(os.fstat(f.fileno()).st_size)

    return atomic_write(path, write)


# -- reading -----------------------------------------------------------------------------------


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.4g}"


def _as_array(im: Image.Image, p: Path) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16, copy=False)  # big-endian files come back native
    if mode == "I":
        a = np.asarray(im)
        if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise RequestError("image", f"{p} holds 32-bit values outside 0..65535; "
                                        "Paradiff reads 8- and 16-bit images")
        return a.astype(np.uint16)
    if mode == "F":
        raise RequestError("image", f"{p} holds floating-point pixels; Paradiff reads 8- and 16-bit images")
    if mode == "L":
        return np.asarray(im)
    if mode in ("1", "LA", "La"):
        return np.asarray(im.convert("L"))
    if mode == "RGB":
        return np.asarray(im)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow warns when a palette with transparency goes straight to RGB
    return np.asarray(im.convert("RGB"))  # alpha is dropped, not composited


def open_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The pixels of an image file: ``(H, W, 3)`` uint8 for colour, ``(H, W)`` uint8 for 8-bit gray,
    ``(H, W)`` uint16 for 16-bit gray.

    Palette, RGBA, CMYK and other colour modes become RGB (alpha dropped); EXIF orientation is not
    applied. Images over ``max_pixels`` (width x height, default 32768²) are refused from their
    header, before any pixel is decoded, with a ``RequestError`` naming ``image`` — in place of
    Pillow's own, lower limit, which would refuse Paradiff's large outputs. The array may be
    read-only.
    """
    p = Path(path)
    try:
        with pillow_pixel_limit(None), Image.open(p) as im:  # header only, size checked next
            n = im.width * im.height
            if n > max_pixels:
                raise RequestError("image", f"{p} is {im.width}x{im.height} px, {_megapixels(n)} megapixels, "
                                            f"more than the limit of {_megapixels(max_pixels)} megapixels")
            # Decoding runs under our limit rather than none: other threads opening images meanwhile
            # keep a bound, and this image (within it) raises no DecompressionBombWarning.
            with pillow_pixel_limit(max_pixels):
                im.load()
                return _as_array(im, p)
    except FileNotFoundError:
        raise RequestError("image", f"no such file {p}") from None
    except OSError as exc:
        raise RequestError("image", f"{p} is not a readable image ({exc})") from None
