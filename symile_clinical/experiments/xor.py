"""The Symile paper's binary XOR experiment (its Figure 3), re-run with this project's losses.

Data, for a probability p:

    a, b ~ Bernoulli(0.5)^d_v,   i ~ Bernoulli(p),   c = (a XOR b)^i * a^(1 - i)

with XOR and the powers elementwise and i drawn once per sample (as the paper's code does).
Whatever p, b is independent of a and independent of c, so no pairwise statistic carries
information about b; but given both a and c, b = a XOR c whenever i = 1 and c differs from
a, so the conditional information I(b; c | a) grows with p. Three affine encoders map a, b,
c to L2-normalised representations in R^d (d = 16 in the paper), trained with Symile or
with pairwise CLIP (and, optionally, GRAM's volume or TRIANGLE's area: whether a score that is
a function of the three pairwise cosines can learn b from (a, c) at all); the task is
zero-shot prediction of b from (a, c): score each of the 2^d_v possible b vectors (MIP for
Symile, sum of dot products for CLIP, -volume, -area) and take the best.

Expected (and tested): at p = 1 Symile is near 1.0 and CLIP near chance (0.5 for d_v = 1);
at p = 0 both are at chance. The best any predictor can do is p + (1 - p) 2^-d_v: when c
differs from a, b = a XOR c exactly; when c equals a the best guess is b = 0.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from models import LOGIT_SCALE_INIT
from symile_clinical.evaluation.bootstrap import bootstrap_mean, bootstrap_means
from symile_clinical.evaluation.report import (
    figure_to_png,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from symile_clinical.evaluation.retrieval import top1_correct, true_item_ranks
from symile_clinical.objective.gram import gram_loss
from symile_clinical.objective.losses import clip_loss, symile_loss
from symile_clinical.objective.scores import objective_score
from symile_clinical.objective.triangle import triangle_loss

log = logging.getLogger(__name__)

OBJECTIVES = ("symile", "clip", "gram", "triangle")
# GRAM's and TRIANGLE's scores (-volume, -area) lie in [-1, 0] and [-1.3, 0]: they start from
# their papers' temperature 0.07, not the XOR script's exp(-0.3) made for Symile's MIP.
SCALE_INIT = {"gram": LOGIT_SCALE_INIT, "triangle": LOGIT_SCALE_INIT}
RESULTS_JSON = "xor_results.json"
RESULTS_CSV = "xor_results.csv"
RESULTS_MD = "xor_results.md"
PLOT_FILE = "xor_accuracy.png"


@dataclass(frozen=True)
class XorConfig:
    """Sizes and optimiser of the experiment. Defaults are a reduced size that runs in
    seconds on a 2-core CPU; `paper_size()` gives the paper's script settings."""

    out_dir: Path | None = None
    p_values: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    objectives: tuple[str, ...] = ("symile", "clip")  # any of OBJECTIVES
    input_dim: int = 1  # d_v: bits per vector; chance is 2^-d_v
    embed_dim: int = 16  # d of the representations
    n_train: int = 2000
    n_test: int = 2000
    batch_size: int = 250
    epochs: int = 10
    lr: float = 0.1
    weight_decay: float = 0.01
    logit_scale_init: float = -0.3  # log scale; the paper's XOR script starts here
    negatives: str = "n"
    n_bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.objectives) - set(OBJECTIVES)
        if unknown:
            raise ValueError(f"unknown objectives {sorted(unknown)}; expected {OBJECTIVES}")
        if any(not 0.0 <= p <= 1.0 for p in self.p_values):
            raise ValueError(f"p values must lie in [0, 1], got {self.p_values}")
        if not 1 <= self.input_dim <= 12:
            raise ValueError(f"input_dim must be 1..12 (2^d_v candidates), got {self.input_dim}")
        if self.batch_size > self.n_train:
            raise ValueError(f"batch_size {self.batch_size} > n_train {self.n_train}")


