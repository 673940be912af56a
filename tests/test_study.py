"""`symile-clinical study`: a quick study end to end on tiny real cohorts, resumed, reported."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from app.workflows.study import StudyConfig, cohort_dir, ensure_study_cohort, run_study
from symile_clinical.cli import main
from symile_clinical.experiments.study_cells import StudyCell, StudyError, mean_ci, summarise_study

# Small encoders so that each of the study's trainings takes seconds on a CPU.
TINY_RECIPE = """\
preset = "demo"
batch_size = 16
epochs = 1
warmup_steps = 1
[model]
embed_dim = 16
ecg_channels = [4, 8]
ecg_blocks = [1, 1]
ecg_stem_stride = 8
labs_hidden = [16]
cxr_arch = "resnet_tiny"
"""


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One quick study (2 fractions x 1 cohort x 2 objectives x 2 seeds) over tiny cohorts."""
    root = tmp_path_factory.mktemp("study")
    recipe = root / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    config = StudyConfig.quick(
        root / "out",
        admissions=200,
        recipes={"symile": str(recipe), "clip": str(recipe)},
        jobs=1,
        max_steps=2,
        pretrain=True,
        pretrain_on="separate",
        progress=False,
    )
    study = run_study(config)
    # What the cells were trained from (a later test's other recipe pretrains anew).
    encoders = root / "encoders_of_the_study.pt"
    encoders.write_bytes((config.out / "pretrain" / "encoders.pt").read_bytes())
    return {"config": config, "encoders": encoders, **study}


def test_quick_study_writes_every_cell_and_the_report(quick_study: dict) -> None:
    config, summary, files = quick_study["config"], quick_study["summary"], quick_study["files"]
    assert summary["n_runs"] == 2 * 1 * 2 * 2
    assert set(summary["cells"]) == {"0/symile", "0/clip", "1/symile", "1/clip"}
    for name in ("summary", "markdown", "html", "png"):
        assert files[name].exists() and files[name].stat().st_size > 0
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = files["markdown"].read_text()
    assert markdown.startswith("# Symile vs CLIP on synthetic cohorts by joint fraction")
    assert "Symile - CLIP" in markdown and "labs' gain" in markdown
    assert "<table" in files["html"].read_text()
    for result in quick_study["results"]:
        hits = result["hits"]
        n = result["n_test_queries"]
        assert n > 0 and len(hits["full"]) == len(hits["ecg_only"]) == n
        assert result["top1"] == pytest.approx(np.mean(hits["full"]))
        assert result["labs_gain"] == pytest.approx(
            np.mean(hits["full"]) - np.mean(hits["ecg_only"])
        )
    # Each cohort is a real synthesised + preprocessed dataset at its joint fraction.
    synth = json.loads((cohort_dir(config, 1.0, 0) / "mimic" / "synth.json").read_text())
    assert synth["config"]["joint_fraction"] == 1.0
    # --pretrain: encoders from a cohort of their own start every run of both objectives.
    pretrain = config.out / "pretrain"
    synth = json.loads((pretrain / "mimic" / "synth.json").read_text())
    assert (synth["config"]["seed"], synth["config"]["joint_fraction"]) == (7, 0.5)
    weights = str((pretrain / "encoders.pt").resolve())
    assert {r["config"]["encoder_weights"] for r in quick_study["results"]} == {weights}


def test_paired_difference_pairs_by_cohort_and_seed(quick_study: dict) -> None:
    results = quick_study["results"]
    top1 = {(r["joint_fraction"], r["objective"], r["seed"]): r["top1"] for r in results}
    expected = np.mean([top1[(1.0, "symile", s)] - top1[(1.0, "clip", s)] for s in (0, 1)])
    got = quick_study["summary"]["symile_minus_clip"]["1"]["mean"]
    assert got == pytest.approx(expected)


def test_study_resumes_without_retraining_finished_cells(quick_study: dict) -> None:
    config = quick_study["config"]
    runs = Path(config.out) / "runs"
    kept = runs / StudyCell(0.0, 0, "symile", config.recipes["symile"], 0).key
    redone = runs / StudyCell(1.0, 0, "clip", config.recipes["clip"], 1).key
    kept_mtime = (kept / "study_result.json").stat().st_mtime_ns
    checkpoint_mtime = max(p.stat().st_mtime_ns for p in (redone / "checkpoints").iterdir())
    (redone / "study_result.json").unlink()
    (Path(config.out) / "report" / "report.md").unlink()

    again = run_study(config)

    assert (kept / "study_result.json").stat().st_mtime_ns == kept_mtime
    # The finished training is measured again, not retrained.
    assert max(p.stat().st_mtime_ns for p in (redone / "checkpoints").iterdir()) == (
        checkpoint_mtime
    )
    assert (redone / "study_result.json").exists()
    assert again["files"]["markdown"].exists()
    assert again["summary"] == json.loads(json.dumps(quick_study["summary"]))


