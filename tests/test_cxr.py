"""CXR reader: real public DICOMs (../shared/data/cxr) and generated files, one per rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from preprocessing.cxr import (
    dicom_to_unit_image,
    display_values,
    grey_levels,
    load_cxr_image,
    square_crop,
    window,
)
from preprocessing.errors import InvalidRecord

CXR = "cxr"


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    window_cw: tuple[float, float] | None = None,
    pixel_spacing: tuple[float, float] | None = None,
    compress_rle: bool = False,
    with_pixels: bool = True,
) -> Path:
    """A CR-like DICOM with the given stored pixels (uint16 [H, W]) and display tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window_cw is not None:
        ds.WindowCenter, ds.WindowWidth = window_cw
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        if compress_rle:
            ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return path


def gradient(height: int = 64, width: int = 80, top: int = 4095) -> np.ndarray:
    """Stored pixels rising left to right from 0 to `top` (uint16 [H, W])."""
    row = np.linspace(0, top, width).round().astype(np.uint16)
    return np.tile(row, (height, 1))


# ---------------------------------------------------------------- real files


def test_real_mono1_without_file_meta(shared_data: Path) -> None:
    path = shared_data / CXR / "fodicom_CR-MONO1-10-chest_cr_mono1_uncompressed_nometa.dcm"
    image = load_cxr_image(path, 128)
    assert image.shape == (1, 128, 128) and image.dtype == np.uint8
    # MONOCHROME1 inverted: the mediastinum (centre column) is brighter than the lungs.
    centre = image[0, 40:90, 58:70].mean()
    lungs = image[0, 40:90, 20:40].mean()
    assert centre > lungs + 20


def test_real_nih_8bit_dx(shared_data: Path) -> None:
    path = shared_data / CXR / "nhsx_nih_cxr14_dx_mono2_uncompressed_implicit.dcm"
    ds = pydicom.dcmread(path)
    unit = dicom_to_unit_image(path)
    # 8-bit, no window: the stored-bits range 0..255 maps to [0, 1] unchanged.
    np.testing.assert_allclose(unit, ds.pixel_array / 255.0, atol=1e-6)
    assert load_cxr_image(path, 64).shape == (1, 64, 64)


def test_real_jpegls_mono1_with_degenerate_spacing(shared_data: Path) -> None:
    path = shared_data / CXR / "wg04_RG1_JLSN_cr_chest_mono1_jpegls_nearlossless.dcm"
    unit = dicom_to_unit_image(path)
    assert unit.shape == (1955, 1841)  # PixelSpacing 0\0 ignored: no resampling
    image = load_cxr_image(path, 96)
    assert image.shape == (1, 96, 96)
    assert image[0, 30:60, 44:52].mean() > image[0, 30:60, 15:30].mean()  # spine over lung


