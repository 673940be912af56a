"""Where MIMIC keeps things: folder layouts, file names and table columns of the releases.

Defined once and shared by the readers (preprocessing) and the synthetic writer, so that
the synthetic cohort is laid out exactly as PhysioNet publishes:

- MIMIC-IV (hosp module):  ``<root>/mimic-iv/hosp/`` with patients, admissions, labevents
                           and d_labitems as ``.csv.gz``
- MIMIC-IV-ECG:            ``<root>/mimic-iv-ecg/record_list.csv`` and WFDB records at
                           ``files/p1000/p10000032/s40689238/40689238.{hea,dat}``
- MIMIC-CXR (DICOM):       ``<root>/mimic-cxr/cxr-record-list.csv.gz`` and
                           ``files/p10/p10000032/s50414267/<dicom_id>.dcm``, plus
                           ``mimic-cxr-2.0.0-metadata.csv.gz`` (shipped with MIMIC-CXR-JPG;
                           without it the DICOM headers are read)
- MIMIC-CXR-JPG:           the same layout with ``.jpg`` files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HOSP_DIR = Path("mimic-iv") / "hosp"
ECG_DIR = Path("mimic-iv-ecg")
CXR_DIR = Path("mimic-cxr")

PATIENTS_FILE = "patients.csv.gz"
ADMISSIONS_FILE = "admissions.csv.gz"
LABEVENTS_FILE = "labevents.csv.gz"
D_LABITEMS_FILE = "d_labitems.csv.gz"
ECG_RECORD_LIST_FILE = "record_list.csv"
CXR_RECORD_LIST_FILE = "cxr-record-list.csv.gz"
CXR_METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv.gz"

PATIENTS_COLUMNS = (
    "subject_id",
    "gender",
    "anchor_age",
    "anchor_year",
    "anchor_year_group",
    "dod",
)
ADMISSIONS_COLUMNS = (
    "subject_id",
    "hadm_id",
    "admittime",
    "dischtime",
    "deathtime",
    "admission_type",
    "admit_provider_id",
    "admission_location",
    "discharge_location",
    "insurance",
    "language",
    "marital_status",
    "race",
    "edregtime",
    "edouttime",
    "hospital_expire_flag",
)
LABEVENTS_COLUMNS = (
    "labevent_id",
    "subject_id",
    "hadm_id",
    "specimen_id",
    "itemid",
    "order_provider_id",
    "charttime",
    "storetime",
    "value",
    "valuenum",
    "valueuom",
    "ref_range_lower",
    "ref_range_upper",
    "flag",
    "priority",
    "comments",
)
D_LABITEMS_COLUMNS = ("itemid", "label", "fluid", "category")
ECG_RECORD_LIST_COLUMNS = ("subject_id", "study_id", "file_name", "ecg_time", "path")
CXR_RECORD_LIST_COLUMNS = ("subject_id", "study_id", "dicom_id", "path")
CXR_METADATA_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)

# MIMIC-IV-ECG stores aVF before aVL; models always see the canonical order below.
MIMIC_ECG_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
CANONICAL_ECG_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
ECG_SAMPLING_HZ = 500
ECG_SAMPLES = 5000

# MIMIC-IV-ECG machine_measurements.csv: the cart's measurements and report statements.
MACHINE_MEASUREMENTS_FILE = "machine_measurements.csv"
N_REPORTS = 18
REPORT_COLUMNS = tuple(f"report_{k}" for k in range(N_REPORTS))
MEASUREMENT_COLUMNS = (
    "rr_interval",
    "p_onset",
    "p_end",
    "qrs_onset",
    "qrs_end",
    "t_end",
    "p_axis",
    "qrs_axis",
    "t_axis",
)
MACHINE_MEASUREMENTS_COLUMNS = (
    "subject_id",
    "study_id",
    "cart_id",
    "ecg_time",
    *REPORT_COLUMNS,
    "bandwidth",
    "filtering",
    *MEASUREMENT_COLUMNS,
)
# Integer sentinels MIMIC-IV-ECG writes where a measurement is missing.
NO_WAVE = 29999  # the wave is absent (no P wave in atrial fibrillation)
NOT_MEASURED = 32767  # the cart could not measure it
MISSING_SENTINELS = (NO_WAVE, NOT_MEASURED)

# MIMIC-CXR-JPG's report labeler tables: 1.0 positive, 0.0 negative, -1.0 uncertain, blank.
CHEXPERT_FILE = "mimic-cxr-2.0.0-chexpert.csv.gz"
NEGBIO_FILE = "mimic-cxr-2.0.0-negbio.csv.gz"
CHEXPERT_OBSERVATIONS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
CHEXPERT_COLUMNS = ("subject_id", "study_id", *CHEXPERT_OBSERVATIONS)


@dataclass(frozen=True)
class MimicRoot:
    """The three release roots under one directory (real PhysioNet downloads or synthetic)."""

    root: Path

    @property
    def hosp(self) -> Path:
        """MIMIC-IV hosp module directory."""
        return self.root / HOSP_DIR

    @property
    def ecg(self) -> Path:
        """MIMIC-IV-ECG release directory (holds record_list.csv and files/)."""
        return self.root / ECG_DIR

    @property
    def cxr(self) -> Path:
        """MIMIC-CXR (or MIMIC-CXR-JPG) release directory."""
        return self.root / CXR_DIR


def ecg_record_path(subject_id: int, study_id: int) -> str:
    """Relative record path (no extension) as MIMIC-IV-ECG v1.0 writes it in record_list.csv."""
    return f"files/p{str(subject_id)[:4]}/p{subject_id}/s{study_id}/{study_id}"


def cxr_image_path(subject_id: int, study_id: int, dicom_id: str, suffix: str = ".dcm") -> str:
    """Relative image path as MIMIC-CXR writes it in cxr-record-list.csv.gz."""
    return f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}/{dicom_id}{suffix}"


def report_path(subject_id: int, study_id: int) -> str:
    """Relative radiology report path as MIMIC-CXR writes it: files/p10/p10000032/s50414267.txt."""
    return f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}.txt"


def relative_to_root(path: Path, root: Path) -> str:
    """`path` relative to the MIMIC root when inside it, else as given (quarantine's file)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)
