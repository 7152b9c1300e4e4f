"""Reading your own images: files, folders and .npz arrays, fitted to 32×32 RGB, with one message per bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wrncifar.analysis.image_inputs import (
    ImageInputError,
    fit_to_square,
    read_image_file,
    read_images,
)

RNG = np.random.default_rng(0)


def rgb(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs) -> Path:
    Image.fromarray(array, mode).save(path, **kwargs)
    return path


def test_a_32x32_png_is_read_exactly_as_its_pixels(tmp_path: Path) -> None:
    pixels = rgb(32, 32)
    image, mode = read_image_file(save(tmp_path / "a.png", pixels))
    assert mode == "RGB" and image.dtype == torch.uint8
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1))


@pytest.mark.parametrize(("height", "width"), [(1, 1), (17, 300), (300, 17), (480, 640), (33, 32), (64, 64)])
def test_any_size_becomes_32x32(height: int, width: int) -> None:
    image = torch.from_numpy(rgb(height, width)).permute(2, 0, 1)
    assert fit_to_square(image, 32).shape == (3, 32, 32)


def test_the_centre_is_cut_out_of_a_wide_image_not_squeezed_into_it() -> None:
    # Three 32×32 tiles side by side: the shorter side is already 32, so the result is exactly the middle tile.
    tiles = [torch.from_numpy(rgb(32, 32)).permute(2, 0, 1) for _ in range(3)]
    assert torch.equal(fit_to_square(torch.cat(tiles, dim=2), 32), tiles[1])
    # Black | white | black quarters of a 64×128 image: resized to 32×64 and centre-cropped it is white throughout;
    # squeezed whole into 32×32 it would keep black edges.
    image = torch.zeros(3, 64, 128, dtype=torch.uint8)
    image[:, :, 32:96] = 255
    fitted = fit_to_square(image, 32)
    assert fitted[:, :, 1:-1].min() == 255 and fitted.float().mean() > 250


def test_the_resize_matches_pil_bilinear_downscaling() -> None:
    """The shorter side is resized as PIL's (antialiased) bilinear filter does, to within rounding."""
    pixels = rgb(96, 96)
    ours = fit_to_square(torch.from_numpy(pixels).permute(2, 0, 1), 32)
    pil = np.array(Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR))
    assert (ours.permute(1, 2, 0).int() - torch.from_numpy(pil).int()).abs().max() <= 1


def test_grayscale_palette_and_cmyk_images_become_rgb(tmp_path: Path) -> None:
    gray = RNG.integers(0, 256, size=(20, 30), dtype=np.uint8)
    image, mode = read_image_file(save(tmp_path / "gray.png", gray, "L"))
    assert mode == "L" and image.shape == (3, 20, 30)
    assert all(torch.equal(image[c], torch.from_numpy(gray)) for c in range(3))

    palette = Image.fromarray(rgb(16, 16)).convert("P")
    palette.save(tmp_path / "palette.png")
    image, mode = read_image_file(tmp_path / "palette.png")
    assert mode == "P" and torch.equal(image, torch.from_numpy(np.array(palette.convert("RGB"))).permute(2, 0, 1))

    Image.fromarray(rgb(16, 16)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    image, mode = read_image_file(tmp_path / "cmyk.jpg")
    assert mode == "CMYK" and image.shape == (3, 16, 16)


def test_a_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 32).round().astype(np.uint16), (32, 1))  # each row 0 … 65535
    Image.fromarray(ramp).save(tmp_path / "depth16.png")
    inputs = read_images(tmp_path / "depth16.png", 32)
    assert dict(inputs.conversions) == {"I;16": 1}
    image = inputs.images[0]
    assert all(torch.equal(image[c], image[0]) for c in range(3))
    row = image[0, 0].int()
    assert row[0] == 0 and row[-1] == 255 and bool((row.diff() > 0).all()), row.tolist()
    assert torch.equal(image[0], torch.from_numpy(np.rint(ramp / 257).astype(np.uint8)))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([0, 257, 32896, 65535], np.int32), [0, 1, 128, 255]),  # fits 16 bits: that range
        (np.array([-100, 0, 100, 155], np.int32), [0, 100, 200, 255]),  # does not: its own min–max
        (np.array([0.0, 0.5, 1.0, 0.25], np.float32), [0, 128, 255, 64]),  # floats in 0–1: that range
        (np.array([-1.0, 0.0, 3.0, np.nan], np.float32), [0, 64, 255, 64]),  # otherwise min–max, NaN as 0
    ],
    ids=["I 16-bit", "I other", "F 0-1", "F other"],
)
def test_32_bit_and_float_grayscale_are_scaled_to_8_bits(tmp_path: Path, values: np.ndarray, expected: list) -> None:
    Image.fromarray(values.reshape(1, 4)).save(tmp_path / "deep.tif")
    image, mode = read_image_file(tmp_path / "deep.tif")
    assert mode == ("F" if values.dtype == np.float32 else "I")
    assert image[:, 0].tolist() == [expected] * 3


