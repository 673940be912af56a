"""CXR metadata read from DICOM headers (the MIMIC-CXR DICOM release ships no metadata table).

A synthetic root is written with the table; the tests remove it and check that the headers
give the same frame, the same dataset, and that a root with neither table still fails.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from preprocessing import layout
from preprocessing import mimic_tables as tables
from preprocessing.errors import InvalidRoot
from preprocessing.pipeline import PreprocessConfig, run_preprocess
from preprocessing.splits import SplitSizes

COMPARED = ["dicom_id", "subject_id", "study_id", "ViewPosition", "cxr_time", "path"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from preprocessing.synth.config import SynthConfig
    from preprocessing.synth.generate import generate_cohort

    root = tmp_path_factory.mktemp("synth") / "mimic"
    generate_cohort(SynthConfig(out=root, admissions=40, seed=0, cxr_max_size=64, progress=False))
    return root


def without_metadata(synth_root: Path, where: Path) -> Path:
    """A root sharing synth_root's files, with mimic-cxr holding no metadata table."""
    where.mkdir()
    for sub in ("mimic-iv", "mimic-iv-ecg"):
        os.symlink(synth_root / sub, where / sub)
    cxr = where / "mimic-cxr"
    cxr.mkdir()
    os.symlink(synth_root / "mimic-cxr" / "files", cxr / "files")
    shutil.copy(synth_root / "mimic-cxr" / layout.CXR_RECORD_LIST_FILE, cxr)
    return where


def sorted_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[COMPARED].sort_values("dicom_id").reset_index(drop=True)


@pytest.mark.parametrize("workers", [1, 2])
def test_headers_give_the_metadata_table(synth_root: Path, workers: int) -> None:
    cxr = synth_root / "mimic-cxr"
    record_list = cxr / layout.CXR_RECORD_LIST_FILE
    from_table = tables.read_cxr_metadata(cxr / layout.CXR_METADATA_FILE, record_list)
    # Chunks of 8 files, so that two workers share several chunks.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tables, "CXR_HEADER_CHUNK", 8)
        from_headers = tables.cxr_metadata_from_headers(cxr, record_list, workers, progress=False)
    assert list(from_headers.columns) == list(from_table.columns)
    assert len(from_headers) == len(from_table) > 16
    assert from_headers["cxr_time"].notna().all()
    pd.testing.assert_frame_equal(sorted_frame(from_headers), sorted_frame(from_table))


def test_headers_are_read_only_for_the_given_subjects(synth_root: Path) -> None:
    cxr = synth_root / "mimic-cxr"
    record_list = cxr / layout.CXR_RECORD_LIST_FILE
    everyone = tables.cxr_metadata_from_headers(cxr, record_list)
    chosen = everyone["subject_id"].unique()[:3]
    some = tables.cxr_metadata_from_headers(cxr, record_list, subject_ids=chosen)
    assert set(some["subject_id"]) == set(chosen)
    expected = everyone[everyone["subject_id"].isin(chosen)]
    pd.testing.assert_frame_equal(sorted_frame(some), sorted_frame(expected))


def test_unreadable_header_has_no_view_and_no_time(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "text.dcm").write_text("not a DICOM file")
    record_list = tmp_path / layout.CXR_RECORD_LIST_FILE
    with gzip.open(record_list, "wt") as handle:
        pd.DataFrame(
            {
                "subject_id": [10000032, 10000032],
                "study_id": [50000001, 50000002],
                "dicom_id": ["missing", "text"],
                "path": ["files/missing.dcm", "files/text.dcm"],
            }
        ).to_csv(handle, index=False)
    frame = tables.cxr_metadata_from_headers(tmp_path, record_list)
    assert frame["ViewPosition"].tolist() == ["", ""]
    assert frame["cxr_time"].isna().all()
    assert frame["path"].tolist() == ["files/missing.dcm", "files/text.dcm"]


def test_dicom_time_forms() -> None:
    assert tables.dicom_time_as_hhmmss("005312.1234") == "005312.1234"
    assert tables.dicom_time_as_hhmmss("0053") == "005300"
    assert tables.dicom_time_as_hhmmss("00:53:12") == "005312"
    assert tables.dicom_time_as_hhmmss(" ") == ""


def test_dataset_without_metadata_table_is_the_same(synth_root: Path, tmp_path: Path) -> None:
    def manifest(root: Path, out: Path) -> pd.DataFrame:
        # 40 admissions: larger val/test splits than the default, so that K=4 can be served.
        config = PreprocessConfig(
            mimic_root=root,
            out=out,
            cxr_size=32,
            candidates=4,
            split_sizes=SplitSizes(0.25, 0.25),
            progress=False,
        )
        run_preprocess(config)
        return pd.read_parquet(out / "manifest.parquet")

    reference = manifest(synth_root, tmp_path / "with")
    headers = manifest(without_metadata(synth_root, tmp_path / "root"), tmp_path / "without")
    assert len(reference) > 0
    assert headers["hadm_id"].tolist() == reference["hadm_id"].tolist()


def test_root_with_neither_table_names_both(synth_root: Path, tmp_path: Path) -> None:
    root = without_metadata(synth_root, tmp_path / "root")
    (root / "mimic-cxr" / layout.CXR_RECORD_LIST_FILE).unlink()
    with pytest.raises(InvalidRoot) as caught:
        run_preprocess(PreprocessConfig(mimic_root=root, out=tmp_path / "out", progress=False))
    message = str(caught.value)
    assert layout.CXR_METADATA_FILE in message and layout.CXR_RECORD_LIST_FILE in message
    assert not (tmp_path / "out").exists()


def test_record_list_without_ids_is_named(synth_root: Path, tmp_path: Path) -> None:
    """Without the metadata table the record list must also carry subject and study ids."""
    root = without_metadata(synth_root, tmp_path / "root")
    record_list = root / "mimic-cxr" / layout.CXR_RECORD_LIST_FILE
    frame = pd.read_csv(record_list)
    with gzip.open(record_list, "wt") as handle:
        frame[["dicom_id", "path"]].to_csv(handle, index=False)
    with pytest.raises(InvalidRoot, match=r"lacks columns \['subject_id', 'study_id'\]"):
        run_preprocess(PreprocessConfig(mimic_root=root, out=tmp_path / "out", progress=False))
