"""Images: the kind of input of ``Digits``, torchvision's MNIST-style data sets and image folders.

Raw inputs are float tensors (C, H, W) in [0, 1] at the trained size; the model takes them standardised per
channel. The spec's ``inputs`` hold ``input_shape`` ([channels, height, width]), the per-channel ``mean``
and ``std`` and the ``background`` transparent images are composited on. A request sends image files
(multipart) or base64 text (``"images"``).

Files are decoded by one function, ``decode_image`` (PIL), in training (an image folder's ``load_image``, the
loader its torchvision ``ImageFolder`` is given), predict and serve alike: a phone's EXIF orientation applied,
16-bit images scaled to 8 bits (value / 257, not clipped), transparency composited on the background (so
ink drawn in the alpha channel survives), palette, CMYK and other modes converted, then resized as training
did. Training and predict take the same files (``IMAGE_SUFFIXES``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from trainlab.dataloader.base import Normalization
from trainlab.dataloader.kinds import InputKind, Read
from trainlab.dataloader.spec import Standardize
from trainlab.dataloader.tensors import Splits, StandardizedData
from trainlab.errors import DataError, TooLarge

if TYPE_CHECKING:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    from trainlab.dataloader.spec import InputSpec

# the files read as images, in training (ImageFolder's ``extensions``) and predict alike
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # grey modes of 16-bit files (PNG, TIFF)
ORIENTATION = 0x0112  # EXIF's orientation tag: how a camera held sideways stored the pixels
TURNED = {5, 6, 7, 8}  # orientations that swap width and height


class ImageKind(InputKind):
    name = "image"
    description = "images"
    files = "an image, a folder of images or a folder of class folders"
    request_field = "images"
    request_type = str
    request_description = "base64-encoded image files (PNG, JPEG...)"
    file_uploads = True

    def preprocessing(self) -> nn.Module:
        channels = self.spec.inputs["input_shape"][0]
        mean, std = (torch.tensor(self.spec.inputs[key]).view(channels, 1, 1) for key in ("mean", "std"))
        return Standardize(mean, std)

    def example(self, n: int, seed: int = 0) -> torch.Tensor:
        return torch.rand(n, *self.spec.inputs["input_shape"], generator=torch.Generator().manual_seed(seed))

    def read(self, path: Path) -> Read:
        return read_images(self.spec, path)

    def summary(self) -> str:
        return "x".join(map(str, self.spec.inputs["input_shape"])) + " images"

    def request_schema(self) -> dict[str, Any]:
        return {"description": self.request_description, "items": {"type": "string", "format": "byte"}}

    def from_files(self, files: list[tuple[str, bytes]], max_pixels: int | None = None) -> torch.Tensor:
        shape, background = self.spec.inputs["input_shape"], background_of(self.spec)
        return read_image_files([(name, io.BytesIO(data)) for name, data in files], shape, max_pixels, background)

    def from_request(self, values: list[Any], max_pixels: int | None = None) -> torch.Tensor:
        files = [(f"images[{i}]", decode_base64(i, text)) for i, text in enumerate(values)]
        return self.from_files(files, max_pixels)


def decode_base64(index: int, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise DataError(f"images[{index}] is not base64 text; encode the image file's bytes") from None


def background_of(spec: InputSpec) -> str:
    """The colour a model's transparent images are composited on (white for a spec that names none)."""
    return spec.inputs.get("background", "white")