def test_transparent_pixels_are_composited_onto_white(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:4, :, 3] = 255  # top half opaque, bottom half fully transparent
    image, mode = read_image_file(save(tmp_path / "rgba.png", rgba, "RGBA"))
    assert mode == "RGBA"
    assert image[:, :4].reshape(3, -1).T.unique(dim=0).tolist() == [[10, 20, 30]]
    assert image[:, 4:].min() == 255
    gray_alpha = np.stack([np.full((4, 4), 100, np.uint8), np.zeros((4, 4), np.uint8)], axis=-1)
    image, mode = read_image_file(save(tmp_path / "la.png", gray_alpha, "LA"))
    assert mode == "LA" and image.min() == 255


def test_a_jpegs_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    path = save(tmp_path / "phone.jpg", rgb(20, 40), exif=exif.tobytes())
    image, _ = read_image_file(path)
    assert image.shape == (3, 40, 20), "shown upright, as a viewer shows it"


def test_a_folder_is_read_recursively_in_order_and_bad_files_are_named_but_skipped(tmp_path: Path) -> None:
    save(tmp_path / "b.jpg", rgb(100, 60))
    save(tmp_path / "a.png", rgb(32, 32))
    (tmp_path / "sub").mkdir()
    save(tmp_path / "sub" / "c.png", rgb(40, 50)[..., 0], "L")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes((tmp_path / "a.png").read_bytes()[:80])
    (tmp_path / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / ".hidden").mkdir()
    save(tmp_path / ".hidden" / "x.png", rgb(8, 8))

    inputs = read_images(tmp_path, 32)
    assert inputs.names == ["a.png", "b.jpg", "sub/c.png"]
    assert inputs.images.shape == (3, 3, 32, 32) and inputs.images.dtype == torch.uint8
    assert inputs.problems == [
        "broken.png: a damaged or truncated image (OSError: image file is truncated)",
        "notes.txt: not an image PIL can read (unknown or damaged format)",
    ]
    assert dict(inputs.conversions) == {"L": 1}


