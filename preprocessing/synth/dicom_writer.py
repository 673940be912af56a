"""Write chest radiographs as DICOM files that look like MIMIC-CXR's CR/DX images.

What real files vary, this varies (``sample_encoding``): MONOCHROME1 or MONOCHROME2,
12 or 16 stored bits, Rescale Slope/Intercept present or absent, a VOI window present or
absent, CR or DX, and the transfer syntax: Explicit or Implicit VR Little Endian
(uncompressed), RLE Lossless, or JPEG 2000 Lossless (when pylibjpeg-openjpeg can encode).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.encoders import JPEG2000LosslessEncoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from symile_clinical.formats.atomic import atomic_path

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")
BASIC_TEXT_SR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.88.11")

VIEW_CODES = {
    "PA": ("R-10214", "postero-anterior"),
    "AP": ("R-10206", "antero-posterior"),
    "LATERAL": ("R-10232", "lateral"),
    "LL": ("R-10236", "left lateral"),
}
PROCEDURES = {"PA": "CHEST (PA AND LAT)", "AP": "CHEST (PORTABLE AP)"}
# pylibjpeg-openjpeg logs every tile it encodes at INFO; that is noise at cohort scale.
logging.getLogger("openjpeg").setLevel(logging.WARNING)

MANUFACTURERS = ("FUJIFILM Corporation", "Agfa", "Carestream Health", "Philips Medical Systems")


@dataclass(frozen=True)
class DicomEncoding:
    """How one image is stored: the variations real MIMIC-CXR files show."""

    modality: str  # "CR" | "DX"
    photometric: str  # "MONOCHROME1" | "MONOCHROME2"
    bits_stored: int  # 12 | 16
    rescale: tuple[float, float] | None  # (slope, intercept) or absent
    window: bool  # VOI window centre/width present
    transfer_syntax: UID
    manufacturer: str


def sample_encoding(rng: np.random.Generator) -> DicomEncoding:
    """Draw one encoding; compressed syntaxes are a minority, as in the release."""
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless]
    weights = [0.6, 0.15, 0.15]
    if JPEG2000LosslessEncoder.is_available:
        syntaxes.append(JPEG2000Lossless)
        weights.append(0.08)  # the slowest encoder: a small share
    p = np.asarray(weights) / sum(weights)
    r = rng.random()
    rescale = None if r < 0.4 else ((1.0, 0.0) if r < 0.8 else (2.0, -1024.0))
    return DicomEncoding(
        modality="CR" if rng.random() < 0.6 else "DX",
        photometric="MONOCHROME1" if rng.random() < 0.35 else "MONOCHROME2",
        bits_stored=12 if rng.random() < 0.5 else 16,
        rescale=rescale,
        window=bool(rng.random() < 0.7),
        transfer_syntax=syntaxes[int(rng.choice(len(syntaxes), p=p))],
        manufacturer=MANUFACTURERS[int(rng.integers(len(MANUFACTURERS)))],
    )


def deterministic_uid(*parts: object) -> UID:
    """A valid ``2.25.<int>`` UID derived from the given parts (same parts, same UID)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).digest()
    return UID(f"2.25.{int.from_bytes(digest, 'big')}")


def stored_pixels(
    image01: np.ndarray, encoding: DicomEncoding, rng: np.random.Generator
) -> np.ndarray:
    """uint16 [rows, cols] stored values for an image in [0, 1] (1 = dense)."""
    top = (1 << encoding.bits_stored) - 1
    span = rng.uniform(0.75, 0.95) * top
    offset = rng.uniform(0.0, top - span)
    values = np.round(offset + image01 * span)
    if encoding.photometric == "MONOCHROME1":  # high stored value = black
        values = top - values
    return np.clip(values, 0, top).astype(np.uint16)


def _code_item(value: str, meaning: str, scheme: str = "SRT") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


@dataclass(frozen=True)
class StudyInfo:
    """Identifiers and times shared by the images of one radiograph study."""

    subject_id: int
    study_id: int
    study_time: datetime
    study_uid: UID
    procedure: str  # "CHEST (PA AND LAT)" | "CHEST (PORTABLE AP)"
    erect: bool


def build_image_dataset(
    study: StudyInfo,
    dicom_id: str,
    view: str,
    instance: int,
    pixels: np.ndarray,
    encoding: DicomEncoding,
    pixel_spacing_mm: float,
) -> Dataset:
    """A CR/DX image dataset (file meta included) holding ``pixels`` (uint16 stored values)."""
    sop_class = CR_IMAGE_STORAGE if encoding.modality == "CR" else DX_IMAGE_STORAGE
    ds = _new_dataset(sop_class, dicom_id)
    date = study.study_time.strftime("%Y%m%d")
    time = study.study_time.strftime("%H%M%S.%f")[:10]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AccessionNumber = ""
    ds.Modality = encoding.modality
    ds.Manufacturer = encoding.manufacturer
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.procedure
    ds.PerformedProcedureStepDescription = study.procedure
    ds.ProcedureCodeSequence = [
        _code_item(study.procedure.replace(" ", "")[:16], study.procedure, "L")
    ]
    ds.PatientName = ""
    ds.PatientID = str(study.subject_id)
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.ViewCodeSequence = [_code_item(*VIEW_CODES[view])]
    orientation = ("F-10440", "Erect") if study.erect else ("F-10450", "Recumbent")
    ds.PatientOrientationCodeSequence = [_code_item(*orientation)]
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = deterministic_uid("series", study.study_uid, instance)
    ds.StudyID = ""
    ds.SeriesNumber = instance
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["P", "F"] if view in ("LATERAL", "LL") else ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = encoding.photometric
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.PixelSpacing = ds.ImagerPixelSpacing = [f"{pixel_spacing_mm:.6f}"] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PresentationLUTShape = "INVERSE" if encoding.photometric == "MONOCHROME1" else "IDENTITY"
    slope, intercept = encoding.rescale or (1.0, 0.0)
    if encoding.rescale is not None:
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleType = "US"
    if encoding.window:
        out = pixels.astype(np.float64) * slope + intercept
        low, high = np.percentile(out[::4, ::4], [1.0, 99.5])
        ds.WindowCenter = f"{(low + high) / 2:.1f}"
        ds.WindowWidth = f"{max(high - low, 1.0):.1f}"
        ds.VOILUTFunction = "LINEAR"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    if encoding.transfer_syntax in (RLELossless, JPEG2000Lossless):
        # Lossless: the image is the same instance, so keep its (seed-derived) UID.
        ds.compress(encoding.transfer_syntax, pixels, generate_instance_uid=False)
    elif encoding.transfer_syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _new_dataset(sop_class: UID, dicom_id: str) -> Dataset:
    """An empty dataset of one SOP class with its file meta (explicit VR little endian)."""
    ds = Dataset()
    sop_uid = deterministic_uid("sop", dicom_id)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def build_report_dataset(study: StudyInfo, dicom_id: str) -> Dataset:
    """A non-image DICOM (Basic Text SR) carrying the study's identifiers and no pixels."""
    ds = _new_dataset(BASIC_TEXT_SR_STORAGE, dicom_id)
    ds.Modality = "SR"
    ds.StudyDate = study.study_time.strftime("%Y%m%d")
    ds.StudyTime = study.study_time.strftime("%H%M%S")
    ds.PatientID = str(study.subject_id)
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = deterministic_uid("series-sr", study.study_uid)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = [_code_item("18748-4", "Diagnostic imaging report", "LN")]
    return ds


def save_dataset(ds: Dataset, path: Path) -> None:
    """Write a DICOM file (128-byte preamble, DICM, file meta) atomically."""
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
