"""Safe access to the image files a data file refers to.

Data files come from users and from the internet, so an image reference is treated as untrusted:
it may only name a file inside the data file's folder (or a folder the caller explicitly allows),
and decoding is limited to a few raster formats with a pixel budget. Every problem becomes a
:class:`~mixcore.api.errors.DataError` that names the data file and record, so a user can fix the
record instead of reading a Pillow traceback in the middle of training.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mixcore.api.errors import DataError
from mixcore.api.records import Sample
from mixcore.kit.files import open_regular_file

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "load_image",
    "load_sample_images",
    "resolve_image",
]

#: Default pixel budget per image (Pillow's own default warning threshold). Vision encoders resize
#: to a few hundred pixels a side, so anything larger is far more likely a decompression bomb or a
#: mistake than a useful training image.
DEFAULT_MAX_PIXELS = 89_478_485

#: Pillow format names :func:`load_image` decodes. The list is closed on purpose: Pillow can also
#: open formats such as EPS, whose decoder runs Ghostscript on the file's content, which no
#: training data needs. Formats this Pillow build cannot open are left out at run time.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF", "PPM")

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def _open_formats() -> list[str]:
    """The allowed formats this Pillow registers (MPO, for one, is folded into JPEG in some)."""
    from PIL import Image

    Image.init()  # registers every plugin once, so names missing from OPEN are truly missing
    return [name for name in ALLOWED_FORMATS if name in Image.OPEN]


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def resolve_image(
    data_dir: Path,
    ref: str,
    *,
    source: str = "",
    index: int | None = None,
    allowed_roots: Sequence[Path] = (),
) -> Path:
    """Turn an image reference from a data file into a checked path, without opening the image.

    ``ref`` is resolved against ``data_dir`` (the folder holding the data file) unless it is
    absolute. The result must lie inside ``data_dir`` or one of ``allowed_roots``; this is checked
    twice: lexically, so ``..`` cannot climb out, and on the real path, so a symlink (to a file or
    to a folder on the way) cannot point out either. The file must exist and be a regular file.

    Returns the normalised path (symlinks left in place, so messages show the user's names).
    Raises :class:`DataError` naming ``source`` and ``index`` otherwise.
    """

    def fail(reason: str) -> DataError:
        return DataError(reason, source=source, index=index)

    if not isinstance(ref, str) or not ref.strip():
        raise fail(f"image reference must be a non-empty string, got {ref!r}")
    if "\x00" in ref:
        raise fail(f"image reference {ref!r} contains a NUL character")
    if _URL.match(ref):
        raise fail(f"image {ref!r} is a URL; download it and refer to the local file instead")

    base = Path(os.path.abspath(data_dir))
    roots = [base, *(Path(os.path.abspath(root)) for root in allowed_roots)]
    given = Path(ref)
    path = Path(os.path.normpath(given if given.is_absolute() else base / given))
    folders = " or ".join(str(root) for root in roots)

    if not any(_within(path, root) for root in roots):
        if given.is_absolute():
            raise fail(f"absolute image path {ref!r} lies outside the data folder {folders}")
        raise fail(f"image path {ref!r} uses '..' to leave the data folder {folders}")
    if not path.exists():
        if path.is_symlink():
            raise fail(f"image {ref!r} is a symlink whose target does not exist")
        raise fail(f"image file not found: {path}")
    if not path.is_file():
        raise fail(f"image path {ref!r} is not a regular file: {path}")

    real = path.resolve(strict=True)
    if not any(_within(real, root.resolve()) for root in roots):
        raise fail(
            f"image {ref!r} is a symlink (or lies under one) whose target {real} is outside "
            f"the data folder {folders}"
        )
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _sixteen_bit_to_rgb(im: Image.Image) -> Image.Image:
    """Scale 16-bit grey to 8 bits: Pillow's own conversion clips everything above 255 to white.

    Mode ``I`` is scaled the same way because Pillow uses it for 16-bit PNG/PGM/TIFF data;
    values outside 0..65535 are clipped.
    """
    import numpy as np
    from PIL import Image

    values = np.asarray(im).astype(np.float64)
    grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _to_rgb(im: Image.Image) -> Image.Image:
    """An RGB copy of a loaded image, with transparency composited onto white.

    White rather than black because transparent regions of icons, diagrams and scans are meant
    to be seen on a light page; compositing on black would turn dark strokes invisible.
    """
    from PIL import Image

    if im.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(im)
    has_alpha = "A" in im.getbands() or "a" in im.mode or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # CMYK, L, 1, P, YCbCr, LAB, HSV, RGBX and F go through Pillow's own conversion; F is clipped.
    return im.convert("RGB")


def load_image(
    path: Path | str,
    *,
    source: str = "",
    index: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif_transpose: bool = True,
) -> Image.Image:
    """Open, fully decode and convert one image to RGB, or raise :class:`DataError`.

    Guards, each reported as a one-line reason naming the image, ``source`` and ``index``:

    * more than ``max_pixels`` pixels (checked from the header before decoding); Pillow's own
      decompression-bomb warning and error are treated as errors too, so the effective limit is
      ``min(max_pixels, PIL.Image.MAX_IMAGE_PIXELS)``;
    * formats outside :data:`ALLOWED_FORMATS`, non-image and unreadable files, and anything but a
      regular file (a named pipe or a device is refused without being opened for reading);
    * truncated or corrupt pixel data: the image is decoded completely here (``load()``), so
      damage shows up now and not as a crash inside a data-loader worker later.

    Conversion: 16-bit grey (``I;16*``, ``I``) is scaled by 1/257, not clipped; transparency
    (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour) is composited onto white; ``CMYK``,
    ``L`` and ``P`` use Pillow's conversion. With ``exif_transpose`` the EXIF orientation is
    applied, so the model sees the picture the way the annotator saw it in a viewer.
    """
    from PIL import Image, ImageOps

    path = Path(path)

    def fail(reason: str) -> DataError:
        return DataError(f"image {path}: {reason}", source=source, index=index)

    try:
        # A named pipe (say, ``--image`` of ``mixcore infer``) would block Pillow's open forever.
        handle = open_regular_file(path, "file")
    except DataError as exc:
        raise fail(exc.reason) from None
    try:
        with handle, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle, formats=_open_formats()) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise fail(
                        f"{width}x{height} = {width * height} pixels exceeds the limit of "
                        f"{max_pixels} (possible decompression bomb)"
                    )
                im.load()
                if exif_transpose:
                    transposed = ImageOps.exif_transpose(im)
                    return _to_rgb(transposed if transposed is not None else im)
                return _to_rgb(im)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise fail(f"rejected as a possible decompression bomb: {_first_line(exc)}") from exc
    except Image.UnidentifiedImageError as exc:
        allowed = ", ".join(ALLOWED_FORMATS)
        raise fail(f"not an image in a supported format ({allowed})") from exc
    except Exception as exc:
        # Malformed files make Pillow's decoders raise many unrelated types (OSError for
        # truncation, SyntaxError, struct.error, zlib.error, ValueError, ...): all mean "broken".
        reason = _first_line(exc)
        if "truncated" in reason.lower():
            raise fail(f"truncated image file ({reason})") from exc
        raise fail(f"cannot decode image ({type(exc).__name__}: {reason})") from exc


def load_sample_images(
    sample: Sample, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[Image.Image]:
    """All images of ``sample`` as RGB, in placeholder order; errors name the sample's record."""
    return [
        load_image(path, source=sample.source, index=sample.index, max_pixels=max_pixels)
        for path in sample.images
    ]