def paper_size(config: XorConfig) -> XorConfig:
    """The paper's script sizes: 10,000 training samples, 5,000 test, batch 1,000, 100 epochs."""
    return replace(config, n_train=10_000, n_test=5_000, batch_size=1_000, epochs=100)


@dataclass(frozen=True)
class XorData:
    """n samples of (a, b, c), each uint8 [n, d_v] of 0/1, and the switch i (bool [n])."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    i: np.ndarray


def sample_xor(n: int, input_dim: int, p: float, rng: np.random.Generator) -> XorData:
    """Draw n samples of the paper's distribution from an explicit generator."""
    a = rng.integers(0, 2, size=(n, input_dim), dtype=np.uint8)
    b = rng.integers(0, 2, size=(n, input_dim), dtype=np.uint8)
    i = rng.random(n) < p
    c = np.where(i[:, None], a ^ b, a).astype(np.uint8)
    return XorData(a=a, b=b, c=c, i=i)


def chance_accuracy(input_dim: int) -> float:
    """Accuracy of guessing b uniformly among the 2^d_v vectors."""
    return 2.0**-input_dim


def bayes_accuracy(p: float, input_dim: int) -> float:
    """Best achievable accuracy of predicting b from (a, c): p + (1 - p) 2^-d_v."""
    return p + (1.0 - p) * 2.0**-input_dim


def all_binary_vectors(input_dim: int) -> np.ndarray:
    """uint8 [2^d_v, d_v]: row j is the binary expansion of j, most significant bit first."""
    j = np.arange(2**input_dim)[:, None]
    shifts = np.arange(input_dim - 1, -1, -1)[None, :]
    return ((j >> shifts) & 1).astype(np.uint8)


def binary_index(vectors: np.ndarray) -> np.ndarray:
    """Row of all_binary_vectors equal to each vector: uint8 [n, d_v] -> int64 [n]."""
    weights = 2 ** np.arange(vectors.shape[1] - 1, -1, -1)
    return (vectors.astype(np.int64) * weights).sum(axis=1)


class XorEncoders(nn.Module):
    """Three affine maps R^d_v -> R^d, outputs L2-normalised, and a learned log logit scale."""

    def __init__(self, input_dim: int, embed_dim: int, logit_scale_init: float) -> None:
        super().__init__()
        self.f_a = nn.Linear(input_dim, embed_dim)
        self.f_b = nn.Linear(input_dim, embed_dim)
        self.f_c = nn.Linear(input_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float32 [n, d_v] each -> three unit vectors [n, d]."""
        return self.encode_a(a), self.encode_b(b), self.encode_c(c)

    def encode_a(self, a: torch.Tensor) -> torch.Tensor:
        """[n, d_v] -> [n, d] unit vectors."""
        return F.normalize(self.f_a(a), dim=-1)

    def encode_b(self, b: torch.Tensor) -> torch.Tensor:
        """[n, d_v] -> [n, d] unit vectors."""
        return F.normalize(self.f_b(b), dim=-1)

    def encode_c(self, c: torch.Tensor) -> torch.Tensor:
        """[n, d_v] -> [n, d] unit vectors."""
        return F.normalize(self.f_c(c), dim=-1)


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x.astype(np.float32))


def xor_loss(
    objective: str,
    embeddings: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    scale: torch.Tensor,
    negatives: str,
    generator: torch.Generator,
) -> torch.Tensor:
    """The objective's loss of (a, b, c) embeddings. GRAM and TRIANGLE take b, the modality
    retrieved, as the anchor against the data pair (a, c), as the study takes the CXR; GRAM's
    data-anchor matching term needs a matching head and is left out here."""
    a, b, c = embeddings
    if objective == "symile":
        return symile_loss(embeddings, scale, negatives, generator)
    if objective == "clip":
        return clip_loss(embeddings, scale)
    if objective == "gram":
        return gram_loss([a, c, b], scale)
    if objective == "triangle":
        return triangle_loss([a, c, b], scale)
    raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")


def train_encoders(objective: str, data: XorData, config: XorConfig, seed: int) -> XorEncoders:
    """Train XorEncoders with the objective's loss (AdamW, full passes, drop_last)."""
    # nn.Linear draws its init from the global generator; fork_rng keeps the caller's state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scale_init = SCALE_INIT.get(objective, config.logit_scale_init)
        model = XorEncoders(config.input_dim, config.embed_dim, scale_init)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    a, b, c = _tensor(data.a), _tensor(data.b), _tensor(data.c)
    n = a.shape[0]
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - config.batch_size + 1, config.batch_size):
            rows = order[start : start + config.batch_size]
            embeddings = model(a[rows], b[rows], c[rows])
            scale = model.logit_scale.exp()
            loss = xor_loss(objective, embeddings, scale, config.negatives, generator)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    model.eval()
    return model


