"""The audit trail (app.web.audit): one JSON line per view, appended in one write, rotated by
size, ids only; the pages record their views and stop when a view cannot be recorded.

Real files throughout; the page checks run the app through streamlit.testing's AppTest on
tests/_app_run.py's runs.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from _app_run import labs_csv, make_run, make_runs, write_wfdb
from streamlit.testing.v1 import AppTest

from app.web.audit import AUDIT_FILE, AuditLog, AuditWriteError, audit_record, read_audit
from app.web.run_context import RUN_ENV
from symile_clinical.formats.dataset_dir import DatasetDir

ENTRY = Path(__file__).resolve().parents[1] / "app" / "web" / "main.py"
TIMEOUT = 60
KEYS = {"schema", "time", "user", "session", "run", "event", "page", "admission", "upload"}


def test_records_are_appended_one_line_each_and_read_back(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit")
    first = audit_record("a@ward.example", "symile", "by_admission", admission={"hadm_id": 7})
    second = audit_record("anonymous-loopback", "symile", "report")
    log.write(first)
    log.write(second)
    lines = (tmp_path / "audit" / AUDIT_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [first, second]
    assert read_audit(tmp_path / "audit") == [first, second]
    assert set(first) == KEYS | {"candidates"} and first["time"].endswith("Z")
    assert (tmp_path / "audit" / AUDIT_FILE).stat().st_mode & 0o777 == 0o600


def test_concurrent_writers_never_interleave_within_a_line(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    ids = [f"dicom-{i:06d}" for i in range(400)]  # long lines: one write(2) each still

    def write(user: int) -> None:
        for _ in range(25):
            log.write(audit_record(f"u{user}", "run", "p", candidates={"Symile": ids}))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = read_audit(tmp_path)
    assert len(records) == 200
    assert all(r["candidates"]["Symile"] == ids for r in records)


def test_the_file_is_rotated_by_size_and_nothing_is_lost(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, rotate_bytes=1000)
    written = [audit_record("u", "run", "p", candidates={"S": [str(i)]}) for i in range(30)]
    for record in written:
        log.write(record)
    files = log.files()
    assert len(files) > 3 and files[-1].name == AUDIT_FILE
    assert all(f.stat().st_size <= 1000 for f in files)
    assert read_audit(tmp_path) == written  # oldest first, none dropped


def test_a_failed_write_is_an_error_naming_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "audit"
    blocker.write_text("a file where the audit folder should be")
    with pytest.raises(AuditWriteError) as caught:
        AuditLog(blocker).write(audit_record("u", "run", "p"))
    assert caught.value.path == blocker / AUDIT_FILE


# ---------------------------------------------------------------------------------------
# The pages record their views


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_runs(tmp_path_factory.mktemp("audit"))


@pytest.fixture
def app(runs, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    audit = runs[1] / "audit"
    for path in audit.glob("*.jsonl"):
        path.unlink()
    monkeypatch.setenv(RUN_ENV, str(runs[1]))
    return AppTest.from_file(ENTRY, default_timeout=TIMEOUT)


def test_each_view_is_one_line_of_ids(app: AppTest, runs) -> None:
    data, run, _ = runs
    app.run()
    assert not app.exception and not app.error
    app.run()  # the same view again: not a new line
    app.radio(key="pool").set_value("The whole index").run()
    records = read_audit(run / "audit")
    assert [r["page"] for r in records] == ["by_admission", "by_admission"]
    manifest = DatasetDir(data).manifest("test")
    first = records[0]
    assert first["user"] == "anonymous-loopback" and first["run"] == run.name
    assert first["admission"] == {
        "subject_id": int(manifest["subject_id"].iloc[0]),
        "hadm_id": int(manifest["hadm_id"].iloc[0]),
    }
    assert set(first["candidates"]) == {"Symile", "CLIP"}
    assert len(first["candidates"]["Symile"]) == 4  # the paper's candidates
    assert str(manifest["dicom_id"].iloc[0]) in first["candidates"]["Symile"]
    assert len(records[1]["candidates"]["Symile"]) == 10  # the whole index, k = 10

    app.switch_page("app_pages/report.py").run()
    assert read_audit(run / "audit")[-1]["page"] == "report"


def test_an_upload_view_records_file_names_never_values(app: AppTest, runs, tmp_path) -> None:
    hea, dat = write_wfdb(tmp_path / "record")
    app.run()
    app.switch_page("app_pages/by_upload.py").run()
    app.file_uploader(key="ecg_upload").set_value(
        [(p.name, p.read_bytes(), "application/octet-stream") for p in (hea, dat)]
    )
    app.file_uploader(key="labs_upload").set_value(
        ("my-labs.csv", labs_csv([("50000", "4.2"), ("Lab 3", "7.77")]), "text/csv")
    )
    app.run()
    assert not app.exception, app.exception
    text = (runs[1] / "audit" / AUDIT_FILE).read_text()
    uploads = [r for r in read_audit(runs[1] / "audit") if r["page"] == "by_upload"]
    assert uploads[-1]["upload"] == {"ecg": ["upload.dat", "upload.hea"], "labs": "my-labs.csv"}
    assert len(uploads[-1]["candidates"]["Symile"]) == 10
    assert "7.77" not in text and "50000" not in text  # no lab ids or values


def test_a_view_that_cannot_be_recorded_is_not_shown(
    runs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run = make_run(tmp_path / "run", runs[0], "symile")
    (run / "audit").write_text("a file where the audit folder should be")
    monkeypatch.setenv(RUN_ENV, str(run))
    app = AppTest.from_file(ENTRY, default_timeout=TIMEOUT).run()
    assert not app.exception
    assert "could not be written to the audit trail" in " ".join(e.value for e in app.error)
    assert not [c for image in app.image for c in image.captions if "score" in c]
    assert str(tmp_path) not in " ".join(e.value for e in app.error)  # no server path
