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
from typing import TYPE_CHECKING, Any

from mixcore.api.errors import DataError
from mixcore.api.records import Sample
from mixcore.kit.files import open_regular_file

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "PREPROCESSOR_CONFIG_NAME",
    "ImagePreprocessor",
    "ImageResolver",
    "load_image",
    "load_sample_images",
    "resolve_image",
    "to_rgb",
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


class ImageResolver:
    """:func:`resolve_image` that remembers the references it resolved.

    Data files name the same pictures over and over (a million records may show a few thousand
    images), and each resolution costs a dozen system calls: most of the time of reading such a
    file. A dataset reader keeps one resolver while it reads; only successful resolutions are
    kept (a bad reference is checked, and reported with its record, every time), and the memo
    starts over past ``limit`` entries so that a file of distinct images keeps memory flat.
    """

    def __init__(self, allowed_roots: Sequence[Path] = (), *, limit: int = 100_000) -> None:
        self.allowed_roots = tuple(allowed_roots)
        self.limit = limit
        self._known: dict[tuple[str, str], Path] = {}

    def __call__(
        self, data_dir: Path, ref: str, *, source: str = "", index: int | None = None
    ) -> Path:
        key = (str(data_dir), ref) if isinstance(ref, str) else None
        if key is not None and key in self._known:
            return self._known[key]
        path = resolve_image(
            data_dir, ref, source=source, index=index, allowed_roots=self.allowed_roots
        )
        if key is not None:
            if len(self._known) >= self.limit:
                self._known.clear()
            self._known[key] = path
        return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _grey_to_uint8(im: Image.Image) -> np.ndarray:
    """8-bit levels of deep or float greyscale: Pillow's own conversion clips them to white.

    16-bit modes, and ``I`` (which Pillow uses for 16-bit PNG/PGM/TIFF data), are scaled by
    1/257 with values outside 0..65535 clipped; float images in 0..1 are scaled by 255, other
    float images are clipped to 0..255.
    """
    import numpy as np

    values = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        unit = values.size and values.min() >= 0.0 and values.max() <= 1.0
        scaled = values * 255.0 if unit else values
    else:
        scaled = values / 257.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """An RGB copy of a loaded image, with transparency composited onto white.

    White rather than black because transparent regions of icons, diagrams and scans are meant
    to be seen on a light page; compositing on black would turn dark strokes invisible. Deep
    and float greyscale is rescaled (:func:`_grey_to_uint8`), not clipped.
    """
    from PIL import Image

    if im.mode in _SIXTEEN_BIT_MODES or im.mode == "F":
        return Image.fromarray(_grey_to_uint8(im), mode="L").convert("RGB")
    if im.mode == "RGB":
        return im
    has_alpha = "A" in im.getbands() or "a" in im.mode or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # CMYK, L, 1, P, YCbCr, LAB, HSV and RGBX go through Pillow's own conversion.
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
                    return to_rgb(transposed if transposed is not None else im)
                return to_rgb(im)
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


#: Where a checkpoint folder keeps its image preprocessing settings (Hugging Face's name).
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
#: OpenAI CLIP's normalisation, used by the vision towers of Qwen-VL, BLIP-2 and VisualGLM.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: Pillow's resampling filters by name, and Hugging Face's integer codes for them.
_RESAMPLE_NAMES = ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming")


