"""Image preprocessing: every Pillow mode becomes a normalised RGB square."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mixcore.kit.images import (
    CLIP_MEAN,
    CLIP_STD,
    ImagePreprocessor,
    to_rgb,
)

RED = (255, 0, 0)


def _normalised(rgb) -> np.ndarray:
    return (np.asarray(rgb, dtype=np.float32) / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(
        CLIP_STD
    )


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "CMYK", "P", "I;16", "I", "F", "1"])
def test_every_mode_gives_a_float32_rgb_square(mode: str) -> None:
    image = Image.new("RGB", (40, 24), RED).convert(mode)
    out = ImagePreprocessor(56).preprocess(image)
    assert out.shape == (3, 56, 56)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "CMYK", "P"])
def test_colour_modes_keep_the_colour(mode: str) -> None:
    out = ImagePreprocessor(28).preprocess(Image.new("RGB", (10, 10), RED).convert(mode))
    np.testing.assert_allclose(out[:, 5, 5], _normalised(RED), atol=0.02)


def test_transparency_becomes_white() -> None:
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert np.asarray(to_rgb(clear))[0, 0].tolist() == [255, 255, 255]
    half = Image.new("LA", (8, 8), (0, 128))
    assert 120 <= np.asarray(to_rgb(half))[0, 0, 0] <= 135


def test_sixteen_bit_grey_is_rescaled_not_clipped() -> None:
    levels = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    image = Image.frombytes("I;16", (4, 1), levels.tobytes())
    grey = np.asarray(to_rgb(image))[0, :, 0]
    assert grey.tolist() == [0, 64, 128, 255]
    assert np.asarray(image.convert("RGB")).max() == 255  # what a naive convert would clip to


def test_float_images_in_unit_range() -> None:
    image = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32))
    assert np.asarray(to_rgb(image))[0, 0, 0] in (127, 128)


def test_bicubic_resize_and_normalisation() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    expected = _normalised(np.asarray(image.resize((28, 28), Image.Resampling.BICUBIC)))
    out = ImagePreprocessor(28).preprocess(image)
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), atol=1e-5)


def test_batches_paths_and_arrays(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    Image.new("RGB", (9, 9), RED).save(path)
    processor = ImagePreprocessor(14)
    batch = processor([path, str(path), np.zeros((5, 5, 3), dtype=np.uint8)])
    assert batch.shape == (3, 3, 14, 14)
    np.testing.assert_array_equal(batch[0], batch[1])
    assert processor([]).shape == (0, 3, 14, 14)
    with pytest.raises(TypeError):
        processor.preprocess(42)


def test_settings_round_trip(tmp_path: Path) -> None:
    processor = ImagePreprocessor(84, image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
    written = processor.save_pretrained(tmp_path)
    assert written.name == "preprocessor_config.json"
    again = ImagePreprocessor.from_pretrained(tmp_path)
    assert again.to_dict() == processor.to_dict()


def test_hugging_face_preprocessor_config_is_read(tmp_path: Path) -> None:
    # BLIP-2's published preprocessor_config.json, as Hugging Face writes it.
    settings = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": 32, "width": 48},
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    processor = ImagePreprocessor.from_pretrained(tmp_path)
    assert (processor.height, processor.width, processor.resample) == (32, 48, "bicubic")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    out = processor.preprocess(image)
    assert out.shape == (3, 32, 48)
    expected = _normalised(np.asarray(image.resize((48, 32), Image.Resampling.BICUBIC)))
    np.testing.assert_allclose(out, expected.transpose(2, 0, 1), atol=1e-5)


def test_a_resample_filter_it_does_not_know_is_refused() -> None:
    with pytest.raises(ValueError, match="resample must be one of"):
        ImagePreprocessor(8, resample="sinc")


def test_rescaling_is_the_correctly_rounded_division_by_255() -> None:
    # A float32 multiply by 1/255 differs from x / 255 in the last bit for many pixels, enough
    # to send a sensitive training run elsewhere; the preprocessor must give x / 255 exactly.
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = Image.fromarray(np.stack([levels] * 3, axis=-1))
    out = ImagePreprocessor(16, image_mean=(0, 0, 0), image_std=(1, 1, 1)).preprocess(image)
    expected = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    np.testing.assert_array_equal(out, expected.transpose(2, 0, 1))
