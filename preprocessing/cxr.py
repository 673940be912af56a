"""Chest X-rays (DICOM, or JPG of MIMIC-CXR-JPG) into uint8 [1, S, S], 0 = black.

The display rules of DICOM, in the order the standard applies them (PS3.4 grayscale
pipeline), each in one function below:

0. refuse, from the header and before any pixel is decoded, a file or image larger than
   a radiograph can be (`check_image_size`: a 25 kB RLE file may declare 60000 x 60000);
1. decode pixels, whatever the transfer syntax (pydicom with pylibjpeg: JPEG, JPEG-LS,
   JPEG 2000, RLE); files without file meta (no preamble) are read with ``force=True`` as
   Implicit VR Little Endian;
2. Modality LUT: RescaleSlope/RescaleIntercept (or a Modality LUT Sequence);
3. VOI LUT: WindowCenter/WindowWidth (linear, linear exact or sigmoid) or a VOI LUT
   Sequence; without either, the stored-bits range maps to [0, 1];
4. MONOCHROME1 (high = black) inverted so that 0 is black for every image;
5. non-square pixels (PixelSpacing rows != columns) made square; a degenerate spacing
   (``0\\0``, as some CR writers emit) is ignored;
6. resized on the short side to S (antialiased) and centre-cropped to S x S.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from preprocessing.errors import InvalidRecord

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

DEFAULT_CXR_SIZE = 320
JPEG_SUFFIXES = {".jpg", ".jpeg", ".png"}
# Plausibility limits of one radiograph: MIMIC-CXR's largest are about 4300 x 3500 pixels.
# They bound decoding memory (40 M 16-bit pixels: 80 MB, a few copies of it in float32).
MAX_CXR_PIXELS = 40_000_000  # rows x columns x frames
MAX_CXR_FILE_BYTES = 256 * 2**20  # an uncompressed 6000 x 6000 16-bit image is 72 MB
# What decoding allocates: pixels x SamplesPerPixel x BitsAllocated / 8. A 40 M-pixel 16-bit
# grey image (80 MB) or 8-bit colour one (120 MB) passes; the same pixels as 32- or 64-bit
# colour samples would not.
MAX_CXR_DECODED_BYTES = 128 * 2**20


def check_image_size(path: Path, ds) -> None:
    """Refuse (``too_large``) an image whose header declares more than MAX_CXR_PIXELS pixels
    or MAX_CXR_DECODED_BYTES of decoded samples."""
    try:
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.get("BitsAllocated") or 8)
    except (TypeError, ValueError):
        raise InvalidRecord(
            path,
            "Rows, Columns, NumberOfFrames, SamplesPerPixel or BitsAllocated is not a number",
        ) from None
    if rows < 2 or columns < 2:
        raise InvalidRecord(path, f"image of {rows} x {columns} pixels", kind="not_an_image")
    pixels = rows * columns * max(frames, 1)
    if pixels > MAX_CXR_PIXELS:
        frames_text = f" x {frames} frames" if frames > 1 else ""
        raise InvalidRecord(
            path,
            f"header declares {rows} x {columns} pixels{frames_text}, over the "
            f"{MAX_CXR_PIXELS / 1e6:.0f} M pixels a radiograph can have",
            kind="too_large",
        )
    # Bit-packed (1-bit) pixels decode to a byte each.
    decoded = pixels * max(samples, 1) * max(-(-bits // 8), 1)
    if decoded > MAX_CXR_DECODED_BYTES:
        raise InvalidRecord(
            path,
            f"header declares {rows} x {columns} pixels of {samples} x {bits}-bit samples: "
            f"{decoded / 2**20:.0f} MB decoded, over the {MAX_CXR_DECODED_BYTES / 2**20:.0f} MB "
            "a radiograph needs",
            kind="too_large",
        )


def _read_dataset(path: Path):
    """dcmread with force=True; a missing transfer syntax means Implicit VR Little Endian."""
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian

    size = path.stat().st_size
    if size > MAX_CXR_FILE_BYTES:
        raise InvalidRecord(
            path,
            f"{size / 2**20:.0f} MB file (at most {MAX_CXR_FILE_BYTES / 2**20:.0f} MB)",
            kind="too_large",
        )
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as error:  # truncated or not DICOM at all
        raise InvalidRecord(
            path, f"not readable as DICOM ({type(error).__name__}: {error})", kind="unreadable"
        ) from None
    if "PixelData" not in ds:
        kind = "not_an_image" if "Rows" not in ds else "no_pixel_data"
        what = ds.get("Modality", "?")
        raise InvalidRecord(path, f"no pixel data (Modality {what})", kind=kind)
    check_image_size(path, ds)
    if not getattr(ds.file_meta, "TransferSyntaxUID", None):
        # No preamble and no file meta (old ACR-NEMA style files): Implicit VR LE by default.
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _stored_range(ds) -> tuple[float, float]:
    """Smallest and largest value the stored bits can hold."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0**bits - 1


def modality_lut(pixels: np.ndarray, ds: Dataset) -> tuple[np.ndarray, tuple[float, float]]:
    """Rescale stored values into modality units; returns values and their possible range."""
    low, high = _stored_range(ds)
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        values = apply_modality_lut(pixels, ds).astype(np.float32)
        lut = np.asarray(ds.ModalityLUTSequence[0].LUTData, dtype=np.float64)
        return values, (float(lut.min()), float(lut.max()))
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    # float32 holds every 16-bit stored value exactly and halves the memory traffic.
    values = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return values, (ends[0], ends[1])