def test_mean_ci_is_a_t_interval() -> None:
    estimate = mean_ci([0.1, 0.2, 0.3])
    assert estimate["mean"] == pytest.approx(0.2)
    # t(0.975, 2) = 4.303; sd = 0.1; half-width = 4.303 * 0.1 / sqrt(3).
    assert estimate["ci_high"] - estimate["mean"] == pytest.approx(4.3027 * 0.1 / 3**0.5, 1e-3)
    assert np.isnan(mean_ci([0.5])["ci_low"])


def test_summary_of_hand_made_results() -> None:
    def row(f: float, objective: str, seed: int, top1: float, ecg_only: float) -> dict:
        return {
            "joint_fraction": f,
            "cohort_seed": 0,
            "objective": objective,
            "recipe": "r",
            "seed": seed,
            "top1": top1,
            "ecg_only_top1": ecg_only,
            "labs_shuffled_top1": ecg_only,
            "labs_gain": top1 - ecg_only,
            "n_test_queries": 100,
        }

    results = [row(1.0, "symile", s, 0.4 + 0.01 * s, 0.2) for s in range(3)]
    results += [row(1.0, "clip", s, 0.2, 0.2) for s in range(3)]
    summary = summarise_study(results)
    assert summary["symile_minus_clip"]["1"]["mean"] == pytest.approx(0.21)
    assert summary["cells"]["1/symile"]["labs_gain"]["mean"] == pytest.approx(0.21)
    assert summary["cells"]["1/clip"]["labs_gain"]["mean"] == pytest.approx(0.0)


def test_study_command_refuses_a_bad_fraction(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--fractions", "0,2"])
    assert exit_info.value.code == 2
    assert "joint fractions must be in [0, 1]" in capsys.readouterr().err


def test_a_study_folder_refuses_another_recipe(quick_study: dict, tmp_path: Path) -> None:
    config = quick_study["config"]
    other = tmp_path / "other.toml"
    other.write_text(TINY_RECIPE.replace("warmup_steps = 1", "warmup_steps = 2"))
    changed = dataclasses.replace(config, recipes={**config.recipes, "symile": str(other)})
    with pytest.raises(StudyError, match="another recipe"):
        run_study(changed)


def test_encoder_weights_are_compared_by_content(quick_study: dict, tmp_path: Path) -> None:
    """A moved copy of the pretrained encoders is the same start (the cells are read back);
    other weights at any path are refused rather than mixed into the same study."""
    import shutil

    import torch

    config, pretrained = quick_study["config"], quick_study["encoders"]
    moved = tmp_path / "moved.pt"
    shutil.copy(pretrained, moved)
    same = dataclasses.replace(config, pretrain=False, encoder_weights=moved)
    assert run_study(same)["summary"] == json.loads(json.dumps(quick_study["summary"]))
    other = tmp_path / "other.pt"
    weights = torch.load(pretrained, weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}, other)
    with pytest.raises(StudyError, match="other encoder weights"):
        run_study(dataclasses.replace(config, pretrain=False, encoder_weights=other))


def test_pretraining_refuses_to_pretrain_on_a_measured_cohort(tmp_path: Path) -> None:
    from symile_clinical.errors import UsageError

    config = StudyConfig.quick(
        tmp_path / "out", cohort_seeds=tuple(range(8)), pretrain=True, pretrain_on="separate"
    )
    with pytest.raises(UsageError, match="cohort seed 7 is the pretraining cohort's"):
        run_study(config)
    both = StudyConfig.quick(tmp_path / "out", pretrain=True, encoder_weights=tmp_path / "w.pt")
    with pytest.raises(UsageError, match="drop --encoder-weights"):
        run_study(both)


def test_weights_that_do_not_fit_a_recipe_are_refused_before_training(
    quick_study: dict, tmp_path: Path
) -> None:
    from symile_clinical.formats.run_config import ConfigError

    config = quick_study["config"]
    other = tmp_path / "other.toml"
    other.write_text(TINY_RECIPE.replace("embed_dim = 16", "embed_dim = 8"))
    wrong = dataclasses.replace(
        config,
        out=tmp_path / "out",
        pretrain=False,
        encoder_weights=quick_study["encoders"],
        recipes={**config.recipes, "clip": str(other)},
    )
    with pytest.raises(ConfigError, match="does not match the model") as caught:
        run_study(wrong)
    assert str(quick_study["encoders"]) in str(caught.value)
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained


