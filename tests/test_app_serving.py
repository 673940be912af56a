"""What the server shares between sessions and prepares per admission: one loaded run per
process, admissions built once, lab attribution in one pass equal to masking one lab at a
time, images drawn straight to PNG."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from _app_run import make_runs
from PIL import Image

from app.web.admissions import AdmissionCache
from app.web.figures import HEIGHT, WIDTH, ecg_png, thumbnail_png
from app.web.queries import Query, lab_effects, masked_lab_queries
from app.web.run_context import run_stamp, served_run
from symile_clinical.evaluation.embedding import embed_query
from symile_clinical.objective.similarity import query_vector


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_runs(tmp_path_factory.mktemp("serving"))


def test_sessions_share_one_loaded_run_until_its_files_change(runs) -> None:
    _, run, _ = runs
    first = served_run(run)
    assert served_run(run, run_stamp(run)) is first  # every session: the same model/index
    assert first.comparisons and first.comparisons[0].label == "CLIP"
    changed = tuple(s + 1 for s in run_stamp(run))  # as if a new checkpoint were written
    assert served_run(run, changed) is not first


def test_an_admission_is_built_once_and_matches_the_split(runs) -> None:
    _, run, _ = runs
    context = served_run(run)
    admission = context.admission(3)
    assert context.admission(3) is admission
    arrays = context.arrays
    np.testing.assert_array_equal(admission.query.labs, np.asarray(arrays.labs[3], np.float32))
    ecg, labs = embed_query(
        context.run.model, admission.query.ecg, admission.query.labs, admission.query.observed
    )
    np.testing.assert_allclose(admission.embeddings["Symile"][0], ecg, atol=1e-5)
    np.testing.assert_allclose(admission.embeddings["Symile"][1], labs, atol=1e-5)
    assert admission.true_positions["Symile"] == int(context.index.positions_of_rows([3])[0])
    assert Image.open(io.BytesIO(admission.ecg_image)).size == (WIDTH, HEIGHT)
    assert len(admission.labs) == len(context.labs_spec)


def test_split_queries_are_embedded_once_for_the_app_and_the_index(runs) -> None:
    """embed_queries (batched, rows in any order) equals one admission at a time, and the
    index's recall-check query vectors are built from it."""
    from symile_clinical.evaluation.embedding import embed_queries
    from symile_clinical.search.index import split_query_vectors

    _, run, _ = runs
    context = served_run(run)
    rows = np.array([5, 0, 3])
    ecg, labs = embed_queries(context.run.model, context.arrays, rows, batch_size=2)
    for i, row in enumerate(rows):
        query = context.split_query(int(row))
        one = embed_query(context.run.model, query.ecg, query.labs, query.observed)
        np.testing.assert_allclose(ecg[i], one[0], atol=1e-5)
        np.testing.assert_allclose(labs[i], one[1], atol=1e-5)
    split = str(context.index.info["split"])
    vectors = split_query_vectors(context.run, context.dataset, split, limit=4)
    embedded = [context.query_embeddings(row) for row in range(4)]
    expected = query_vector(context.objective, [np.stack(x) for x in zip(*embedded, strict=True)])
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_concurrent_requests_for_a_new_admission_build_it_once() -> None:
    calls = []
    gate = threading.Event()

    def build(row: int):
        calls.append(row)
        gate.wait(5)
        return ("admission", row)

    cache = AdmissionCache(build, max_entries=2)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(7))) for _ in range(8)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join()
    assert calls == [7] and results == [("admission", 7)] * 8
    cache.get(1), cache.get(2)
    assert len(cache) == 2  # least recently used dropped