class ImagePreprocessor:
    """Images -> a vision tower's input: RGB, resized, rescaled, normalised, float32 ``[3, H, W]``.

    Settings come from a checkpoint's ``preprocessor_config.json`` (:meth:`from_pretrained`,
    which reads Hugging Face's fields: ``size``, ``resample``, ``rescale_factor``,
    ``image_mean``/``image_std``, ``do_resize``/``do_rescale``/``do_normalize``) or are given.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int] = 224,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        *,
        resample: str = "bicubic",
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
    ) -> None:
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.height, self.width = int(height), int(width)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        if resample not in _RESAMPLE_NAMES:
            raise ValueError(f"resample must be one of {', '.join(_RESAMPLE_NAMES)}: {resample!r}")
        self.resample = resample
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)

    @property
    def image_size(self) -> int:
        """The side of a square output (the height when the output is not square)."""
        return self.height

    def preprocess(self, image: Image.Image | str | Path | np.ndarray) -> np.ndarray:
        """One image (Pillow image, file path, or ``HxW``/``HxWxC`` uint8 array) -> ``[3, H, W]``."""
        import numpy as np
        from PIL import Image

        filters = {name: getattr(Image.Resampling, name.upper()) for name in _RESAMPLE_NAMES}
        resized = to_rgb(_as_pil(image)).resize(
            (self.width, self.height), resample=filters[self.resample]
        )
        # Rescaled in float64, then rounded once to float32 (as Hugging Face's image processors
        # do): the correctly rounded x / 255, where a float32 multiply would be off by an ulp.
        pixels = (np.asarray(resized, dtype=np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)
            std = np.asarray(self.image_std, dtype=np.float32)
            pixels = (pixels - mean) / std
        return pixels.transpose(2, 0, 1).astype(np.float32)

    def __call__(self, images: Any) -> np.ndarray:
        """A batch ``[N, 3, H, W]`` from one image or a sequence of images."""
        import numpy as np
        from PIL import Image

        if isinstance(images, (Image.Image, str, Path, np.ndarray)):
            images = [images]
        if not images:
            return np.zeros((0, 3, self.height, self.width), dtype=np.float32)
        return np.stack([self.preprocess(image) for image in images])

    def sample_images(self, sample: Sample, count: int | None = None) -> np.ndarray:
        """The first ``count`` (default: all) images of ``sample``, loaded safely
        (:func:`load_image`, errors name the record) and preprocessed: ``[n, 3, H, W]``."""
        paths = sample.images if count is None else sample.images[:count]
        return self([load_image(p, source=sample.source, index=sample.index) for p in paths])

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": type(self).__name__,
            "image_size": self.height if self.height == self.width else None,
            "size": {"height": self.height, "width": self.width},
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
        }

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``preprocessor_config.json`` into ``folder``; returns the file's path."""
        import json

        path = Path(folder) / PREPROCESSOR_CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, settings: dict[str, Any], **defaults: Any) -> ImagePreprocessor:
        """Settings in mixcore's or Hugging Face's form; ``defaults`` fill what they leave out."""
        size: Any = settings.get("image_size") or defaults.pop("image_size", 224)
        hf_size = settings.get("size")
        if isinstance(hf_size, dict) and "height" in hf_size and "width" in hf_size:
            size = (hf_size["height"], hf_size["width"])
        elif isinstance(hf_size, dict) and "shortest_edge" in hf_size:
            size = hf_size["shortest_edge"]
        elif isinstance(hf_size, int):
            size = hf_size
        resample = settings.get("resample", defaults.pop("resample", "bicubic"))
        if isinstance(resample, int) and 0 <= resample < len(_RESAMPLE_NAMES):
            resample = _RESAMPLE_NAMES[resample]
        return cls(
            size,
            settings.get("image_mean", defaults.pop("image_mean", CLIP_MEAN)),
            settings.get("image_std", defaults.pop("image_std", CLIP_STD)),
            resample=resample,
            rescale_factor=settings.get("rescale_factor", 1 / 255)
            if settings.get("do_rescale", True)
            else 1.0,
            do_normalize=settings.get("do_normalize", True),
        )

    @classmethod
    def from_pretrained(cls, folder: str | Path, **defaults: Any) -> ImagePreprocessor:
        """Read ``preprocessor_config.json`` from ``folder`` (through :meth:`from_dict`)."""
        from mixcore.kit.files import read_json

        settings = read_json(Path(folder) / PREPROCESSOR_CONFIG_NAME, "preprocessor config")
        return cls.from_dict(settings, **defaults)


def _as_pil(image: Any) -> Image.Image:
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    raise TypeError(f"expected a Pillow image, a path or a numpy array, got {type(image).__name__}")