# ---------------------------------------------------------------- generated, one per rule


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    pixels = gradient()
    mono2 = dicom_to_unit_image(write_dicom(tmp_path / "m2.dcm", pixels))
    mono1 = dicom_to_unit_image(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert mono2[:, 0].max() == 0.0 and mono2[:, -1].min() == 1.0


def test_stored_bits_range_without_window(tmp_path: Path) -> None:
    pixels = gradient(top=1023)  # a 12-bit image using only a quarter of its range
    unit = dicom_to_unit_image(write_dicom(tmp_path / "a.dcm", pixels, bits_stored=12))
    np.testing.assert_allclose(unit, pixels / 4095.0, atol=1e-6)


def test_window_applied_after_rescale(tmp_path: Path) -> None:
    pixels = gradient(top=4095)
    # Rescale to modality units -1000..3095, then a window centred on 1000, width 1001.
    path = write_dicom(
        tmp_path / "w.dcm", pixels, rescale=(1.0, -1000.0), window_cw=(1000.0, 1001.0)
    )
    unit = dicom_to_unit_image(path)
    values = pixels.astype(np.float64) - 1000.0
    expected = np.clip((values - 999.5) / 1000.0 + 0.5, 0, 1)
    np.testing.assert_allclose(unit, expected, atol=1e-6)
    assert unit[:, 0].max() == 0.0 and unit[:, -1].min() == 1.0


def test_rescale_without_window_uses_rescaled_range(tmp_path: Path) -> None:
    pixels = gradient(top=4095)
    unit = dicom_to_unit_image(write_dicom(tmp_path / "r.dcm", pixels, rescale=(2.0, -100.0)))
    # The rescaled range [-100, 8090] maps to [0, 1]: linear in the stored value.
    np.testing.assert_allclose(unit, pixels / 4095.0, atol=1e-6)


def test_linear_window_formula_matches_standard() -> None:
    x = np.array([0.0, 49.5, 50.0, 100.0, 149.5, 200.0])
    out = window(x, center=100.0, width=100.0)
    slow = []
    for value in x:  # PS3.3 C.11.2.1.2.1, written out one value at a time
        if value <= 100 - 0.5 - 99 / 2:
            slow.append(0.0)
        elif value > 100 - 0.5 + 99 / 2:
            slow.append(1.0)
        else:
            slow.append((value - 99.5) / 99 + 0.5)
    np.testing.assert_allclose(out, slow)


def test_rle_compressed_decodes_like_uncompressed(tmp_path: Path) -> None:
    pixels = (np.random.default_rng(0).integers(0, 4096, (64, 80))).astype(np.uint16)
    plain = write_dicom(tmp_path / "plain.dcm", pixels)
    rle = write_dicom(tmp_path / "rle.dcm", pixels, compress_rle=True)
    assert pydicom.dcmread(rle).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(load_cxr_image(rle, 32), load_cxr_image(plain, 32))


def test_non_square_pixels_are_made_square(tmp_path: Path) -> None:
    pixels = gradient(height=50, width=100)
    unit = dicom_to_unit_image(write_dicom(tmp_path / "s.dcm", pixels, pixel_spacing=(0.2, 0.1)))
    assert unit.shape == (100, 100)


def test_missing_pixel_data_is_invalid(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "np.dcm", gradient(), with_pixels=False)
    with pytest.raises(InvalidRecord) as caught:
        load_cxr_image(path, 32)
    assert caught.value.kind == "no_pixel_data" and caught.value.path == str(path)


def test_non_image_dicom_is_invalid(tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    with pytest.raises(InvalidRecord) as caught:
        load_cxr_image(get_testdata_file("rtplan.dcm"), 32)
    assert caught.value.kind == "not_an_image"


def test_truncated_file_is_invalid(tmp_path: Path) -> None:
    good = write_dicom(tmp_path / "g.dcm", gradient())
    broken = tmp_path / "t.dcm"
    broken.write_bytes(good.read_bytes()[:-3000])
    with pytest.raises(InvalidRecord):
        load_cxr_image(broken, 32)


def test_jpg_reads_like_mimic_cxr_jpg(tmp_path: Path) -> None:
    pixels = (gradient(top=255)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.jpg", quality=100)
    image = load_cxr_image(tmp_path / "x.jpg", 32)
    assert image.shape == (1, 32, 32)
    assert image[0, :, 0].mean() < 30 and image[0, :, -1].mean() > 225


def test_square_crop_keeps_centre() -> None:
    image = np.zeros((100, 200), dtype=np.float32)
    image[:, 50:150] = 1.0  # the centre square is white, the side bands black
    out = square_crop(image, 50)
    assert out.shape == (50, 50)
    assert out[:, 2:-2].min() > 0.99 and out.min() > 0.5  # only antialiasing at the edges


def test_lookup_table_path_equals_per_pixel_rules_for_signed_pixels() -> None:
    """A signed 16-bit image spanning more than 32767 levels: pixels - min must not wrap."""
    ds = pydicom.Dataset()
    ds.BitsStored, ds.BitsAllocated, ds.PixelRepresentation = 16, 16, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    pixels = np.random.default_rng(0).integers(-20000, 20001, (600, 600)).astype(np.int16)
    np.testing.assert_array_equal(display_values(pixels, ds), grey_levels(pixels, ds))
