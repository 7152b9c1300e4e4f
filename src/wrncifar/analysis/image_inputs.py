"""Your own images, read into the shape a checkpoint's network takes: uint8 N×3×S×S tensors (S = 32 for CIFAR).

What `predict.py input=…` reads:
- an image file PIL can open (PNG, JPEG, BMP, GIF, TIFF, WebP, …);
- a folder: every file in it and its subfolders (hidden ones skipped), in sorted order, named by its path in the
  folder; a file that cannot be read is reported with its reason and the others still run;
- a `.npz` file with uint8 images N×H×W×3 (NHWC, RGB) under the key `images` (or `data`, the key of this project's
  own array export), and optionally their names, N strings (or UTF-8 bytes), under `names`.

Every image is made RGB and fitted to S×S: its shorter side resized to S (bilinear, antialiased), then the centre
S×S cut out, so nothing is stretched; an S×S image is left as it is. Colour modes: grayscale (L, 1) and palette
images are converted to RGB by PIL; 16-bit, 32-bit and float grayscale (I;16, I, F: 16-bit PNGs, scientific TIFFs)
are first scaled to 8 bits, as `to_8_bit` describes; an alpha channel (RGBA, LA, a palette with transparency) is
composited onto white, as an image viewer shows it; CMYK and YCbCr are converted; a JPEG's EXIF orientation is
applied.
"""

from __future__ import annotations

import logging
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as tvf

log = logging.getLogger(__name__)

NPZ_IMAGES_KEYS = ("images", "data")
NPZ_NAMES_KEY = "names"
# Modes PIL converts to RGB as they are; those with an alpha channel are composited onto white instead.
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Grayscale deeper than 8 bits: PIL's convert("RGB") clips their values to 0–255 (a 16-bit image comes out white).
DEEP_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageInputError(ValueError):
    """The input as a whole cannot be used: missing, an empty folder, a malformed .npz, or no readable image."""


@dataclass
class ImageInputs:
    """Images read from one input, in order, with the problems of those that could not be read.

    Attributes:
        names: one per image: its path relative to the input folder, the file's own name, or the .npz name.
        images: uint8 N×3×S×S.
        problems: one message per file skipped (`<file>: <why>`).
        conversions: how many images of each colour mode were converted to RGB (mode → count).
    """

    names: list[str]
    images: torch.Tensor
    problems: list[str] = field(default_factory=list)
    conversions: Counter = field(default_factory=Counter)


def read_images(path: Path, size: int) -> ImageInputs:
    """The images at `path` (an image file, a folder of them, or a .npz), each fitted to `size`×`size`.

    Raises ImageInputError when `path` does not exist, is an empty folder, a .npz that is not as described in the
    module docstring, or when not a single image could be read (every file's problem is in the message).
    """
    if not path.exists():
        raise ImageInputError(f"input={path} does not exist: pass an image file, a folder of images or a .npz file")
    if path.is_file() and path.suffix.lower() == ".npz":
        return read_npz(path, size)
    if path.is_dir():
        files = sorted(folder_files(path))
        if not files:
            raise ImageInputError(f"input={path} is an empty folder: there are no images to predict")
        named = [(f.relative_to(path).as_posix(), f) for f in files]
    else:
        named = [(path.name, path)]
    names, images, problems, conversions = [], [], [], Counter()
    for name, file in named:
        try:
            image, mode = read_image_file(file)
        except ImageInputError as err:
            problems.append(f"{name}: {err}")
            log.warning("Skipped %s: %s", name, err)
            continue
        if mode != "RGB":
            conversions[mode] += 1
        names.append(name)
        images.append(fit_to_square(image, size))
    if not images:
        listed = "; ".join(problems[:10]) + (f"; … ({len(problems)} in all)" if len(problems) > 10 else "")
        raise ImageInputError(f"input={path}: no image could be read ({listed})")
    return ImageInputs(names, torch.stack(images), problems, conversions)


def folder_files(folder: Path) -> Iterator[Path]:
    """Every file under `folder`, skipping hidden files and folders (`.DS_Store`, `.ipynb_checkpoints/`)."""
    for file in folder.rglob("*"):
        relative = file.relative_to(folder)
        if file.is_file() and not any(part.startswith(".") for part in relative.parts):
            yield file