@torch.no_grad()
def zero_shot_correct(
    model: XorEncoders, data: XorData, objective: str, rng: np.random.Generator
) -> np.ndarray:
    """Per-sample 1.0/0.0: is b the best-scored of the 2^d_v candidates given (a, c)?

    Ties are broken at random (an encoder that collapses b's candidates scores at chance).
    """
    candidates = model.encode_b(_tensor(all_binary_vectors(data.b.shape[1])))
    queries = [model.encode_a(_tensor(data.a)), model.encode_c(_tensor(data.c))]
    scores = objective_score(objective)(candidates, queries).numpy()
    return top1_correct(true_item_ranks(scores, binary_index(data.b), rng))


@dataclass(frozen=True)
class XorRow:
    """One (objective, p) cell of the result table."""

    objective: str
    p: float
    accuracy: float  # mean over bootstrap samples of the test set (the paper's statistic)
    accuracy_full_test: float  # plain test accuracy
    se: float
    ci_low: float
    ci_high: float
    chance: float
    bayes_optimal: float
    n_test: int
    train_seconds: float


@contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Run torch ops on one thread inside the block, restoring the caller's setting after.

    The XOR models are matrices of 16 columns: extra intra-op threads only add
    synchronisation, and on a busy machine OpenMP's spin-waiting threads made training
    about 9x slower (measured on this 2-core box while other jobs ran).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_xor_experiment(config: XorConfig) -> list[XorRow]:
    """Train and evaluate every (objective, p); write the table and plot when out_dir is set.

    For each p every objective sees the same training and test samples.
    """
    with single_threaded_torch():
        rows = _run_all(config)
    if config.out_dir is not None:
        write_xor_outputs(Path(config.out_dir), config, rows)
    return rows


def _run_all(config: XorConfig) -> list[XorRow]:
    rows: list[XorRow] = []
    for p_index, p in enumerate(config.p_values):
        data_rng = np.random.default_rng([config.seed, p_index])
        train = sample_xor(config.n_train, config.input_dim, p, data_rng)
        test = sample_xor(config.n_test, config.input_dim, p, data_rng)
        for objective in config.objectives:
            started = time.perf_counter()
            model = train_encoders(objective, train, config, seed=config.seed)
            seconds = time.perf_counter() - started
            correct = zero_shot_correct(
                model, test, objective, np.random.default_rng([config.seed, p_index, 1])
            )
            estimate = bootstrap_mean(correct, config.n_bootstrap, seed=config.seed)
            resampled = bootstrap_means(correct, config.n_bootstrap, seed=config.seed)
            rows.append(
                XorRow(
                    objective=objective,
                    p=float(p),
                    accuracy=float(resampled.mean()),
                    accuracy_full_test=estimate.estimate,
                    se=estimate.se,
                    ci_low=estimate.ci_low,
                    ci_high=estimate.ci_high,
                    chance=chance_accuracy(config.input_dim),
                    bayes_optimal=bayes_accuracy(p, config.input_dim),
                    n_test=config.n_test,
                    train_seconds=seconds,
                )
            )
            log.info(
                "%s p=%.2f: accuracy %.3f [%.3f, %.3f] (train %.1f s)",
                objective,
                p,
                rows[-1].accuracy,
                estimate.ci_low,
                estimate.ci_high,
                seconds,
            )
    return rows


