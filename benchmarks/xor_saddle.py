"""Why Symile does not learn the cohort's XOR markers: a controlled toy (docs/diagnosis.md).

    python benchmarks/xor_saddle.py            # about 2 min on one core

Three modalities of n admissions, shaped like the synthetic cohort's F = 1 markers: the ECG
carries 4 bits a, the labs 4 bits b, the CXR their XOR f = a ^ b; each modality also carries
4 pairwise "states" s shared by all three (optional) and `nuisance` dimensions of its own
noise, fixed per admission (what lets a contrastive model tell training admissions apart
without learning anything shared). Signal dimensions are +-1 plus Gaussian noise (0.6 ECG and
labs, 0.3 CXR). Each modality has a 2-hidden-layer MLP to d = 128, L2-normalised; Symile
("n" negatives) or CLIP is trained with AdamW (lr 1e-3) for a number of steps at batch 64,
then top-1 of the true CXR among 10 candidates is measured on 400 held-out admissions
(chance 10%). Two seeds per cell, both printed with the final training loss.

What it shows: with few nuisance dimensions (16) Symile learns the XOR at the cohort's size
(872 admissions, 104 steps) and CLIP stays at chance; with 200 the same models memorise the
training admissions (loss near 0) and neither learns it, even with 4,000 admissions.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from symile_clinical.objective.losses import clip_loss, symile_loss

BITS, CANDIDATES, D = 4, 10, 128


def _modalities(n: int, nuisance: int, states: bool, rng: np.random.Generator) -> list:
    a, b = rng.integers(0, 2, (n, BITS)), rng.integers(0, 2, (n, BITS))
    s = rng.integers(0, 2, (n, BITS)) * int(states)
    out = []
    for bits, noise in ((a, 0.6), (b, 0.6), (a ^ b, 0.3)):
        signal = np.c_[2 * bits - 1, 2 * s - 1] + noise * rng.normal(size=(n, 2 * BITS))
        x = np.c_[signal, rng.normal(size=(n, nuisance))]
        out.append(torch.tensor(x, dtype=torch.float32))
    return out


def _mlp(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(width, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, D)
    )


def run(objective: str, n: int, nuisance: int, steps: int, states: bool, seed: int):
    """(held-out top-1, last training loss) of one training."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    train, held_out = _modalities(n, nuisance, states, rng), _modalities(400, nuisance, states, rng)
    encoders = [_mlp(train[0].shape[1]) for _ in range(3)]
    log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [p for e in encoders for p in e.parameters()] + [log_scale]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)

    def embed(xs: list) -> list:
        return [F.normalize(e(x), dim=-1) for e, x in zip(encoders, xs, strict=True)]

    step, loss = 0, torch.tensor(float("nan"))
    while step < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - 63, 64):
            rows = order[start : start + 64]
            embs = embed([x[rows] for x in train])
            scale = log_scale.exp().clamp(max=100)
            if objective == "symile":
                loss = symile_loss(embs, scale, "n", generator=generator)
            else:
                loss = clip_loss(embs, scale)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    with torch.no_grad():
        ecg, labs, c = embed(held_out)
        query = ecg * labs if objective == "symile" else None
        picks = np.random.default_rng(1)
        hits = 0
        for q in range(len(c)):
            others = picks.choice(np.delete(np.arange(len(c)), q), CANDIDATES - 1, replace=False)
            cand = c[np.r_[q, others]]
            score = cand @ query[q] if query is not None else cand @ ecg[q] + cand @ labs[q]
            hits += int(score.argmax() == 0)
    return hits / len(c), loss.item()


CELLS = [  # (objective, n, nuisance dims, steps, pairwise states)
    ("symile", 872, 16, 104, False),
    ("clip", 872, 16, 104, False),
    ("symile", 872, 200, 104, False),
    ("symile", 872, 200, 520, False),
    ("symile", 4000, 200, 1000, False),
    ("symile", 872, 200, 104, True),
    ("clip", 872, 200, 104, True),
]


def main() -> None:
    torch.set_num_threads(1)
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    print("objective  n     nuisance steps states | top-1 (seed 0, 1) | final train loss")
    for objective, n, nuisance, steps, states in CELLS:
        results = [run(objective, n, nuisance, steps, states, seed) for seed in (0, 1)]
        tops = ", ".join(f"{100 * t:.1f}%" for t, _ in results)
        losses = ", ".join(f"{loss:.2f}" for _, loss in results)
        print(
            f"{objective:10s} {n:<5d} {nuisance:<8d} {steps:<5d} {states!s:6s} | {tops} | {losses}",
            flush=True,
        )


if __name__ == "__main__":
    main()