def read_image_file(path: Path) -> tuple[torch.Tensor, str]:
    """The image in `path` as uint8 3×H×W RGB, and the colour mode it had; ImageInputError saying why it cannot be
    read (not an image, truncated or corrupt, too large)."""
    try:
        with Image.open(path) as opened:
            opened.load()  # decodes now: a truncated file fails here, not later
            image = ImageOps.exif_transpose(opened)
            mode = opened.mode
            rgb = as_rgb(image)
    except Image.DecompressionBombError as err:
        raise ImageInputError(f"too large to decode safely ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageInputError("not an image PIL can read (unknown or damaged format)") from err
    # PIL reports truncated and corrupt data as OSError, some decoders as SyntaxError or ValueError.
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageInputError(f"a damaged or truncated image ({type(err).__name__}: {err})") from err
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous(), mode


def as_rgb(image: Image.Image) -> Image.Image:
    """`image` in RGB: an alpha channel composited onto white, deep grayscale scaled to 8 bits (`to_8_bit`), any
    other mode converted by PIL."""
    if image.mode in DEEP_GRAY_MODES:
        image = to_8_bit(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def to_8_bit(image: Image.Image) -> Image.Image:
    """A grayscale image of a `DEEP_GRAY_MODES` mode as 8-bit grayscale (L), its values scaled linearly from:

    - I;16 (I;16B, I;16L, I;16N): 0–65535, the full 16-bit range (65535 → 255);
    - I (32-bit integers): 0–65535 when every value lies in it (older Pillow versions open a 16-bit PNG as I), otherwise
      the image's own minimum–maximum;
    - F (floats): 0–1 when every value lies in it (the usual convention of float images), otherwise the image's own
      minimum–maximum (values in arbitrary units, as a depth map's); NaN and ±inf read as 0.

    A constant image outside those ranges comes out black.
    """
    values = np.asarray(image, dtype=np.float64)
    values = np.where(np.isfinite(values), values, 0.0)
    low, high = 0.0, 1.0 if image.mode == "F" else 65535.0
    if not image.mode.startswith("I;16") and (values.min() < low or values.max() > high):
        low, high = values.min(), values.max()
    scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.rint(scaled).clip(0, 255).astype(np.uint8))


def fit_to_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 3×H×W → 3×`size`×`size`: the shorter side resized to `size` (bilinear, antialiased, as torchvision's
    Resize), then the centre cut out. A `size`×`size` image is returned unchanged."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    resized = tvf.resize(image, [size], interpolation=tvf.InterpolationMode.BILINEAR, antialias=True)
    return tvf.center_crop(resized, [size, size])


def read_npz(path: Path, size: int) -> ImageInputs:
    """The images of a .npz file (see the module docstring); ImageInputError naming what is wrong with it."""
    if not zipfile.is_zipfile(path):
        raise ImageInputError(f"input={path} is not a .npz file (not a zip archive): write it with np.savez")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            key = next((k for k in NPZ_IMAGES_KEYS if k in keys), None)
            images = npz[key] if key else None
            names = npz[NPZ_NAMES_KEY] if NPZ_NAMES_KEY in keys else None
    # A damaged zip, a file that is not one, or arrays of Python objects (refused: loading them would unpickle).
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        raise ImageInputError(f"input={path} cannot be read as a .npz file ({type(err).__name__}: {err})") from err
    if images is None:
        raise ImageInputError(
            f"input={path} has no array 'images' (it has: {', '.join(keys) or 'nothing'}): save the images as "
            "np.savez(path, images=<uint8 N×H×W×3>, names=<N strings, optional>)"
        )
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ImageInputError(
            f"input={path}: '{key}' is {images.dtype} {list(images.shape)}; expected uint8 images N×H×W×3 "
            "(RGB, 0–255, channels last as CIFAR's arrays)"
        )
    if len(images) == 0:
        raise ImageInputError(f"input={path}: '{key}' holds no images")
    if 0 in images.shape[1:3]:  # nothing to resize: torchvision's resize would divide by zero
        raise ImageInputError(
            f"input={path}: '{key}' is {images.dtype} {list(images.shape)}, images of no pixels; expected uint8 "
            "images N×H×W×3 of at least 1×1 pixels"
        )
    if names is not None and (names.ndim != 1 or len(names) != len(images)):
        raise ImageInputError(
            f"input={path}: 'names' has shape {list(names.shape)}, expected one name per image ({len(images)})"
        )
    labels = npz_names(names, path) if names is not None else [f"{path.name}[{i}]" for i in range(len(images))]
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if tuple(tensor.shape[-2:]) != (size, size):
        tensor = torch.stack([fit_to_square(image, size) for image in tensor])
    return ImageInputs(labels, tensor.contiguous())


def npz_names(names: np.ndarray, path: Path) -> list[str]:
    """The names of a .npz as text: strings as they are, bytes (`np.array([b"cat.png"])`, what h5py's fixed-length
    strings read as) decoded as UTF-8; ImageInputError for names of another type or bytes that are not UTF-8."""
    if names.dtype.kind == "U":
        return names.tolist()
    if names.dtype.kind != "S":
        raise ImageInputError(
            f"input={path}: 'names' is {names.dtype}, expected N strings: save them as np.array(['cat.png', …])"
        )
    labels = []
    for i, name in enumerate(names.tolist()):
        try:
            labels.append(name.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ImageInputError(
                f"input={path}: 'names'[{i}] is {name!r}, bytes that are not UTF-8 text: save the names as "
                "strings (np.array(['cat.png', …])) or as UTF-8 bytes"
            ) from err
    return labels
