"""The Streamlit app through streamlit.testing's AppTest: every page, every bad input.

The run is a small untrained model over tests/_dataset_factory's dataset, with a CLIP run
named in compare.json; uploads are real WFDB files written with wfdb and real CSV bytes.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _app_run import N_LABS, labs_csv, make_runs, write_wfdb
from streamlit.testing.v1 import AppTest

from app.web.run_context import RUN_ENV, run_dir_from_args
from app.web.uploads import MAX_UPLOAD_BYTES, UploadError, read_ecg_upload, read_labs_csv
from symile_clinical.formats.run_dir import RunDir

ENTRY = Path(__file__).resolve().parents[1] / "app" / "web" / "main.py"
TIMEOUT = 60  # the first run of a session loads torch, the model and the index


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_runs(tmp_path_factory.mktemp("app"))


@pytest.fixture
def app(runs, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(RUN_ENV, str(runs[1]))
    return AppTest.from_file(ENTRY, default_timeout=TIMEOUT)


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    hea, dat = write_wfdb(tmp_path_factory.mktemp("wfdb"))
    return {"upload.hea": hea.read_bytes(), "upload.dat": dat.read_bytes()}


def upload_page(app: AppTest) -> AppTest:
    app.run()
    app.switch_page("app_pages/by_upload.py").run()
    assert not app.exception, app.exception
    return app


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def result_images(app: AppTest) -> list[str]:
    """Captions of the result thumbnails (one st.image list holds them all): those that
    carry a score."""
    return [c for image in app.image for c in image.captions if "score" in c]


def markdown_tables(app: AppTest) -> list:
    """The Markdown tables of the page (rankings side by side, lab effects, the labs) as
    DataFrames."""
    import pandas as pd

    tables = []
    for element in app.markdown:
        lines = str(element.value).strip().splitlines()
        if len(lines) < 2 or not lines[0].startswith("| ") or not lines[1].startswith("|---"):
            continue
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
        tables.append(pd.DataFrame(cells[2:], columns=cells[0]))
    return tables


def captions(app: AppTest) -> str:
    return " ".join(c for image in app.image for c in image.captions)


# ---------------------------------------------------------------------------------------
# Query by admission


def test_admission_page_ranks_the_paper_candidates(app: AppTest) -> None:
    app.run()
    assert not app.exception, app.exception
    assert not app.error, texts(app.error)
    assert "Query by admission" in texts(app.title)
    shown = texts(app.markdown)
    assert "True CXR rank:" in shown and "of 4" in shown  # the factory's 4 candidates
    assert len(result_images(app)) == 4
    assert "TRUE CXR" in captions(app)
    labs = next(t for t in markdown_tables(app) if "status" in t.columns)
    assert len(labs) == N_LABS and set(labs["status"]) <= {"observed", "missing"}


def test_admission_page_whole_index_pool_and_k(app: AppTest) -> None:
    app.run()
    app.radio(key="pool").set_value("The whole index").run()
    app.slider(key="k").set_value(7).run()
    assert not app.exception, app.exception
    assert len(result_images(app)) == 7
    assert "of 24" in texts(app.markdown)  # the whole test split


def test_admission_page_shows_symile_vs_clip(app: AppTest) -> None:
    app.run()
    assert "Symile vs CLIP" in texts(app.subheader)
    ranked = [t for t in markdown_tables(app) if "probability" in t.columns]
    assert len(ranked) == 2  # one ranking per run
    for table in ranked:
        assert (table["true"] == "✔").sum() == 1  # the paper pool always holds the true CXR
        assert table["probability"].astype(float).sum() == pytest.approx(100, abs=0.5)


def test_admission_page_explains_the_match_by_masking_labs(app: AppTest) -> None:
    app.run()
    app.selectbox(key="admission").set_value(3).run()
    assert not app.exception, app.exception
    effects = [t for t in markdown_tables(app) if "score_change" in t.columns]
    assert effects and len(effects[0]) >= 1
    assert np.isfinite(effects[0]["score_change"].astype(float)).all()


# ---------------------------------------------------------------------------------------
# Query by upload


def test_upload_page_ranks_an_uploaded_record_and_labs(app: AppTest, record) -> None:
    upload_page(app)
    assert "Upload an ECG" in texts(app.info)
    app.file_uploader(key="ecg_upload").set_value(
        [(name, data, "application/octet-stream") for name, data in record.items()]
    )
    app.file_uploader(key="labs_upload").set_value(
        ("labs.csv", labs_csv([("50000", "4.2"), ("Lab 3", "7"), ("50001", "")]), "text/csv")
    )
    app.run()
    assert not app.exception, app.exception
    assert not app.error, texts(app.error)
    assert "2 lab values read" in texts(app.success)
    assert app.session_state["lab_50000"] == pytest.approx(4.2)
    assert len(result_images(app)) == 10
    labs = next(t for t in markdown_tables(app) if "status" in t.columns)
    assert list(labs["status"]).count("observed") == 2
    # Editing a value in the form re-ranks; the CSV does not overwrite the edit.
    app.number_input(key="lab_50005").set_value(3.0).run()
    assert app.session_state["lab_50005"] == 3.0 and app.session_state["lab_50000"] == 4.2
    assert not app.exception and len(result_images(app)) == 10


def test_upload_page_accepts_a_zip_and_form_only_labs(app: AppTest, record) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in record.items():
            archive.writestr(f"record/{name}", data)
    upload_page(app)
    app.file_uploader(key="ecg_upload").set_value(("ecg.zip", buffer.getvalue(), "application/zip"))
    app.run()
    assert not app.exception and not app.error, texts(app.error)
    assert len(result_images(app)) == 10
    labs = next(t for t in markdown_tables(app) if "status" in t.columns)
    assert set(labs["status"]) == {"missing"}  # no labs at all is allowed


def bad_ecg_uploads(record: dict[str, bytes], tmp: Path) -> dict[str, list[tuple[str, bytes]]]:
    eight_hea, eight_dat = write_wfdb(
        tmp / "eight", "eight", ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    )
    return {
        "wrong file type": [("scan.png", b"\x89PNG\r\n\x1a\n" + b"0" * 64)],
        "its signal file upload.dat was not uploaded": [("upload.hea", record["upload.hea"])],
        "corrupt": [
            ("upload.hea", record["upload.hea"]),
            ("upload.dat", record["upload.dat"][:999]),
        ],
        "8-lead": [("eight.hea", eight_hea.read_bytes()), ("eight.dat", eight_dat.read_bytes())],
        "upload limit": [
            ("upload.hea", record["upload.hea"]),
            ("upload.dat", b"\0" * (MAX_UPLOAD_BYTES + 1)),
        ],
    }


EXPECTED_ECG_MESSAGES = {
    "wrong file type": "wrong file type (.png)",
    "its signal file upload.dat was not uploaded": "was not uploaded",
    "corrupt": "upload",  # the reader's own reason, checked in the unit test below
    "8-lead": "lead",
    "upload limit": "over the 20 MB upload limit",
}


@pytest.mark.parametrize("case", list(EXPECTED_ECG_MESSAGES))
def test_bad_ecg_upload_gets_a_message_and_the_app_keeps_working(
    app: AppTest, record, case: str, tmp_path: Path
) -> None:
    files = bad_ecg_uploads(record, tmp_path)[case]
    upload_page(app)
    app.file_uploader(key="ecg_upload").set_value(
        [(n, d, "application/octet-stream") for n, d in files]
    )
    app.run()
    assert not app.exception, app.exception
    message = texts(app.error)
    assert message.startswith("ECG refused:") and EXPECTED_ECG_MESSAGES[case] in message
    assert not result_images(app)
    # The same session then takes a good record.
    app.file_uploader(key="ecg_upload").set_value(
        [(name, data, "application/octet-stream") for name, data in record.items()]
    )
    app.run()
    assert not app.exception and not app.error
    assert len(result_images(app)) == 10


@pytest.mark.parametrize(
    ("csv", "expected"),
    [
        (
            labs_csv([("50000", "1.0"), ("99999", "2"), ("Troponin Z", "3")]),
            "unknown labs 99999, Troponin Z",
        ),
        (
            labs_csv([("50000", "high"), ("50001", "___")]),
            "values must be numbers: line 2 (Lab 0: 'high')",
        ),
        (b"name;result\nx;1\n", "columns itemid or label, and value expected"),
    ],
    ids=["unknown labs", "text values", "wrong columns"],
)
def test_bad_labs_csv_gets_a_message_and_the_app_keeps_working(
    app: AppTest, record, csv: bytes, expected: str
) -> None:
    upload_page(app)
    app.file_uploader(key="ecg_upload").set_value(
        [(name, data, "application/octet-stream") for name, data in record.items()]
    )
    app.file_uploader(key="labs_upload").set_value(("labs.csv", csv, "text/csv"))
    app.run()
    assert not app.exception, app.exception
    assert expected in texts(app.error)
    assert len(result_images(app)) == 10  # the ECG still searches, with the form's labs


def test_oversized_labs_csv_is_refused(app: AppTest, record) -> None:
    upload_page(app)
    big = labs_csv([("50000", "1")]) + b"#" * MAX_UPLOAD_BYTES
    app.file_uploader(key="labs_upload").set_value(("labs.csv", big, "text/csv"))
    app.run()
    assert not app.exception
    assert "over the 20 MB upload limit" in texts(app.error)


# ---------------------------------------------------------------------------------------
# Report page, bad runs


def test_report_page_without_and_with_a_report(app: AppTest, runs) -> None:
    app.run()
    app.switch_page("app_pages/report.py").run()
    assert not app.exception
    assert "No evaluation report" in texts(app.info)
    report = runs[1] / "report"
    report.mkdir(exist_ok=True)
    from PIL import Image

    Image.new("L", (40, 30), 128).save(report / "accuracy.png")
    Image.new("L", (40, 30), 30).save(report / "ranks.png")
    (report / "report.md").write_text(
        "# Retrieval report\n\nTop-1 0.42\n\n![accuracy](accuracy.png)\n"
    )
    try:
        app.run()
        assert not app.exception
        assert "Top-1 0.42" in texts(app.markdown)
        assert "accuracy" in captions(app) and "ranks.png" in captions(
            app
        )  # linked and unlinked plots
    finally:
        for path in report.iterdir():
            path.unlink()
        report.rmdir()


def test_missing_run_is_a_message_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(RUN_ENV, str(tmp_path / "nowhere"))
    app = AppTest.from_file(ENTRY, default_timeout=TIMEOUT).run()
    assert not app.exception
    assert "no such run directory" in texts(app.error)
    monkeypatch.delenv(RUN_ENV)
    app = AppTest.from_file(ENTRY, default_timeout=TIMEOUT).run()
    assert "No run given" in texts(app.error)


def test_a_new_checkpoint_rebuilds_the_stale_index(app: AppTest, runs, tmp_path: Path) -> None:
    from _app_run import make_run

    data = runs[0]
    run = make_run(tmp_path / "fresh", data, "symile", seed=3)
    app.run()  # warm the cache for the module's run, then serve another
    monkeypatch_env = {RUN_ENV: str(run)}
    import os

    os.environ.update(monkeypatch_env)
    try:
        first = AppTest.from_file(ENTRY, default_timeout=TIMEOUT).run()
        sha = json.loads((run / "index" / "index.json").read_text())["checkpoint_sha256"]
        make_run(run, data, "symile", seed=4)  # a newer checkpoint over the same run
        second = AppTest.from_file(ENTRY, default_timeout=TIMEOUT).run()
    finally:
        os.environ[RUN_ENV] = str(runs[1])
    assert not first.exception and not second.exception
    assert "index was built when this run was loaded" in texts(second.info)
    assert json.loads((run / "index" / "index.json").read_text())["checkpoint_sha256"] != sha


# ---------------------------------------------------------------------------------------
# The parsing functions on their own


def test_run_dir_comes_from_the_script_arguments_or_the_environment(runs) -> None:
    assert run_dir_from_args(["--run", "a/b"], {}) == Path("a/b")
    assert run_dir_from_args(["--run=c"], {RUN_ENV: "d"}) == Path("c")
    assert run_dir_from_args([], {RUN_ENV: "d"}) == Path("d")
    assert run_dir_from_args([], {}) is None
    assert RunDir(runs[1]).comparisons() == [("CLIP", RunDir(runs[1] / "../clip"))]


def test_uploaded_record_equals_the_dataset_reader(record, tmp_path: Path) -> None:
    from preprocessing.ecg import load_ecg_record, normalise_ecg

    ecg = read_ecg_upload(list(record.items()), "minmax")
    for name, data in record.items():
        (tmp_path / name).write_bytes(data)
    expected = load_ecg_record(tmp_path / "upload")
    np.testing.assert_array_equal(ecg.millivolts, expected)
    np.testing.assert_array_equal(ecg.normalised, normalise_ecg(expected, "minmax"))


def test_corrupt_record_reason_names_the_problem(record) -> None:
    with pytest.raises(UploadError) as error:
        read_ecg_upload(
            [("upload.hea", record["upload.hea"]), ("upload.dat", record["upload.dat"][:999])],
            "minmax",
        )
    assert error.value.name == "upload.hea" and error.value.reason


def test_zip_with_paths_outside_is_flattened_not_followed(record) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../../etc/upload.hea", record["upload.hea"])
        archive.writestr("x/upload.dat", record["upload.dat"])
    ecg = read_ecg_upload([("a.zip", buffer.getvalue())], "minmax")
    assert ecg.millivolts.shape == (12, 5000)


def test_labs_csv_by_label_is_case_insensitive_and_empty_is_missing() -> None:
    spec = [{"itemid": 50912, "label": "Creatinine"}, {"itemid": 50983, "label": "Sodium"}]
    values = read_labs_csv(
        "l.csv", labs_csv([("creatinine", "1.1"), ("Sodium", "")], "label"), spec
    )
    assert values == {50912: 1.1}


def test_labs_csv_refuses_a_label_that_names_two_labs() -> None:
    """MIMIC-IV labels repeat across fluids: a label must not silently pick one of them."""
    spec = [
        {"itemid": 50931, "label": "Glucose", "fluid": "Blood"},
        {"itemid": 51478, "label": "Glucose", "fluid": "Urine"},
    ]
    with pytest.raises(UploadError, match="51478"):
        read_labs_csv("l.csv", labs_csv([("Glucose", "90")], "label"), spec)
    by_itemid = read_labs_csv("l.csv", labs_csv([("50931", "90")], "itemid"), spec)
    assert by_itemid == {50931: 90.0}


def test_rank_candidates_matches_a_full_sort() -> None:
    import pandas as pd

    from app.web.queries import rank_candidates
    from symile_clinical.search.index import CandidateIndex

    rng = np.random.default_rng(4)
    embeddings = rng.standard_normal((60, 8)).astype(np.float32)
    embeddings[7] = embeddings[3]  # a tie: the lower position ranks first
    index = CandidateIndex(embeddings, pd.DataFrame({"row": range(60)}), np.zeros((60, 2, 2)), {})
    ecg, labs = rng.standard_normal((2, 8)).astype(np.float32)
    for pool in (None, np.array([50, 7, 3, 12, 40, 1])):
        positions = np.arange(60) if pool is None else pool
        scores = [float(np.dot(ecg * labs, embeddings[p])) for p in positions]
        order = sorted(range(len(positions)), key=lambda i: (-scores[i], positions[i]))
        weights = np.exp(5.0 * np.array(scores) - max(5.0 * np.array(scores)))
        ranking = rank_candidates(
            index, "symile", 5.0, ecg, labs, k=4, pool=pool, true_position=7, observed=np.ones(3)
        )
        np.testing.assert_array_equal(ranking.positions, positions[order[:4]])
        np.testing.assert_allclose(
            ranking.probabilities, (weights / weights.sum())[order[:4]], rtol=1e-5
        )
        assert ranking.true_rank == [positions[i] for i in order].index(7) + 1
        assert ranking.pool_size == len(positions)


def test_admission_ecg_reads_the_ecg_release_preprocess_read(tmp_path: Path) -> None:
    """--ecg-dir outside the MIMIC root: the app finds the record through dataset.json."""
    from app.web.admissions import admission_ecg
    from preprocessing.pipeline import PreprocessConfig, _dataset_json

    ecg_dir = tmp_path / "physionet" / "mimic-iv-ecg" / "1.0"
    write_wfdb(ecg_dir / "files/p1000/p10000032/s40689238", "40689238")
    config = PreprocessConfig(mimic_root=tmp_path / "root", out=tmp_path / "out", ecg_dir=ecg_dir)
    dataset = _dataset_json(config, "f", [], {}, {})
    assert dataset["source"]["ecg_dir"] == str(ecg_dir)
    ecg_path = "files/p1000/p10000032/s40689238/40689238"
    signal, unit = admission_ecg(dataset, ecg_path, np.zeros((12, 5000), np.float16))
    assert unit == "mV" and signal.shape == (12, 5000) and np.ptp(signal) > 0.1


@pytest.fixture(autouse=True)
def _restore_main_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """AppTest runs scripts as __main__ and leaves it swapped; later tests that spawn
    processes (DDP, worker pools) would re-run that script in their children."""
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])


def _choose_k_script() -> None:
    import streamlit as st

    from app.web.views import choose_k

    for size in (1, 3, 200):
        st.session_state[f"k_{size}"] = choose_k(st, size, key=f"slider_{size}")


def test_k_is_chosen_for_any_pool_size_including_one_candidate() -> None:
    at = AppTest.from_function(_choose_k_script).run()
    assert not at.exception
    assert at.session_state["k_1"] == 1  # no slider: Streamlit refuses min == max
    assert at.session_state["k_3"] == 3 and at.session_state["k_200"] == 10
    sliders = {s.key: s for s in at.slider}
    assert set(sliders) == {"slider_3", "slider_200"}
    assert sliders["slider_200"].max == 50
