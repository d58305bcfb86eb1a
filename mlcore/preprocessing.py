"""The one path from pixels to the network's input, shared by training and serving.

Every source (PNG/JPEG files, or the grayscale array that DICOM decoding produces)
is first reduced to an 8-bit grayscale array (H x W, 0 = black), then `to_model_input`
turns that array into the tensor the network sees. Training reads its images with
`load_grayscale_file` and the same `to_model_input`; augmentation happens after it.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

# The training images are 224 x 224 squashed without keeping the aspect ratio, so
# serving squashes too: the network must see anatomy with the proportions it learned.
RESAMPLE = Image.Resampling.BILINEAR
# Normalisation of [0, 1] grey values; chest radiographs average about this.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


def load_grayscale_file(source: str | Path | bytes) -> np.ndarray:
    """Decode a PNG/JPEG (path or bytes) into an 8-bit grayscale array."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(handle) as image:
        return pil_to_grayscale(image)


def pixel_sha256(gray: np.ndarray) -> str:
    """Hash of the decoded pixels and their shape: equal for the same image in any format
    (a study's `pixel_sha256`, and how retraining recognises a locked image in a review)."""
    rows, columns = gray.shape
    digest = hashlib.sha256(f"{rows}x{columns}:".encode())
    digest.update(np.ascontiguousarray(gray, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def pil_to_grayscale(image: Image.Image) -> np.ndarray:
    """Any Pillow image -> 8-bit grayscale, the same way for training files and uploads."""
    if image.mode == "L":
        return np.asarray(image, dtype=np.uint8).copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit (or wider) grayscale has no window: stretch its range, as for DICOM.
        values = np.asarray(image)
        if values.dtype.kind == "u" and values.dtype.itemsize == 2:
            return _stretch_16_bit(values.astype(np.uint16, copy=False))
        values = values.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros(values.shape, dtype=np.uint8)
        return _stretch(values, low, high)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels are shown on black, as in a viewer's dark background.
        image = image.convert("RGBA")
        if image.getchannel("A").getextrema() != (255, 255):  # an opaque alpha changes nothing
            image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image)
    return np.asarray(image.convert("RGB").convert("L"), dtype=np.uint8).copy()


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(np.rint((values - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)


def _stretch_16_bit(values: np.ndarray) -> np.ndarray:
    """The same stretch through a table of the 65,536 values: a 60-megapixel 16-bit PNG
    took 1.5 GB as float64 pixels, against one byte a pixel here."""
    low, high = int(values.min()), int(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return _stretch(np.arange(65536, dtype=np.float64), low, high)[values]


def to_model_input(gray: np.ndarray, image_size: int) -> torch.Tensor:
    """8-bit grayscale H x W -> float tensor 1 x S x S, normalised."""
    import torch  # here, so the web server can decode images without loading torch

    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 array, got {gray.dtype} with shape {gray.shape}")
    resized = Image.fromarray(gray, mode="L").resize((image_size, image_size), RESAMPLE)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    tensor = torch.from_numpy((array - PIXEL_MEAN) / PIXEL_STD)
    return tensor.unsqueeze(0)


def gray_to_png(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