def test_the_demo_and_the_study_share_one_cohort_rule(tmp_path: Path) -> None:
    """A cohort the study made is current for the builder the demo calls; a changed
    parameter remakes what depends on it, and only that."""
    from app.workflows import cohort, demo, study
    from app.workflows.cohort import Steps, ensure_cohort
    from app.workflows.demo import DemoConfig
    from symile_clinical.formats.dataset_dir import DatasetDir

    assert demo.ensure_cohort is study.ensure_cohort is cohort.ensure_cohort
    assert demo.ensure_pretrained_encoders is study.ensure_pretrained_encoders
    sizes = {"admissions": 80, "cxr_max_size": 64, "cxr_size": 32}
    study_config = StudyConfig.quick(tmp_path / "study", **sizes)
    demo_config = DemoConfig(out=tmp_path / "demo", seed=0, joint_fraction=1.0, **sizes)
    spec = demo_config.cohort()
    assert spec == study_config.cohort(1.0, 0)

    made = Steps(study_config.out)
    ensure_study_cohort(study_config, 1.0, 0, made)
    assert made.ran == ["F1_c0/synth", "F1_c0/preprocess"]
    folder = cohort_dir(study_config, 1.0, 0)

    steps = Steps(folder)
    dataset = ensure_cohort(spec, folder, steps)
    assert steps.ran == [] and dataset.is_complete()
    ensure_cohort(dataclasses.replace(spec, cxr_size=24), folder, steps)
    assert steps.ran == ["preprocess"]  # the synthetic cohort is kept
    assert DatasetDir(folder / "dataset").info["cxr_size"] == 24
    ensure_cohort(dataclasses.replace(spec, cxr_size=24, admissions=90), folder, steps)
    assert steps.ran == ["preprocess", "synth", "preprocess"]
    # A step killed half-way is not current: the stamp goes before the step runs.
    (folder / "dataset" / "dataset.json").unlink()
    ensure_cohort(dataclasses.replace(spec, cxr_size=24, admissions=90), folder, steps)
    assert steps.ran[-1] == "preprocess"


def test_named_starts_side_by_side_with_own_split_pretraining(tmp_path: Path) -> None:
    """Two encoder starts in one study: random, and encoders pretrained on the measured
    cohort's own train split with labels derived from its label sources (never the answer
    key: synth_truth is deleted first)."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    config = StudyConfig.quick(
        tmp_path / "out",
        admissions=200,
        fractions=(1.0,),
        seeds=(0,),
        recipes={"symile": str(recipe), "clip": str(recipe)},
        jobs=1,
        max_steps=2,
        starts={"random": "random", "derived": "derived"},
        pretrain_on="own",
        progress=False,
    )
    from app.workflows.cohort import OWN_ENCODERS_FILE, Steps
    from preprocessing.synth.generate import TRUTH_FILE

    ensure_study_cohort(config, 1.0, 0, Steps(config.out))
    folder = cohort_dir(config, 1.0, 0)
    (folder / "mimic" / TRUTH_FILE).unlink()  # the product path may not need it

    study = run_study(config)

    summary = study["summary"]
    assert summary["starts"] == ["random", "derived"]
    assert set(summary["cells"]) == {
        "random/1/symile",
        "random/1/clip",
        "derived/1/symile",
        "derived/1/clip",
    }
    assert set(summary["symile_minus_clip"]) == {"random/1", "derived/1"}
    own = str((folder / OWN_ENCODERS_FILE).resolve())
    by_start = {r["start"]: r["config"]["encoder_weights"] for r in study["results"]}
    assert by_start == {"random": None, "derived": own}
    header = study["files"]["markdown"].read_text()
    assert "| encoders | F |" in header
    # No pretraining cohort of another hospital was made.
    assert not (config.out / "pretrain").exists()


def test_start_names_and_specs_are_checked(tmp_path: Path) -> None:
    from symile_clinical.errors import UsageError

    bad = StudyConfig.quick(tmp_path / "out", starts={"x": str(tmp_path / "missing.pt")})
    with pytest.raises(UsageError, match="random, derived or a weights file"):
        run_study(bad)
    both = StudyConfig.quick(tmp_path / "out", starts={"r": "random"}, pretrain=True)
    with pytest.raises(UsageError, match="replaces --pretrain"):
        run_study(both)


def test_every_objective_in_one_study_with_paired_differences_against_symile(
    tmp_path: Path,
) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    objectives = ("symile", "clip", "gram", "triangle", "gated-symile")
    config = StudyConfig.quick(
        tmp_path / "out",
        admissions=200,
        fractions=(1.0,),
        seeds=(0,),
        recipes=dict.fromkeys(objectives, str(recipe)),
        jobs=1,
        max_steps=2,
        progress=False,
    )
    study = run_study(config)
    summary = study["summary"]
    assert summary["objectives"] == list(objectives)
    assert {c["objective"] for c in summary["cells"].values()} == set(objectives)
    assert set(summary["symile_minus_each"]) == {f"1/{o}" for o in objectives[1:]}
    top1 = {r["objective"]: r["top1"] for r in study["results"]}
    gram = summary["symile_minus_each"]["1/gram"]
    assert gram["mean"] == pytest.approx(top1["symile"] - top1["gram"])
    markdown = study["files"]["markdown"].read_text()
    assert "Symile - each other objective" in markdown and "gated-symile" in markdown
    assert markdown.startswith(
        "# Symile vs CLIP, GRAM, TRIANGLE and Gated Symile on synthetic cohorts by joint fraction"
    )
    page = study["files"]["html"].read_text()
    assert "<h1>Symile vs CLIP, GRAM, TRIANGLE and Gated Symile on synthetic" in page


def test_study_objectives_option_refuses_an_unknown_objective(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--objectives", "symile,nope", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
