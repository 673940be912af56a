"""`symile-clinical demo` end to end on a tiny cohort: every step runs, then every step is
current and skipped; changing one setting re-runs only what depends on it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from app.workflows.demo import DemoConfig, run_demo
from symile_clinical.formats.run_dir import RunDir
from symile_clinical.search.index import load_index


@pytest.mark.slow
def test_demo_runs_every_step_then_skips_what_is_current(tmp_path: Path) -> None:
    config = DemoConfig(
        out=tmp_path / "demo",
        admissions=180,  # about 80 training rows: more than one batch of 64
        cxr_max_size=64,
        cxr_size=32,
        epochs=1,
        n_bootstrap=20,
        workers=1,
        pretrain_admissions=180,
        pretrain_epochs=1,
        progress=False,
    )
    first = run_demo(config)
    assert first.ran == (
        "synth",
        "preprocess",
        "labels",
        "pretrain-own",
        "train-symile",
        "train-clip",
        "evaluate",
        "index-symile",
        "index-clip",
    )
    metrics = json.loads((first.symile_run / "report" / "metrics.json").read_text())
    assert metrics["n_queries"] > 0
    assert (first.symile_run / "report" / "report.md").is_file()
    for run in (first.symile_run, first.clip_run):
        assert len(load_index(run)) == metrics["pool_size"]
    assert RunDir(first.symile_run).comparisons() == [
        ("CLIP", RunDir(first.symile_run / "../clip"))
    ]

    # The encoders learnt from labels derived from the demo cohort's own label sources, on its
    # train split (the default, chosen on validation); the report says so.
    weights = (config.out / "encoders-own.pt").resolve()
    for run in (first.symile_run, first.clip_run):  # both objectives start from the encoders
        assert RunDir(run).read_config().encoder_weights == str(weights)
    report = (first.symile_run / "report" / "report.md").read_text()
    assert report.count("encoders pretrained on labels derived from the cohort's") == 2

    assert run_demo(config).ran == ()
    assert run_demo(replace(config, n_bootstrap=30)).ran == ("evaluate",)
    # Other pretraining: the encoders, then everything trained from them, again.
    assert run_demo(replace(config, n_bootstrap=30, pretrain_epochs=2)).ran == (
        "pretrain-own",
        "train-symile",
        "train-clip",
        "evaluate",
        "index-symile",
        "index-clip",
    )


def test_the_demo_refuses_to_pretrain_on_its_own_cohort(tmp_path: Path) -> None:
    from symile_clinical.errors import UsageError

    with pytest.raises(UsageError, match="pretraining cohort's seed"):
        run_demo(DemoConfig(out=tmp_path / "demo", seed=7, pretrain_on="separate", progress=False))
    assert not (tmp_path / "demo").exists()