def _first(value) -> float:
    """First of a possibly multi-valued DICOM number."""
    if isinstance(value, (list, tuple)) or (
        hasattr(value, "__getitem__") and not isinstance(value, (str, bytes))
    ):
        return float(value[0])
    return float(value)


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2) into [0, 1]."""
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    width = max(width, 1.0)  # the standard requires >= 1 for LINEAR
    if width == 1.0:
        return (values > center - 0.5).astype(np.float32)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def voi_lut(values: np.ndarray, ds: Dataset, value_range: tuple[float, float]) -> np.ndarray:
    """Apply the first VOI window (or VOI LUT); otherwise map the value range to [0, 1]."""
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        first_mapped = int(item.LUTDescriptor[1])
        lut = np.asarray(item.LUTData, dtype=np.float64)
        index = np.clip(np.round(values).astype(np.int64) - first_mapped, 0, lut.size - 1)
        out_bits = int(item.LUTDescriptor[2])
        return (lut[index] / (2.0**out_bits - 1)).astype(np.float32)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None and _first(width) > 0:
        return window(values, _first(center), _first(width), ds.get("VOILUTFunction", "LINEAR"))
    low, high = value_range
    return np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)


def _pixel_aspect(ds: Dataset) -> float:
    """Row spacing / column spacing; 1 when absent or degenerate (0\\0, negative, NaN)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = ds.get(keyword)
        try:
            rows, cols = float(spacing[0]), float(spacing[1])
        except (TypeError, ValueError, IndexError):
            continue
        if rows > 0 and cols > 0 and np.isfinite(rows) and np.isfinite(cols):
            return rows / cols
    return 1.0


def grey_levels(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Rules 2-4 on stored values: Modality LUT, VOI LUT, MONOCHROME1 inversion; float32 [0, 1]."""
    values, value_range = modality_lut(stored, ds)
    image = voi_lut(values, ds, value_range)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        image = 1.0 - image
    return np.asarray(image, dtype=np.float32)


def display_values(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """grey_levels for a whole image; integer images go through a lookup table.

    The rules are per-pixel functions of the stored value, so for integer pixels they are
    evaluated once per distinct level (at most 65536) and gathered: the same numbers as
    applying them to every pixel, several times faster on a 3000 x 2500 radiograph.
    """
    if pixels.dtype.kind not in "iu" or pixels.size < 4 * 65536:
        return grey_levels(pixels, ds)
    low, high = int(pixels.min()), int(pixels.max())
    if high - low > 65535:
        return grey_levels(pixels, ds)
    table = grey_levels(np.arange(low, high + 1, dtype=np.int64), ds)
    # int32: in the stored dtype, pixels - low wraps around for signed 16-bit images.
    return table[pixels.astype(np.int32) - low] if low else table[pixels]


def dicom_to_unit_image(path: str | Path) -> np.ndarray:
    """Read a DICOM X-ray into float32 [H, W] in [0, 1] with 0 = black, square pixels."""
    path = Path(path)
    ds = _read_dataset(path)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InvalidRecord(
            path, f"{ds.SamplesPerPixel} samples per pixel (greyscale expected)", kind="colour"
        )
    try:
        pixels = ds.pixel_array
    except Exception as error:  # missing decoder, truncated pixel data, bad tags
        raise InvalidRecord(
            path, f"pixel data not decodable: {error}", kind="undecodable"
        ) from None
    if pixels.ndim == 3:  # multi-frame: a radiograph has one; keep the first
        pixels = pixels[0]
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise InvalidRecord(path, f"pixel array of shape {pixels.shape}", kind="not_an_image")
    image = display_values(pixels, ds)
    aspect = _pixel_aspect(ds)
    if not np.isclose(aspect, 1.0, rtol=1e-3):
        height, width = image.shape
        image = _resize(image, (max(1, round(height * aspect)), width))
    return image


def jpeg_to_unit_image(path: str | Path) -> np.ndarray:
    """Read a JPG/PNG radiograph (MIMIC-CXR-JPG) into float32 [H, W] in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size  # from the header: nothing is decoded yet
            if width * height > MAX_CXR_PIXELS:
                raise InvalidRecord(
                    path,
                    f"header declares {height} x {width} pixels, over the "
                    f"{MAX_CXR_PIXELS / 1e6:.0f} M pixels a radiograph can have",
                    kind="too_large",
                )
            grey = np.asarray(img.convert("L"), dtype=np.float32)
    except (OSError, UnidentifiedImageError) as error:
        raise InvalidRecord(path, f"not readable as an image: {error}", kind="unreadable") from None
    return grey / 255.0


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of float32 [H, W] to shape (height, width)."""
    from PIL import Image

    resized = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


def square_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize float [H, W] so the short side is `size`, then centre-crop to [size, size]."""
    height, width = image.shape
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    resized = _resize(image, (new_h, new_w))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] into uint8 [0, 255] (rounded)."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def is_jpeg_path(path: str | Path) -> bool:
    """Whether the file is an ordinary image (MIMIC-CXR-JPG) rather than DICOM, by suffix."""
    return Path(path).suffix.lower() in JPEG_SUFFIXES


def load_cxr_image(path: str | Path, size: int = DEFAULT_CXR_SIZE) -> np.ndarray:
    """Read a chest X-ray (DICOM or JPG/PNG) into uint8 [1, size, size], 0 = black."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRecord(path, "file not found", kind="missing_file")
    unit = jpeg_to_unit_image(path) if is_jpeg_path(path) else dicom_to_unit_image(path)
    return to_uint8(square_crop(unit, size))[None]
