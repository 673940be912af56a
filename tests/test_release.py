"""The published Symile-MIMIC release: import, the authors' model, evaluation, app, cohorts.

A miniature release is written by tests/_release_factory.py in the released layout, names
and dtypes (the reference scripts' conventions), with a small-d Lightning checkpoint of the
reference architecture (paths and a Namespace in hyper_parameters) and one carrying a code
payload. The import, the model and the evaluation are checked against the factory's
independent reimplementation of the reference model and its zero-shot retrieval.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _release_factory import (
    MIMIC_LEADS,
    RefModel,
    reference_accuracy,
    reference_retrieval,
    release_without_column,
    write_release,
)

from models import ModelConfig, build_model
from models.reference_mimic import (
    CANONICAL_LEADS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    REFERENCE_LEADS,
    SymileMIMICReference,
)
from preprocessing import layout
from preprocessing import symile_mimic_release as release_format
from preprocessing.compare_cohort import compare_cohort, write_comparison
from preprocessing.symile_mimic_release import (
    ReleaseError,
    SymileMimicRelease,
    import_release_dataset,
)
from symile_clinical.cli import main
from symile_clinical.evaluation.embedding import embed_split
from symile_clinical.evaluation.retrieval import rank_queries
from symile_clinical.formats.dataset_dir import DatasetDir
from symile_clinical.formats.lightning_checkpoint import (
    LightningCheckpointError,
    read_lightning_checkpoint,
)
from symile_clinical.formats.run_dir import RunDir
from symile_clinical.objective.similarity import mip_scores

D = 16
K = 5
TIMEOUT = 90


@pytest.fixture(scope="module")
def mini(tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("release")
    return write_release(root / "symile-mimic", k=K, d=D, payload_marker=root / "PWNED")


@pytest.fixture(scope="module")
def imported(mini, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imported")
    assert main(["import-release", "--release", str(mini.root), "--out", str(out)]) == 0
    return out


def _ref_model(mini) -> RefModel:
    state = read_lightning_checkpoint(mini.checkpoint).state_dict
    model = RefModel(D, 0.0)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _minmax(signal: np.ndarray) -> np.ndarray:
    return 2 * (signal - signal.min()) / (signal.max() - signal.min()) - 1


# ---------------------------------------------------------------------------------------
# The checkpoint and the model


def test_lightning_checkpoint_loads_strictly_into_the_reference_architecture(mini) -> None:
    content = read_lightning_checkpoint(mini.checkpoint)
    hyper = content.hyper_parameters
    assert hyper["data_dir"] == "/data/symile-mimic" and hyper["save_dir"] == "/results"
    assert hyper["args"] == {"d": D, "data_dir": "/data", "seed": 0}  # a Namespace, as a dict
    assert (content.epoch, content.global_step, content.lightning_version) == (41, 1512, "2.2.1")
    model = build_model(ModelConfig(arch="symile_mimic_reference", embed_dim=D))
    assert isinstance(model, SymileMIMICReference)
    model.load_state_dict(content.state_dict, strict=True)
    assert set(model.state_dict()) == set(RefModel(D, 0.0).state_dict())
    json.dumps(hyper)  # plain values only


def test_a_checkpoint_carrying_code_is_refused_without_running_it(mini, tmp_path) -> None:
    payload = mini.root / "payload.ckpt"
    with pytest.raises(LightningCheckpointError) as error:
        read_lightning_checkpoint(payload)
    message = str(error.value)
    assert str(payload) in message and "system" in message
    assert "weights_only=False" not in message and "weights_only" not in message
    assert not (mini.root.parent / "PWNED").exists()
    out = tmp_path / "out"
    args = ["import-release", "--release", str(mini.root), "--out", str(out)]
    assert main([*args, "--checkpoint", str(payload)]) == 1
    assert not (out / "run" / "config.json").exists()
    assert not (mini.root.parent / "PWNED").exists()


def test_lead_order_and_imagenet_constants_agree_across_homes() -> None:
    assert CANONICAL_LEADS == layout.CANONICAL_ECG_LEADS
    assert REFERENCE_LEADS == layout.MIMIC_ECG_LEADS == MIMIC_LEADS
    assert IMAGENET_MEAN == release_format.IMAGENET_MEAN
    assert IMAGENET_STD == release_format.IMAGENET_STD


@torch.no_grad()
def test_the_model_turns_our_stored_formats_into_what_the_reference_saw(mini, imported) -> None:
    ours = build_model(ModelConfig(arch="symile_mimic_reference", embed_dim=D))
    ours.load_state_dict(read_lightning_checkpoint(mini.checkpoint).state_dict, strict=True)
    ours.eval()
    ref = _ref_model(mini)
    arrays = DatasetDir(imported / "dataset").split("test")
    batch = arrays.batch(np.arange(3))
    folder = mini.root / "data_npy" / "test"
    cxr = torch.from_numpy(np.load(folder / "cxr_test.npy")[:3])
    ecg = torch.from_numpy(np.load(folder / "ecg_test.npy")[:3])
    pct = torch.from_numpy(np.load(folder / "labs_percentiles_test.npy")[:3])
    miss = torch.from_numpy(np.load(folder / "labs_missingness_test.npy")[:3])
    # uint8 grey -> ImageNet RGB is exact up to float32 rounding.
    torch.testing.assert_close(
        ours.encode_cxr(batch["cxr"]), ref.cxr_encoder(cxr), atol=2e-5, rtol=0
    )
    # The stored float16 ECG (rounding <= 2.5e-4) moves the embedding a little.
    torch.testing.assert_close(
        ours.encode_ecg(batch["ecg"]), ref.ecg_encoder(ecg), atol=5e-3, rtol=0
    )
    labs = torch.cat([pct, miss.float()], dim=1)
    torch.testing.assert_close(
        ours.encode_labs(batch["labs"], batch["labs_observed"]), ref.labs_encoder(labs)
    )
    # A square CXR of another size is resized to 320 first (the reference's resize + crop).
    small = torch.nn.functional.interpolate(batch["cxr"], size=(160, 160), mode="area")
    assert ours.encode_cxr(small).shape == (3, D)


# ---------------------------------------------------------------------------------------
# The dataset import


def test_import_writes_the_release_as_our_dataset(mini, imported) -> None:
    dataset = DatasetDir(imported / "dataset")
    assert dataset.info["splits"] == {"train": 16, "val": 6, "test": 7}
    itemids = [lab["itemid"] for lab in dataset.labs_spec]
    assert itemids == sorted(itemids) and len(itemids) == 50
    means = json.loads((mini.root / "labs_means.json").read_text())
    assert dataset.fill_values.tolist() == pytest.approx(
        [means[f"{i}_percentile"] for i in itemids]
    )
    train_csv = pd.read_csv(mini.root / "train.csv")
    spec = dataset.labs_spec[0]
    assert spec["cdf_values"] == sorted(train_csv[str(spec["itemid"])].dropna().tolist())
    assert spec["percentile_rule"] == "ecdf_right"
    manifest = dataset.manifest("test")
    test_csv = pd.read_csv(mini.root / "test.csv")
    queries = test_csv[test_csv["label"] == 1].reset_index(drop=True)
    assert manifest["hadm_id"].tolist() == queries["hadm_id"].tolist()
    truth = mini.cohort.set_index("hadm_id").loc[manifest["hadm_id"]]
    assert manifest["dicom_id"].tolist() == truth["cxr_dicom_id"].tolist()
    assert manifest["ecg_study_id"].tolist() == truth["ecg_study_id"].tolist()
    assert manifest["cxr_time"].tolist() == pd.to_datetime(truth["cxr_StudyDateTime"]).tolist()
    arrays = dataset.split("test")
    canonical = [MIMIC_LEADS.index(name) for name in layout.CANONICAL_ECG_LEADS]
    for row, hadm in enumerate(manifest["hadm_id"]):
        assert np.array_equal(arrays.cxr[row, 0], mini.grey[int(hadm)])  # lossless
        expected = _minmax(mini.ecg_mv[int(hadm)])[:, canonical].T
        np.testing.assert_allclose(arrays.ecg[row].astype(np.float32), expected, atol=3e-4)
        present = queries.loc[row, [str(i) for i in itemids]].notna().to_numpy()
        assert np.array_equal(arrays.labs_observed[row].astype(bool), present)
    # Candidates exactly as released: the query first, then its negatives in file order.
    sets = dataset.candidates("test")
    row_of = {int(h): r for r, h in enumerate(manifest["hadm_id"])}
    for q, hadm in enumerate(manifest["hadm_id"]):
        negatives = test_csv[(test_csv["label_hadm_id"] == hadm) & (test_csv["label"] == 0)]
        expected = [row_of[int(hadm)], *(row_of[int(h)] for h in negatives["hadm_id"])]
        assert sets.candidate_rows[q].tolist() == expected and sets.true_position[q] == 0
    assert dataset.candidates("val").k == K  # val's candidates come from val_retrieval (.pt)
    report = json.loads(dataset.report_path.read_text())
    assert report["checks"]["cxr_grey_max_error_levels"] < 1e-3
    assert report["checks"]["percentile_rule_max_error"] < 1e-6
    assert not (dataset.path / ".import").exists()


def test_a_finished_import_is_skipped_and_another_dataset_is_not_overwritten(
    mini, imported, tmp_path
) -> None:
    before = (imported / "dataset" / "dataset.json").stat().st_mtime_ns
    summary = import_release_dataset(
        SymileMimicRelease(mini.root), DatasetDir(imported / "dataset"), progress=False
    )
    assert summary.skipped and (imported / "dataset" / "dataset.json").stat().st_mtime_ns == before
    other = tmp_path / "other"
    shutil.copytree(imported / "dataset", other)
    info = json.loads((other / "dataset.json").read_text())
    info["source"] = {"kind": "preprocess"}
    (other / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(ReleaseError, match="another dataset"):
        import_release_dataset(SymileMimicRelease(mini.root), DatasetDir(other), progress=False)
    (other / "dataset.json").unlink()  # an unfinished folder that no import of ours began
    with pytest.raises(ReleaseError, match="not an unfinished import of this release"):
        import_release_dataset(SymileMimicRelease(mini.root), DatasetDir(other), progress=False)


def test_an_import_that_fails_midway_resumes_from_its_last_chunk(
    mini, imported, tmp_path, caplog
) -> None:
    release = tmp_path / "release"
    shutil.copytree(mini.root, release, ignore=shutil.ignore_patterns("*.ckpt"))
    cxr_file = release / "data_npy" / "train" / "cxr_train.npy"
    cxr = np.load(cxr_file, mmap_mode="r+")
    kept = np.array(cxr[10])
    cxr[10, 0, 5, 5] += 1.0  # a colour pixel: not a grey image, so the import stops there
    cxr.flush()
    del cxr
    dataset = DatasetDir(tmp_path / "dataset")
    with pytest.raises(ReleaseError, match=r"cxr_train\.npy.*grey"):
        import_release_dataset(SymileMimicRelease(release), dataset, chunk_rows=4, progress=False)
    progress = json.loads((dataset.path / ".import" / "train.cxr.json").read_text())
    assert progress["rows_done"] == 8  # rows 0-7 committed, the chunk 8-11 failed
    assert not dataset.is_complete()
    cxr = np.load(cxr_file, mmap_mode="r+")
    cxr[10] = kept
    cxr.flush()
    del cxr
    with caplog.at_level("INFO", logger="preprocessing.symile_mimic_release"):
        import_release_dataset(SymileMimicRelease(release), dataset, chunk_rows=4, progress=False)
    assert "resuming train/cxr.npy at row 8" in caplog.text
    clean = DatasetDir(imported / "dataset")
    for split in ("train", "val", "test"):
        for name in ("cxr", "ecg", "labs", "labs_observed"):
            assert np.array_equal(
                np.load(dataset.array_path(split, name)), np.load(clean.array_path(split, name))
            ), (split, name)


def _rewrite(path: Path, change) -> None:
    array = np.load(path)
    np.save(path, change(array))


@pytest.mark.parametrize(
    ("file", "change", "reason"),
    [
        ("data_npy/test/ecg_test.npy", lambda a: a[:, :, :4000], "shape"),
        ("data_npy/test/labs_missingness_test.npy", lambda a: 1 - a, "1 = observed"),
        ("data_npy/test/labs_missingness_test.npy", lambda a: a[:, ::-1].copy(), "1 = observed"),
        ("data_npy/test/hadm_id_test.npy", lambda a: a[::-1].copy(), "row order"),
        ("data_npy/train/cxr_train.npy", lambda a: a + 0.001, "grey"),
    ],
)
def test_a_release_that_breaks_its_conventions_is_refused_naming_the_file(
    mini, tmp_path, file, change, reason
) -> None:
    release = tmp_path / "release"
    shutil.copytree(mini.root, release, ignore=shutil.ignore_patterns("*.ckpt"))
    _rewrite(release / file, change)
    with pytest.raises(ReleaseError, match=reason) as error:
        import_release_dataset(
            SymileMimicRelease(release), DatasetDir(tmp_path / "out"), progress=False
        )
    assert Path(file).name in str(error.value)


@pytest.mark.parametrize(
    ("csv_name", "column"),
    [
        ("train.csv", "ecg_path"),
        ("train.csv", "cxr_path"),
        ("val.csv", "ecg_path"),
        ("test.csv", "cxr_path"),
        ("train.csv", "subject_id"),
        ("val.csv", "hadm_id"),
        ("val_retrieval.csv", "subject_id"),
        ("test.csv", "label"),
        ("val_retrieval.csv", "label_hadm_id"),
        ("train.csv", "51221"),  # a lab's raw values (labs_means.json lists it)
        ("test.csv", "50813"),
        ("symile_mimic_data.csv", "hadm_id"),
    ],
)
def test_a_csv_without_a_column_the_import_reads_exits_1_naming_file_and_column(
    mini, tmp_path, caplog, csv_name, column
) -> None:
    release = release_without_column(mini.root, tmp_path / "release", csv_name, column)
    out = tmp_path / "out"
    with caplog.at_level("ERROR"):
        assert main(["import-release", "--release", str(release), "--out", str(out)]) == 1
    assert f"{release / csv_name}: no column {column}" in caplog.text
    assert "Traceback" not in caplog.text and not (out / "dataset" / "dataset.json").exists()


def test_a_folder_that_is_not_a_release_lists_what_is_missing(tmp_path) -> None:
    (tmp_path / "train.csv").write_text("subject_id,hadm_id\n")
    with pytest.raises(ReleaseError, match=r"labs_means\.json.*val\.csv"):
        SymileMimicRelease(tmp_path).check_complete()
    assert main(["import-release", "--release", str(tmp_path), "--out", str(tmp_path / "o")]) == 1


# ---------------------------------------------------------------------------------------
# Evaluation against the reference's zero-shot retrieval


def test_evaluate_reproduces_the_reference_zero_shot_retrieval(mini, imported) -> None:
    run = imported / "run"
    assert main(["evaluate", "--run", str(run), "--bootstrap", "50", "--examples", "0"]) == 0
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    ours = metrics["runs"][0]
    reference = reference_retrieval(mini.root, "test", d=D)
    # The reference's score, exp(logit_scale) * <r_ecg * r_labs, r_cxr>, on its float32 tensors,
    # against our MIP path on the imported (uint8 CXR, float16 ECG) arrays.
    loaded = RunDir(run).load()
    dataset = DatasetDir(imported / "dataset")
    arrays = dataset.split("test")
    emb = embed_split(loaded.model, arrays)
    sets = dataset.candidates("test")
    ranks = rank_queries("symile", emb.ecg, emb.labs, emb.cxr, sets, seed=0)
    scale = float(loaded.model.logit_scale.detach().exp())
    hadm = dataset.manifest("test")["hadm_id"].to_numpy()
    ref_scores = np.array([reference[int(hadm[q])] for q in sets.query_rows])
    np.testing.assert_allclose(scale * ranks.candidate_scores, ref_scores, rtol=1e-2, atol=1e-2)
    # mip_scores is the same product.
    e, lab, c = (torch.from_numpy(x) for x in (emb.ecg, emb.labs, emb.cxr))
    direct = scale * mip_scores(c, [e, lab]).numpy()
    np.testing.assert_allclose(
        direct[np.arange(len(sets))[:, None], sets.candidate_rows],
        scale * ranks.candidate_scores,
        rtol=1e-5,
        atol=1e-5,
    )
    # Every query's ranking is the reference's: the margins exceed the float16 perturbation.
    ref_rank = 1 + (ref_scores > ref_scores[:, :1]).sum(axis=1)
    gap = np.abs(ref_scores - ref_scores[:, :1])[:, 1:].min()
    assert gap > 5 * np.abs(scale * ranks.candidate_scores - ref_scores).max()
    assert np.bincount(ref_rank - 1, minlength=K).tolist() == ours["candidate_rank_counts"]
    assert ours["candidate_top1"]["estimate"] == pytest.approx(reference_accuracy(reference))
    assert ours["candidate_top1"]["n_resamples"] == 50  # our bootstrap CIs come with it
    assert ours["candidate_top1"]["ci_low"] <= ours["candidate_top1"]["estimate"]


def test_uploads_pass_through_the_reference_transforms(mini, imported, tmp_path) -> None:
    import wfdb

    from app.web.uploads import lab_inputs, read_ecg_upload

    dataset = DatasetDir(imported / "dataset")
    test_csv = pd.read_csv(mini.root / "test.csv")
    query = test_csv[test_csv["label"] == 1].iloc[2]
    values = {
        int(spec["itemid"]): float(query[str(spec["itemid"])])
        for spec in dataset.labs_spec
        if pd.notna(query[str(spec["itemid"])])
    }
    _, percentiles, observed = lab_inputs(values, dataset.labs_spec)
    released = np.load(mini.root / "data_npy" / "test" / "labs_percentiles_test.npy")[2]
    np.testing.assert_allclose(percentiles, released, atol=1e-6)
    np.testing.assert_array_equal(
        observed, np.load(mini.root / "data_npy" / "test" / "labs_missingness_test.npy")[2]
    )
    signal = mini.ecg_mv[int(query["hadm_id"])]
    wfdb.wrsamp(
        "upload",
        fs=500,
        units=["mV"] * 12,
        sig_name=list(MIMIC_LEADS),
        p_signal=signal,
        fmt=["16"] * 12,
        adc_gain=[1000.0] * 12,
        baseline=[0] * 12,
        write_dir=str(tmp_path),
    )
    files = [(f"upload{s}", (tmp_path / f"upload{s}").read_bytes()) for s in (".hea", ".dat")]
    upload = read_ecg_upload(files, dataset.info["ecg"]["normalisation"])
    stored = dataset.split("test").ecg[2].astype(np.float32)
    np.testing.assert_allclose(upload.normalised, stored, atol=2e-3)


# ---------------------------------------------------------------------------------------
# The app


@pytest.fixture(autouse=True)
def _restore_main_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """AppTest runs scripts as __main__ and leaves it swapped (see tests/test_app.py)."""
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])


def test_the_app_queries_an_imported_admission(imported, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    from app.web.run_context import RUN_ENV

    monkeypatch.setenv(RUN_ENV, str(imported / "run"))
    entry = Path(__file__).resolve().parents[1] / "app" / "web" / "main.py"  # the page script
    app = AppTest.from_file(entry, default_timeout=TIMEOUT)
    app.run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    shown = "\n".join(str(m.value) for m in app.markdown)
    assert "True CXR rank:" in shown and f"of {K}" in shown
    scored = [c for image in app.image for c in image.captions if "score" in c]
    assert len(scored) == K  # one thumbnail per released candidate
    assert any("TRUE CXR" in c for c in scored)
    app.selectbox(key="admission").set_value(4).run()
    assert not app.exception, app.exception


# ---------------------------------------------------------------------------------------
# compare-cohort


def _our_dataset(imported: Path, root: Path) -> dict:
    """A dataset shaped like our `preprocess` output over a partly different cohort: their
    val dropped, their train row 0 in our test, their test row 0 in our train, one extra
    admission, one other CXR dicom_id, one lab value changed."""
    source = DatasetDir(imported / "dataset")
    manifest = source.manifest()
    train = manifest[manifest["split"] == "train"].index.tolist()
    test = manifest[manifest["split"] == "test"].index.tolist()
    members = {"train": [*train[1:], test[0]], "val": [], "test": [*test[1:], train[0]]}
    out = DatasetDir(root)
    root.mkdir()
    parts = []
    for split, rows in members.items():
        table = manifest.loc[rows].reset_index(drop=True)
        labs = np.zeros((len(rows), 50), np.float32)
        observed = np.zeros((len(rows), 50), np.uint8)
        for i, index in enumerate(rows):
            arrays = source.split(manifest.loc[index, "split"])
            labs[i] = arrays.labs[manifest.loc[index, "row"]]
            observed[i] = arrays.labs_observed[manifest.loc[index, "row"]]
        if split == "test":  # one admission we did not take from the release
            extra = table.iloc[[0]].assign(hadm_id=29_999_999, subject_id=19_999_999)
            table = pd.concat([table, extra], ignore_index=True)
            labs, observed = np.vstack([labs, labs[:1]]), np.vstack([observed, observed[:1]])
        if split == "train":
            table.loc[0, "dicom_id"] = "another-image"
            column = int(np.flatnonzero(observed[1])[0])
            labs[1, column] = 1.0 - labs[1, column] + 1e-3  # another value than theirs
        table["split"], table["row"] = split, np.arange(len(table))
        out.split_dir(split).mkdir()
        n = len(table)
        np.save(out.array_path(split, "ecg"), np.zeros((n, 12, 8), np.float16))
        np.save(out.array_path(split, "cxr"), np.zeros((n, 1, 4, 4), np.uint8))
        np.save(out.array_path(split, "labs"), labs)
        np.save(out.array_path(split, "labs_observed"), observed)
        parts.append(table)
    pd.concat(parts, ignore_index=True).to_parquet(out.manifest_path, index=False)
    info = dict(source.info, source={"kind": "preprocess"})
    out.dataset_json_path.write_text(json.dumps(info))
    return {"n_ours": sum(len(p) for p in parts)}


def test_compare_cohort_tells_how_our_cohort_agrees_with_the_release(
    imported, mini, tmp_path
) -> None:
    expected = _our_dataset(imported, tmp_path / "ours")
    out = tmp_path / "comparison"
    args = ["compare-cohort", "--release", str(mini.root), "--dataset", str(tmp_path / "ours")]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads((out / "cohort_comparison.json").read_text())
    a = result["admissions"]
    assert a == {
        "theirs": 16 + 6 + 7,
        "ours": expected["n_ours"],
        "both": 16 + 7,
        "theirs_only": 6,
        "ours_only": 1,
    }
    assert result["same_in_both"] == {"subject_id": 23, "ecg_study_id": 23, "cxr_dicom_id": 22}
    labs = result["labs"]
    assert labs["shared"] == 50 and labs["values_equal"] == labs["values_compared"] - 1
    assert labs["theirs_only_observed"] == labs["ours_only_observed"] == 0
    assert result["splits_by_admission"]["their_train"] == {
        "our_train": 15,
        "our_val": 0,
        "our_test": 1,
    }
    assert result["splits_by_admission"]["their_test"]["our_train"] == 1
    assert result["their_train_patients_in_our_test"] == 1
    assert result["their_test_patients_in_our_train"] == 1
    markdown = (out / "cohort_comparison.md").read_text()
    assert "| in both | 23 |" in markdown
    assert "Patients in the release's train split and in our test split: **1**" in markdown


def test_comparing_the_release_with_its_own_import_agrees_everywhere(
    imported, mini, tmp_path
) -> None:
    result = compare_cohort(SymileMimicRelease(mini.root), DatasetDir(imported / "dataset"))
    assert result["admissions"]["both"] == result["admissions"]["theirs"] == 29
    assert set(result["same_in_both"].values()) == {29}
    assert result["labs"]["values_equal"] == result["labs"]["values_compared"] > 0
    assert result["their_train_patients_in_our_test"] == 0
    json_path, md_path = write_comparison(result, tmp_path)
    assert json_path.is_file() and md_path.read_text().startswith("# Our cohort")
