"""Image references stay inside the data folder; decoding is bounded, complete and converted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mixcore.api.errors import DataError
from mixcore.api.records import Message, Sample
from mixcore.kit.images import load_image, load_sample_images, resolve_image

SOURCE = "train.json"


def located(excinfo: pytest.ExceptionInfo[DataError], index: int = 7) -> str:
    """The error message, after checking it names the data file and the record."""
    message = str(excinfo.value)
    assert SOURCE in message
    assert f"record {index}" in message
    return message


# --- resolve_image ---------------------------------------------------------------------------


def test_relative_path_resolves_against_the_data_folder(tmp_path, write_png):
    image = write_png(tmp_path / "data" / "images" / "a.png")
    assert resolve_image(tmp_path / "data", "images/a.png", source=SOURCE, index=7) == image


def test_dotdot_that_stays_inside_is_allowed(tmp_path, write_png):
    image = write_png(tmp_path / "data" / "b.png")
    got = resolve_image(tmp_path / "data", "images/../b.png", source=SOURCE, index=7)
    assert got == image


def test_dotdot_escaping_the_data_folder_is_rejected(tmp_path, write_png):
    write_png(tmp_path / "secret.png")
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError) as excinfo:
        resolve_image(tmp_path / "data", "../secret.png", source=SOURCE, index=7)
    assert "'..'" in located(excinfo)


def test_absolute_path_outside_the_data_folder_is_rejected(tmp_path, write_png):
    outside = write_png(tmp_path / "elsewhere" / "x.png")
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError) as excinfo:
        resolve_image(tmp_path / "data", str(outside), source=SOURCE, index=7)
    assert "absolute image path" in located(excinfo)


def test_absolute_path_inside_the_data_folder_is_allowed(tmp_path, write_png):
    image = write_png(tmp_path / "data" / "x.png")
    assert resolve_image(tmp_path / "data", str(image), source=SOURCE, index=7) == image


def test_symlink_to_a_file_outside_is_rejected(tmp_path, write_png):
    outside = write_png(tmp_path / "outside.png")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link.png").symlink_to(outside)
    with pytest.raises(DataError) as excinfo:
        resolve_image(tmp_path / "data", "link.png", source=SOURCE, index=7)
    assert "symlink" in located(excinfo)


def test_symlinked_folder_pointing_outside_is_rejected(tmp_path, write_png):
    write_png(tmp_path / "outside" / "x.png")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "images").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(DataError) as excinfo:
        resolve_image(tmp_path / "data", "images/x.png", source=SOURCE, index=7)
    assert "symlink" in located(excinfo)


def test_symlink_inside_the_data_folder_is_allowed(tmp_path, write_png):
    write_png(tmp_path / "data" / "real.png")
    (tmp_path / "data" / "alias.png").symlink_to(tmp_path / "data" / "real.png")
    got = resolve_image(tmp_path / "data", "alias.png", source=SOURCE, index=7)
    assert got == tmp_path / "data" / "alias.png"


def test_dangling_symlink_is_reported(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "gone.png").symlink_to(tmp_path / "data" / "missing.png")
    with pytest.raises(DataError) as excinfo:
        resolve_image(tmp_path / "data", "gone.png", source=SOURCE, index=7)
    assert "does not exist" in located(excinfo)


def test_missing_file_is_reported_with_its_path(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError) as excinfo:
        resolve_image(tmp_path / "data", "nope.png", source=SOURCE, index=7)
    assert "not found" in located(excinfo) and "nope.png" in str(excinfo.value)


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("", "non-empty"),
        ("   ", "non-empty"),
        ("https://example.com/a.png", "URL"),
        ("images", "not a regular file"),
    ],
)
def test_unusable_references_are_rejected(tmp_path, ref, reason):
    (tmp_path / "data" / "images").mkdir(parents=True)
    with pytest.raises(DataError) as excinfo:
        resolve_image(tmp_path / "data", ref, source=SOURCE, index=7)
    assert reason in located(excinfo)


def test_allowed_roots_admit_a_sibling_image_folder(tmp_path, write_png):
    image = write_png(tmp_path / "images" / "a.png")
    (tmp_path / "annotations").mkdir()
    got = resolve_image(
        tmp_path / "annotations",
        "../images/a.png",
        source=SOURCE,
        index=7,
        allowed_roots=[tmp_path / "images"],
    )
    assert got == image


# --- load_image: conversions -----------------------------------------------------------------


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def test_rgb_image_is_returned_unchanged(tmp_path, write_png):
    path = write_png(tmp_path / "a.png", color=(1, 2, 3))
    assert pixels(load_image(path, source=SOURCE, index=7))[0, 0].tolist() == [1, 2, 3]


def test_grey_image_becomes_equal_rgb_channels(tmp_path):
    path = tmp_path / "grey.png"
    Image.new("L", (2, 2), 77).save(path)
    assert pixels(load_image(path))[1, 1].tolist() == [77, 77, 77]


def test_palette_image_uses_its_palette_colours(tmp_path):
    path = tmp_path / "pal.png"
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    im.putpixel((1, 0), 1)
    im.save(path)
    assert Image.open(path).mode == "P"
    assert pixels(load_image(path))[0].tolist() == [[0, 0, 0], [200, 100, 50]]


def test_palette_transparency_is_composited_on_white(tmp_path):
    path = tmp_path / "pal_t.png"
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    im.putpixel((1, 0), 1)
    im.save(path, transparency=0)
    assert pixels(load_image(path))[0].tolist() == [[255, 255, 255], [200, 100, 50]]


def test_rgba_is_composited_on_white_not_dropped(tmp_path):
    path = tmp_path / "rgba.png"
    im = Image.new("RGBA", (3, 1))
    im.putpixel((0, 0), (255, 0, 0, 255))
    im.putpixel((1, 0), (255, 0, 0, 128))
    im.putpixel((2, 0), (0, 0, 255, 0))
    im.save(path)
    row = pixels(load_image(path))[0].astype(int)
    assert row[0].tolist() == [255, 0, 0]
    assert row[1][0] == 255 and abs(row[1][1] - 127) <= 1 and abs(row[1][2] - 127) <= 1
    assert row[2].tolist() == [255, 255, 255]


def test_grey_with_alpha_is_composited_on_white(tmp_path):
    path = tmp_path / "la.png"
    Image.new("LA", (1, 1), (0, 0)).save(path)
    assert pixels(load_image(path))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_is_converted_to_rgb(tmp_path, suffix):
    path = tmp_path / f"cmyk{suffix}"
    im = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    im.save(path, quality=100) if suffix == ".jpg" else im.save(path)
    assert Image.open(path).mode == "CMYK"
    red = pixels(load_image(path))[4, 4].astype(int)
    assert red[0] >= 250 and red[1] <= 5 and red[2] <= 5


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    values = np.array([[0, 1000, 25700, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    row = pixels(load_image(path))[0]
    assert row[:, 0].tolist() == [0, 4, 100, 255]
    assert (row[:, 0] == row[:, 1]).all() and (row[:, 1] == row[:, 2]).all()


def test_big_endian_sixteen_bit_grey_is_scaled(tmp_path):
    path = tmp_path / "deep_be.tif"
    Image.fromarray(np.array([[512, 65535]], dtype=">u2")).save(path)
    assert pixels(load_image(path))[0, :, 0].tolist() == [2, 255]


def test_32_bit_integer_grey_is_scaled_as_16_bit_and_clipped(tmp_path):
    path = tmp_path / "int.tif"
    Image.fromarray(np.array([[-5, 25700, 70000]], dtype=np.int32)).save(path)
    assert Image.open(path).mode == "I"
    assert pixels(load_image(path))[0, :, 0].tolist() == [0, 100, 255]


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.new("RGB", (40, 20), (0, 0, 0)).save(path, exif=exif)
    assert load_image(path).size == (20, 40)
    assert load_image(path, exif_transpose=False).size == (40, 20)


# --- load_image: rejected files --------------------------------------------------------------


def test_header_claiming_a_huge_image_is_rejected_before_decoding(tmp_path, png_claiming_size):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming_size(50_000, 50_000))
    with pytest.raises(DataError) as excinfo:
        load_image(path, source=SOURCE, index=7)
    assert "decompression bomb" in located(excinfo)
    assert "bomb.png" in str(excinfo.value)


def test_per_call_pixel_limit_rejects_larger_images(tmp_path, write_png):
    path = write_png(tmp_path / "a.png", size=20)
    assert load_image(path, max_pixels=400).size == (20, 20)
    with pytest.raises(DataError) as excinfo:
        load_image(path, source=SOURCE, index=7, max_pixels=399)
    assert "exceeds the limit of 399" in located(excinfo)


@pytest.mark.parametrize("side", [12, 30])
def test_pillow_bomb_warning_and_error_are_both_errors(tmp_path, write_png, monkeypatch, side):
    # 12x12 passes Pillow's limit of 100 but not twice it (a warning); 30x30 passes both (error).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = write_png(tmp_path / "a.png", size=side)
    with pytest.raises(DataError) as excinfo:
        load_image(path, source=SOURCE, index=7)
    assert "decompression bomb" in located(excinfo)


def noise_png(path: Path) -> bytes:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def test_truncated_png_is_rejected(tmp_path):
    path = tmp_path / "cut.png"
    data = noise_png(path)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as excinfo:
        load_image(path, source=SOURCE, index=7)
    message = located(excinfo)
    assert "cut.png" in message and "\n" not in message


def test_truncated_jpeg_is_rejected(tmp_path):
    path = tmp_path / "cut.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as excinfo:
        load_image(path, source=SOURCE, index=7)
    assert "truncated" in located(excinfo)


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels")
    with pytest.raises(DataError) as excinfo:
        load_image(path, source=SOURCE, index=7)
    assert "not an image" in located(excinfo)


def test_formats_outside_the_allow_list_are_not_decoded(tmp_path):
    # Pillow would hand an EPS file to Ghostscript; the loader must refuse it outright.
    path = tmp_path / "figure.eps"
    path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(DataError) as excinfo:
        load_image(path, source=SOURCE, index=7)
    assert "supported format" in located(excinfo)


def test_missing_image_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_image(tmp_path / "gone.png", source=SOURCE, index=7)
    assert "file not found" in located(excinfo)


def test_sample_images_load_in_order_and_errors_name_the_sample(tmp_path, write_png):
    first = write_png(tmp_path / "a.png", color=(255, 0, 0))
    second = write_png(tmp_path / "b.png", color=(0, 0, 255))
    sample = Sample([Message("user", "<image><image>")], [first, second], source=SOURCE, index=7)
    loaded = load_sample_images(sample)
    assert [pixels(im)[0, 0].tolist() for im in loaded] == [[255, 0, 0], [0, 0, 255]]

    sample.images.append(tmp_path / "missing.png")
    with pytest.raises(DataError) as excinfo:
        load_sample_images(sample)
    assert "missing.png" in located(excinfo)


def test_resolver_resolves_each_reference_once_and_checks_bad_ones_every_time(tmp_path):
    from mixcore.kit.images import ImageResolver

    (tmp_path / "a.png").write_bytes(b"png")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(b"png")
    (tmp_path / "link.png").symlink_to(outside)
    resolve = ImageResolver()
    first = resolve(tmp_path, "a.png", source="d.json", index=0)
    (tmp_path / "a.png").unlink()  # a second record naming it is not checked again
    assert resolve(tmp_path, "a.png", source="d.json", index=1) == first
    for index in (2, 3):  # refused for every record that names it, with that record
        with pytest.raises(DataError) as caught:
            resolve(tmp_path, "link.png", source="d.json", index=index)
        assert caught.value.index == index and "outside" in caught.value.reason
    with pytest.raises(DataError, match="not found"):
        ImageResolver()(tmp_path, "a.png")
