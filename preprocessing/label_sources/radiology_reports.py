"""MIMIC-CXR free-text reports -> located findings CheXpert does not locate.

MIMIC-CXR ships one report per study at ``files/pNN/pNNNNNNNN/sNNNNNNNN.txt`` (beside the
study's image folder), with sections such as ``FINDINGS:`` and ``IMPRESSION:``. Each
sentence of those two sections (the whole text when neither is present) is searched for a
finding term (a nodule, a consolidation) and the lung zones it names ("right upper lobe",
"lingula", "left base"); a negation cue before the term ("no focal consolidation", "without
nodules") makes the mention negative, a hedge ("possible", "cannot be excluded") uncertain.
Per study and finding: positive beats uncertain beats negative; a finding not mentioned is
negative; an unlocated negation ("no pulmonary nodules") is negative in every zone; a
study without a report file is unknown.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from preprocessing.label_sources.chexpert import UNCERTAINTY_POLICIES
from preprocessing.layout import report_path

POSITIVE, UNCERTAIN, NEGATIVE = 1.0, -1.0, 0.0
LUNG_ZONES = (
    "right_upper",
    "right_middle",
    "right_lower",
    "left_upper",
    "left_middle",
    "left_lower",
)
# Patterns are matched on lower-case text; the first zone whose pattern matches wins
# per location phrase.
ZONE_PATTERNS = {
    "right_upper": r"right (upper lobe|upper lung|apex|apical)",
    "right_middle": r"right (middle lobe|mid[- ]?lung|mid lung zone|midlung)",
    "right_lower": r"right (lower lobe|lower lung|lung base|base|basilar)",
    "left_upper": r"left (upper lobe|upper lung|apex|apical)",
    "left_middle": r"(lingula|lingular|left (mid[- ]?lung|mid lung zone|midlung))",
    "left_lower": r"(left (lower lobe|lower lung|lung base|base|basilar)|retrocardiac)",
}
FINDING_TERMS = {
    "nodule": r"(nodul\w*|mass(es)?|lung lesion)",
    "consolidation": r"(consolidat\w*|airspace (disease|opacit\w*))",
}
# Unlocated terms written as their own column (CheXpert has no nodule; it has Consolidation).
UNLOCATED_COLUMNS = ("nodule",)
NEGATION_CUES = r"\b(no|not|without|negative for|free of|resolved|resolution of|clear of)\b"
HEDGE_CUES = (
    r"\b(possible|possibly|may|might|could|questionable|suspected|suspicious for|"
    r"cannot be excluded|cannot exclude|not excluded|equivocal|versus|vs\.?|concern for)\b"
)
_SECTION = re.compile(r"^\s*([A-Z][A-Z /]+):", re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
    """Section name (upper case, e.g. FINDINGS, IMPRESSION) -> its text."""
    marks = list(_SECTION.finditer(text))
    return {
        m.group(1).strip(): text[m.end() : (marks[i + 1].start() if i + 1 < len(marks) else None)]
        for i, m in enumerate(marks)
    }


def _sentences(text: str) -> list[str]:
    body = " ".join(text.split())
    return [s.strip() for s in re.split(r"(?<=[.;!?])\s+|\s+\d+\.\s+", body) if s.strip()]


def _mention_status(sentence: str, start: int) -> float:
    before = sentence[:start]
    if re.search(HEDGE_CUES, sentence):
        return UNCERTAIN
    if re.search(NEGATION_CUES, before):
        return NEGATIVE
    return POSITIVE


def located_findings(text: str) -> dict[str, float]:
    """`<term>_<zone>` and `<term>` -> 1.0, -1.0 (uncertain) or 0.0, for one report."""
    sections = report_sections(text)
    parts = [sections[s] for s in ("FINDINGS", "IMPRESSION") if s in sections]
    status = {f"{t}_{z}": NEGATIVE for t in FINDING_TERMS for z in LUNG_ZONES}
    status |= {t: NEGATIVE for t in FINDING_TERMS}
    rank = {NEGATIVE: 0, UNCERTAIN: 1, POSITIVE: 2}
    for sentence in _sentences(" ".join(parts) if parts else text):
        lower = sentence.lower()
        for term, term_pattern in FINDING_TERMS.items():
            hit = re.search(term_pattern, lower)
            if hit is None:
                continue
            mention = _mention_status(lower, hit.start())
            zones = [z for z, p in ZONE_PATTERNS.items() if re.search(p, lower)]
            for key in [term, *(f"{term}_{z}" for z in zones)]:
                if rank[mention] > rank[status[key]]:
                    status[key] = mention
    return status


def report_finding_labels(
    cxr_root: Path, subject_ids: pd.Series, study_ids: pd.Series, policy: str
) -> pd.DataFrame:
    """`cxr:<term>_<zone>` (and `cxr:nodule`) per study, from its report; NaN without one."""
    keys = [*UNLOCATED_COLUMNS, *(f"{t}_{z}" for t in FINDING_TERMS for z in LUNG_ZONES)]
    values = np.full((len(study_ids), len(keys)), np.nan)
    for row, (subject, study) in enumerate(zip(subject_ids, study_ids, strict=True)):
        if pd.isna(study):
            continue
        path = Path(cxr_root) / report_path(int(subject), int(study))
        if not path.is_file():
            continue
        found = located_findings(path.read_text(errors="replace"))
        values[row] = [found[k] for k in keys]
    values = np.where(values == UNCERTAIN, UNCERTAINTY_POLICIES[policy], values)
    return pd.DataFrame(values, columns=[f"cxr:{k}" for k in keys], index=study_ids.index)