def test_a_single_file_is_read_under_its_own_name(tmp_path: Path) -> None:
    inputs = read_images(save(tmp_path / "cat.jpeg", rgb(64, 48)), 32)
    assert inputs.names == ["cat.jpeg"] and inputs.images.shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "does not exist: pass an image file, a folder of images or a .npz file"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "is an empty folder: there are no images to predict"),
        (lambda p: (p / "x.txt").write_text("text") and p / "x.txt", r"no image could be read \(x.txt: not an image"),
    ],
    ids=["missing", "empty folder", "nothing readable"],
)
def test_an_input_without_a_single_image_is_one_error(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(ImageInputError, match=message):
        read_images(make(tmp_path), 32)


def test_a_folder_of_only_unreadable_files_names_each_of_them(tmp_path: Path) -> None:
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(ImageInputError, match=r"no image could be read \(a\.png: .*; b\.jpg: "):
        read_images(tmp_path, 32)


def test_an_npz_of_images_with_names(tmp_path: Path) -> None:
    images = np.stack([rgb(32, 32) for _ in range(4)])
    np.savez(tmp_path / "x.npz", images=images, names=np.array(["w", "x", "y", "z"]))
    inputs = read_images(tmp_path / "x.npz", 32)
    assert inputs.names == ["w", "x", "y", "z"]
    assert torch.equal(inputs.images, torch.from_numpy(images).permute(0, 3, 1, 2))


def test_names_saved_as_bytes_are_read_as_text(tmp_path: Path) -> None:
    names = np.array(["cat.png", "chat noir.png", "猫.png"])
    np.savez(tmp_path / "x.npz", images=np.stack([rgb(8, 8) for _ in range(3)]), names=np.char.encode(names, "utf-8"))
    assert read_images(tmp_path / "x.npz", 32).names == ["cat.png", "chat noir.png", "猫.png"]


def test_an_npz_without_names_and_of_another_size(tmp_path: Path) -> None:
    np.savez(tmp_path / "big.npz", data=np.stack([rgb(64, 96) for _ in range(2)]))  # `data`: the array export's key
    inputs = read_images(tmp_path / "big.npz", 32)
    assert inputs.names == ["big.npz[0]", "big.npz[1]"] and inputs.images.shape == (2, 3, 32, 32)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pics": np.zeros((2, 32, 32, 3), np.uint8)}, r"has no array 'images' \(it has: pics\)"),
        ({"images": np.zeros((2, 32, 32, 3), np.float32)}, r"'images' is float32 \[2, 32, 32, 3\]; expected uint8"),
        ({"images": np.zeros((2, 3, 32, 32), np.uint8)}, r"is uint8 \[2, 3, 32, 32\]; expected uint8 images N×H×W×3"),
        ({"images": np.zeros((0, 32, 32, 3), np.uint8)}, "holds no images"),
        (
            {"images": np.zeros((2, 32, 32, 3), np.uint8), "names": np.array(["a"])},
            r"'names' has shape \[1\], expected one name per image \(2\)",
        ),
        ({"images": np.zeros((2, 0, 5, 3), np.uint8)}, r"is uint8 \[2, 0, 5, 3\], images of no pixels; expected"),
        ({"images": np.zeros((2, 5, 0, 3), np.uint8)}, r"is uint8 \[2, 5, 0, 3\], images of no pixels; expected"),
        (
            {"images": np.zeros((2, 32, 32, 3), np.uint8), "names": np.arange(2)},
            r"'names' is int64, expected N strings: save them as np\.array\(\['cat\.png', …\]\)",
        ),
        (
            {"images": np.zeros((2, 32, 32, 3), np.uint8), "names": np.array([b"ok", b"caf\xe9"])},
            r"'names'\[1\] is b'caf\\xe9', bytes that are not UTF-8 text",
        ),
        ({"images": np.array([{"code": 1}], dtype=object)}, "cannot be read as a .npz file"),
    ],
    ids=[
        "no images key",
        "float",
        "channels first",
        "empty",
        "names mismatch",
        "zero height",
        "zero width",
        "numeric names",
        "names not UTF-8",
        "pickled objects",
    ],
)
def test_a_malformed_npz_is_one_error_naming_what_is_wrong(tmp_path: Path, arrays: dict, message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ImageInputError, match=message):
        read_images(tmp_path / "bad.npz", 32)


def test_a_file_named_npz_that_is_not_one_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "fake.npz").write_bytes(b"not a zip")
    with pytest.raises(ImageInputError, match=r"is not a \.npz file \(not a zip archive\)"):
        read_images(tmp_path / "fake.npz", 32)