def results_table_markdown(rows: list[XorRow]) -> str:
    """A markdown table: p down the side, each objective's accuracy [95% CI] across."""
    objectives = list(dict.fromkeys(r.objective for r in rows))
    p_values = list(dict.fromkeys(r.p for r in rows))
    by_key = {(r.objective, r.p): r for r in rows}
    lines = [
        "| p | " + " | ".join(objectives) + " | chance | best possible |",
        "|---|" + "---|" * (len(objectives) + 2),
    ]
    for p in p_values:
        cells = [
            f"{by_key[o, p].accuracy:.3f} [{by_key[o, p].ci_low:.3f}, {by_key[o, p].ci_high:.3f}]"
            for o in objectives
        ]
        any_row = by_key[objectives[0], p]
        lines.append(
            f"| {p:g} | " + " | ".join(cells) + f" | {any_row.chance:.3f} | "
            f"{any_row.bayes_optimal:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot_xor(rows: list[XorRow]) -> bytes:
    """Accuracy against p per objective with 95% CI bars, chance and best-possible lines."""
    figure = Figure(figsize=(5.2, 3.8))
    ax = figure.add_subplot()
    colours = {"symile": "#1f77b4", "clip": "#d62728", "gram": "#2ca02c", "triangle": "#9467bd"}
    for objective in dict.fromkeys(r.objective for r in rows):
        mine = [r for r in rows if r.objective == objective]
        p = np.array([r.p for r in mine])
        acc = np.array([r.accuracy for r in mine])
        errors = np.vstack(
            [
                np.maximum(acc - [r.ci_low for r in mine], 0),
                np.maximum(np.array([r.ci_high for r in mine]) - acc, 0),
            ]
        )
        ax.errorbar(
            p, acc, yerr=errors, marker="o", capsize=3, label=objective, color=colours[objective]
        )
    ps = sorted({r.p for r in rows})
    by_p = {r.p: r for r in rows}
    ax.plot(ps, [by_p[p].bayes_optimal for p in ps], ":", color="black", label="best possible")
    ax.axhline(rows[0].chance, color="grey", linestyle="--", label="chance")
    ax.set_xlabel("p  (probability that c = a XOR b)")
    ax.set_ylabel("zero-shot accuracy predicting b from (a, c)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Binary XOR (Symile paper, Figure 3)")
    ax.legend(fontsize=8)
    return figure_to_png(figure)


def write_xor_outputs(out_dir: Path, config: XorConfig, rows: list[XorRow]) -> None:
    """xor_results.json (config + rows), .csv, .md table and xor_accuracy.png, atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    write_json_atomic(
        out_dir / RESULTS_JSON, {"config": settings, "rows": [asdict(r) for r in rows]}
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(rows[0])))
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    write_text_atomic(out_dir / RESULTS_CSV, buffer.getvalue())
    header = (
        "# Binary XOR experiment (Symile paper, Figure 3)\n\n"
        f"d_v = {config.input_dim}, d = {config.embed_dim}, {config.n_train} training and "
        f"{config.n_test} test samples per p, batch {config.batch_size}, {config.epochs} "
        f"epochs, AdamW lr {config.lr}, seed {config.seed}. Accuracy is the mean over "
        f"{config.n_bootstrap} bootstrap samples of the test set, with its 95% percentile "
        "interval.\n\n"
    )
    write_text_atomic(
        out_dir / RESULTS_MD,
        header + results_table_markdown(rows) + f"\n![accuracy against p]({PLOT_FILE})\n",
    )
    write_bytes_atomic(out_dir / PLOT_FILE, plot_xor(rows))