def test_lab_attribution_in_one_pass_equals_masking_one_lab_at_a_time(runs) -> None:
    _, run, _ = runs
    context = served_run(run)
    model, fill = context.run.model, context.fill
    query = Query(
        ecg=np.asarray(context.arrays.ecg[5], np.float32),
        labs=np.asarray(context.arrays.labs[5], np.float32),
        observed=np.ones(len(fill), np.float32),  # every lab observed
    )
    candidate = context.index.embeddings[2]
    labels = [f"lab {i}" for i in range(len(fill))]
    table = lab_effects(
        masked_lab_queries(model, "symile", query, fill=fill), query, candidate, labels, top=99
    )

    def score(labs: np.ndarray, observed: np.ndarray) -> float:
        e, lab = embed_query(model, query.ecg, labs, observed)
        return float(query_vector("symile", [e[None], lab[None]])[0] @ candidate)

    full = score(query.labs, query.observed)
    for i in range(len(fill)):
        labs, observed = query.labs.copy(), query.observed.copy()
        labs[i], observed[i] = fill[i], 0.0
        expected = score(labs, observed) - full
        got = float(table.loc[table["lab"] == labels[i], "score_change"].iloc[0])
        assert got == pytest.approx(expected, abs=1e-4)
    # Sorted by the size of the change; no observed lab: an empty table.
    assert list(table["score_change"].abs()) == sorted(table["score_change"].abs(), reverse=True)
    none = Query(query.ecg, query.labs, np.zeros_like(query.observed))
    assert lab_effects(masked_lab_queries(model, "symile", none), none, candidate, labels).empty


def test_images_are_png_bytes_of_the_stored_pixels() -> None:
    thumb = np.arange(96 * 96, dtype=np.uint8).reshape(96, 96)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(thumbnail_png(thumb)))), thumb)
    t = np.arange(5000) / 500
    signal = np.stack([np.sin(2 * np.pi * t * (1 + lead)) for lead in range(12)]).astype(np.float32)
    image = Image.open(io.BytesIO(ecg_png(signal, 500.0, "mV")))
    assert image.format == "PNG" and image.size == (WIDTH, HEIGHT)
    pixels = np.asarray(image.convert("L"))
    assert (pixels < 50).mean() > 0.005  # the traces are drawn
    flat = ecg_png(np.zeros((12, 5000), np.float32), 500.0, "normalised")  # no division by 0
    assert Image.open(io.BytesIO(flat)).size == (WIDTH, HEIGHT)


def test_positions_of_rows_refuses_a_row_the_index_does_not_hold(runs) -> None:
    _, run, _ = runs
    index = served_run(run).index
    rows = index.metadata["row"].to_numpy()
    np.testing.assert_array_equal(index.positions_of_rows(rows[::-1]), np.arange(len(rows))[::-1])
    with pytest.raises(KeyError):
        index.positions_of_rows(np.array([10_000]))


def test_result_thumbnails_are_data_uris_of_the_stored_pixels(runs) -> None:
    import base64

    _, run, _ = runs
    context = served_run(run)
    uri = context.thumbnail_uri(4)
    assert uri.startswith("data:image/png;base64,")
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    np.testing.assert_array_equal(pixels, np.asarray(context.index.thumbnails[4]))


def test_the_ecg_envelope_keeps_every_column_extreme_in_trace_order() -> None:
    from app.web.figures import envelope

    rng = np.random.default_rng(3)
    signal = rng.normal(size=(12, 5000)).astype(np.float32)
    signal[4, 1234] = 25.0  # a one-sample spike must survive the reduction
    x, traces = envelope(signal, 480)
    assert traces.shape == (12, 960) and x.shape == (960,)
    np.testing.assert_array_equal(traces.max(axis=1), signal.max(axis=1))
    np.testing.assert_array_equal(traces.min(axis=1), signal.min(axis=1))
    assert (np.diff(x) >= 0).all() and x[0] == 0 and x[-1] == 4999
    columns = traces.reshape(12, 480, 2)
    for lead, column in ((4, 118), (0, 7)):
        start, end = int(x[2 * column]), int(x[2 * column + 1])
        part = signal[lead, start : end + 1]
        assert set(columns[lead, column]) == {part.min(), part.max()}
        # Low first where the trace rises over the column, high first where it falls.
        assert (columns[lead, column, 0] == part.min()) == (part[0] <= part[-1])
    short = signal[:, :700]  # fewer than two samples per column: drawn as it is
    x_short, same = envelope(short, 480)
    assert same is short and len(x_short) == 700


def test_labs_tables_are_markdown_with_missing_values_empty() -> None:
    import pandas as pd

    from app.web.markdown import labs_markdown

    table = pd.DataFrame(
        {"lab": ["Na|K", "Hb"], "percentile": [0.25, None], "status": ["observed", "missing"]}
    )
    lines = labs_markdown(table).splitlines()
    assert lines[:2] == ["| lab | percentile | status |", "|---|---|---|"]
    assert lines[2:] == ["| Na\\|K | 0.25 | observed |", "| Hb |  | missing |"]