class ImageData(StandardizedData):
    """Images as (N, C, H, W) float tensors in [0, 1], always a multiclass task.

    Args:
        mean, std: per channel (used where ``normalize`` is true); null: what a pretrained model expects
            (``setup(normalization)``, where it has as many channels), else fitted on the training split.
    """

    kind = ImageKind
    background = "white"  # what transparent image files are composited on (``dataset.background``)

    def __init__(self, *, mean: Sequence[float] | None, std: Sequence[float] | None, **settings):
        super().__init__(task="multiclass", **settings)
        self.mean_setting, self.std_setting = mean, std

    def fit_preprocessing(self, splits: Splits, normalization: Normalization | None) -> None:
        self.mean, self.std = self.choose_normalization(normalization, lambda: self.fitted_statistics([0, 2, 3]))

    def input_fields(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "background": self.background,
        }

    def show(self, samples: list[torch.Tensor], captions: list[str]) -> Image.Image:
        from trainlab.visuals import labelled_grid

        return labelled_grid(self.untransform(torch.stack(samples)), captions)

    def choose_normalization(
        self, pretrained: Normalization | None, fit: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel (mean, std), shaped (C, 1, 1): none (0 and 1) where ``normalize`` is false; else
        ``dataset.mean``/``std`` where given; else what a ``pretrained`` model expects, if it is for this
        many channels; else ``fit()``: statistics of the training split."""
        channels = self.input_shape[0]
        shape = (channels, 1, 1)
        if not self.normalize:
            return torch.zeros(shape), torch.ones(shape)
        for name, values in (("mean", self.mean_setting), ("std", self.std_setting)):
            if values is not None and len(values) != channels:
                raise DataError(
                    f"dataset.{name} has {len(values)} values for {channels}-channel images; give {channels}, "
                    "or null to fit it on the training split"
                )
        mean, std = self.mean_setting, self.std_setting
        if mean is None or std is None:
            default = pretrained if pretrained is not None and len(pretrained[0]) == channels else fit()
            mean = default[0] if mean is None else mean
            std = default[1] if std is None else std
        return torch.as_tensor(mean).float().reshape(shape), torch.as_tensor(std).float().reshape(shape)


def image_transform(input_shape: Sequence[int], to_float: bool = True) -> Callable[[Any], torch.Tensor]:
    """PIL image -> (C, H, W) float tensor in [0, 1]: resized to the trained size, grey if 1 channel; with
    ``to_float=False`` its uint8 pixels (what a decoded image folder keeps). A picklable function (DataLoader
    workers get it)."""
    return functools.partial(_to_tensor, tuple(input_shape), to_float)


def _to_tensor(input_shape: tuple[int, int, int], to_float: bool, image) -> torch.Tensor:
    """What torchvision's ``resize`` (bilinear), ``rgb_to_grayscale``, ``pil_to_tensor`` and ``to_dtype(scale=True)``
    make of a PIL image, bit for bit, in plain PIL and numpy calls: at a server's small images their
    dispatch and torch's per-call cost were most of the time (a 28x28 grey image: 56 us then, 14 now)."""
    from PIL import Image

    channels, height, width = input_shape
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    if channels == 1 and image.mode != "L":  # images are read as RGB (grey files as they are: decode_image)
        image = image.convert("L")
    pixels = np.asarray(image).reshape(height, width, -1).transpose(2, 0, 1)  # a read-only view
    if to_float:  # uint8 to float32, then times 1 / 255 in float32: torch's arithmetic, in numpy
        return torch.from_numpy(np.multiply(pixels, 1 / 255, dtype=np.float32))
    return torch.from_numpy(pixels.copy())


def image_files(path: Path) -> list[Path]:
    """``path`` itself, or the image files in the folder ``path`` in name order."""
    files = sorted(p for p in path.iterdir() if is_image_file(p.name)) if path.is_dir() else [path]
    if not files:
        raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    return files


def is_image_file(path: str) -> bool:
    """Whether a file is read as an image (``IMAGE_SUFFIXES``), in training and predict alike."""
    return path.lower().endswith(IMAGE_SUFFIXES)


def read_class_folders(
    folder: Path, input_shape: Sequence[int], to_float: bool = True, background: str = "white"
) -> ImageFolder:
    """torchvision's ImageFolder of ``folder/<class>/<image>``: the files ``IMAGE_SUFFIXES`` names, each
    decoded by ``load_image`` (a file that cannot be: ``DataError``), or a one-line error."""
    from torchvision.datasets import ImageFolder

    loader = functools.partial(load_image, tuple(input_shape), to_float, background)
    try:
        return ImageFolder(str(folder), loader=loader, is_valid_file=is_image_file)
    except (FileNotFoundError, OSError) as error:
        raise DataError(
            f"{folder}: {error}; expected one sub-folder of images per class (root/<class>/<image>), "
            "optionally under root/train, root/val, root/test"
        ) from None


def load_image(input_shape: tuple[int, int, int], to_float: bool, background: str, path: str) -> torch.Tensor:
    """One image file as ``decode_image`` makes it (uint8 pixels where not ``to_float``), within Pillow's
    pixel limit: the loader of an image folder (picklable: DataLoader workers get it)."""
    return read_image(Path(path), input_shape, path, background, to_float)


def open_image(
    source: Path | IO[bytes], input_shape: Sequence[int], name: str | None = None, max_pixels: int | None = None
):
    """An image file opened but not decoded: PIL reads only its header (size, mode). A JPEG is set to decode
    at the smallest power-of-two reduction (1/2 to 1/8) still at least the model's size (``Image.draft``:
    the JPEG decoder scales while decoding, so a 12 MP photo for a 224x224 model decodes 64x fewer pixels);
    ``image.size`` is the size it will decode to. A file that is no image is a ``DataError``, one of more than
    ``max_pixels`` pixels (or PIL's limit for decompression bombs) ``TooLarge``."""
    from PIL import Image, UnidentifiedImageError

    name = name or str(source)
    try:
        image = Image.open(source)
    except UnidentifiedImageError:
        empty = isinstance(source, Path) and source.stat().st_size == 0
        raise DataError(
            f"{name} is not an image ({'an empty file' if empty else 'no format PIL reads'})"
        ) from None
    except Image.DecompressionBombError as error:  # PIL's own limit, checked as it opens the file
        raise TooLarge(f"{name} is too large to decode ({error})") from None
    except (OSError, ValueError, SyntaxError) as error:  # a header PIL knows but cannot read
        raise DataError(f"{name} is not a readable image ({error})") from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        image.close()
        raise TooLarge(f"{name} is too large to decode: {width}x{height} pixels, over the limit of {max_pixels:,}")
    wanted = (input_shape[2], input_shape[1])
    if image.format == "JPEG" and orientation(image) in TURNED:  # decoded sideways, turned upright after
        wanted = wanted[::-1]
    image.draft(None, wanted)  # a no-op but for JPEGs
    return image


def orientation(image) -> int:
    """The EXIF orientation of an opened image (1: upright). Only a file with EXIF data has one (a PNG's may
    follow its pixels: it is loaded first), so a server's small PNGs pay no EXIF parsing."""
    if image.format != "TIFF":  # a TIFF's orientation is one of its own tags
        if image.format == "PNG":
            image.load()
        if "exif" not in image.info:
            return 1
    return image.getexif().get(ORIENTATION, 1)


def decode_image(
    image, input_shape: Sequence[int], name: str, background: str = "white", to_float: bool = True
) -> torch.Tensor:
    """An image from ``open_image`` decoded as the model's raw input (C, H, W) in [0, 1] (uint8 pixels where
    not ``to_float``): upright as its EXIF orientation says, 16-bit grey scaled to 8 bits, transparency
    composited on ``background``, any mode converted. A truncated or corrupt file is a ``DataError``."""
    from PIL import Image, ImageOps

    try:
        if orientation(image) != 1:
            image = ImageOps.exif_transpose(image)
        if image.mode in SIXTEEN_BIT:  # PIL's own conversion clips at 255: 16-bit values scaled instead
            image = Image.fromarray(np.round(np.asarray(image, np.float32) / 257).clip(0, 255).astype(np.uint8))
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
            canvas = Image.new("RGBA", image.size, background)
            image = Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
        # grey files for a 1-channel model straight to grey: the pixels of the RGB round trip, a quarter the memory
        mode = "L" if input_shape[0] == 1 and image.mode in ("1", "L") else "RGB"
        return image_transform(input_shape, to_float)(image if image.mode == mode else image.convert(mode))
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:  # PIL's errors
        raise DataError(f"{name} is not a readable image ({error})") from None


def read_image(
    path: Path | IO[bytes],
    input_shape: Sequence[int],
    name: str | None = None,
    background: str = "white",
    to_float: bool = True,
) -> torch.Tensor:
    """One image file (or file object, ``name`` saying which) as the model's raw input (C, H, W) in [0, 1]
    (uint8 pixels where not ``to_float``), within Pillow's pixel limit. A file that is no image, or a
    truncated or oversized one, is a ``DataError``."""
    from PIL import Image

    with open_image(path, input_shape, name, Image.MAX_IMAGE_PIXELS) as image:
        return decode_image(image, input_shape, name or str(path), background, to_float)


def read_image_files(
    files: Sequence[tuple[str, IO[bytes]]],
    input_shape: Sequence[int],
    max_pixels: int | None,
    background: str = "white",
) -> torch.Tensor:
    """Image files (a server's uploads: ``(name, file)``) as raw inputs (N, C, H, W), decoding at most
    ``max_pixels`` pixels in all: every header is read first, and files that would decode to more together
    are ``TooLarge``, naming their sizes, before any pixel is decoded. The cost of decoding (time and
    memory) grows with the pixels decoded, not with the bytes sent: a 17 KB PNG can hold 144 MP."""
    with contextlib.ExitStack() as opened:
        images = [opened.enter_context(open_image(file, input_shape, name)) for name, file in files]
        sizes = [image.size for image in images]
        total = sum(width * height for width, height in sizes)
        if max_pixels is not None and total > max_pixels:
            largest = max(range(len(sizes)), key=lambda i: sizes[i][0] * sizes[i][1])
            width, height = sizes[largest]
            which = f"{files[largest][0]} decodes to {width}x{height} pixels ({width * height / 1e6:.1f} MP)"
            if len(files) > 1:
                which = f"the {len(files)} images decode to {total / 1e6:.1f} MP in all (the largest, {which})"
            raise TooLarge(
                f"{which}, over the limit of {max_pixels / 1e6:g} MP per request (max_pixels); "
                "send smaller images, or fewer per request"
            )
        return torch.stack(
            [
                decode_image(image, input_shape, name, background)
                for image, (name, _) in zip(images, files, strict=True)
            ]
        )


def read_images(spec: InputSpec, path: Path) -> Read:
    """An image, a folder of images, or a folder of class folders (then the labels come along); every file
    decoded by ``decode_image``, the first that cannot be a one-line ``DataError``."""
    input_shape, background = spec.inputs["input_shape"], background_of(spec)
    if path.is_dir() and any(p.is_dir() for p in path.iterdir()):
        folder = read_class_folders(path, input_shape, background=background)
        unknown = sorted(set(folder.classes) - set(spec.class_names))
        if unknown:
            raise DataError(
                f"{path}: class folders {unknown} are not among the training classes {spec.class_names}"
            )
        labels = torch.tensor([spec.class_names.index(folder.classes[t]) for t in folder.targets])
        images = torch.stack([folder.loader(p) for p, _ in folder.samples])
        return Read([p for p, _ in folder.samples], images, labels)
    files = image_files(path)
    return Read(
        [str(f) for f in files], torch.stack([read_image(f, input_shape, background=background) for f in files])
    )
