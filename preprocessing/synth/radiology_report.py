"""The radiologist and the report labelers: a MIMIC-CXR report and CheXpert/NegBio rows per study.

The radiologist describes what the phantom drew (cxr_phantom.py): heart size, effusions,
oedema, lobar consolidation, a pacemaker and the marker nodules, each in its lung zone
("right upper lobe", "lingula"), with the pertinent negatives radiologists write ("No focal
consolidation.") and hedges on portable AP films, and misses nodules as often as Quekel et
al. found. Each sentence carries its mentions (observation, status), so the labelers'
error model (Irvin et al. Table 1) acts on what the report says. All draws come from the
label-source generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from preprocessing.layout import CHEXPERT_OBSERVATIONS
from preprocessing.synth import error_rates as er
from preprocessing.synth.state import AdmissionState

POS, UNC, NEG = 1.0, -1.0, 0.0
# Where each marker nodule lies (cxr_phantom.MARKER_ZONES_FRONTAL), as radiologists name it.
MARKER_LOCATIONS = (
    ("right upper lobe", "right apex"),
    ("left upper lobe", "left apex"),
    ("right middle lobe", "right mid lung"),
    ("lingula", "left mid lung"),
)
CONSOLIDATION_LOCATIONS = {
    "RUL": "right upper lobe",
    "RML": "right middle lobe",
    "RLL": "right lower lobe",
    "LUL": "left upper lobe",
    "LLL": "left lower lobe",
}
_SIZES = ("small", "moderate", "large")
PATHOLOGIES = tuple(o for o in CHEXPERT_OBSERVATIONS if o not in ("No Finding", "Support Devices"))


@dataclass
class Report:
    """Sentences of FINDINGS and IMPRESSION with their mentions {observation: status}."""

    findings: list[str] = field(default_factory=list)
    impression: list[str] = field(default_factory=list)
    mentions: dict[str, float] = field(default_factory=dict)

    def say(self, sentence: str, impression: bool = False, **mentions: float) -> None:
        """Add a sentence; mentions keyed by observation with spaces as underscores."""
        (self.impression if impression else self.findings).append(sentence)
        for key, status in mentions.items():
            name = key.replace("_", " ")
            rank = {NEG: 0, UNC: 1, POS: 2}
            if name not in self.mentions or rank[status] > rank[self.mentions[name]]:
                self.mentions[name] = status

    def text(self, view: str) -> str:
        """The report file's text, laid out as MIMIC-CXR's reports are."""
        exam = "CHEST (PA AND LAT)" if view == "PA" else "CHEST (PORTABLE AP)"
        body = "\n ".join(_wrap(" ".join(self.findings)))
        impression = "\n ".join(_wrap(" ".join(self.impression)))
        return (
            "                                 FINAL REPORT\n"
            f" EXAMINATION:  {exam}\n \n"
            " INDICATION:  ___ with shortness of breath, evaluate for pneumonia\n \n"
            " COMPARISON:  None.\n \n"
            f" FINDINGS: \n \n {body}\n \n"
            f" IMPRESSION: \n \n {impression}\n"
        )


def _wrap(text: str, width: int = 76) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def write_report(rng: np.random.Generator, state: AdmissionState, view: str) -> Report:
    """What a radiologist writes about one study of this admission."""
    report = Report()
    portable = view == "AP"
    if state.cardiothoracic_ratio > 0.55:
        report.say("The heart is moderately enlarged.", Cardiomegaly=POS)
        report.say("Cardiomegaly.", impression=True, Cardiomegaly=POS)
    elif state.cardiothoracic_ratio > 0.5:
        report.say("The heart size is mildly enlarged.", Cardiomegaly=POS)
    else:
        report.say("The heart size is normal.", Cardiomegaly=NEG)
    sides = [
        (s, v)
        for s, v in (("right", state.effusion_right), ("left", state.effusion_left))
        if v > 0.15
    ]
    for side, severity in sides:
        size = _SIZES[min(2, int(severity * 3))]
        report.say(f"There is a {size} {side} pleural effusion.", Pleural_Effusion=POS)
    if sides:
        report.say(
            "Pleural effusion" + ("s." if len(sides) == 2 else "."),
            impression=True,
            Pleural_Effusion=POS,
        )
    if state.oedema > 0.5:
        report.say("There is moderate pulmonary edema.", Edema=POS)
        report.say("Pulmonary edema.", impression=True, Edema=POS)
    elif state.oedema > 0.3:
        report.say("Mild pulmonary vascular congestion, possibly mild edema.", Edema=UNC)
    if state.consolidation > 0:
        where = CONSOLIDATION_LOCATIONS[state.consolidation_zone]
        report.say(
            f"There is focal consolidation in the {where}.", Consolidation=POS, Lung_Opacity=POS
        )
        report.say(
            f"{where.capitalize()} consolidation, concerning for pneumonia.",
            impression=True,
            Consolidation=POS,
            Pneumonia=UNC,
        )
    else:
        report.say("No focal consolidation.", Consolidation=NEG)
    if not sides:
        report.say("No pleural effusion or pneumothorax.", Pleural_Effusion=NEG, Pneumothorax=NEG)
    else:
        report.say("There is no pneumothorax.", Pneumothorax=NEG)
    for bit, (lobe, alias) in zip(state.cxr_bits, MARKER_LOCATIONS, strict=True):
        if not bit or rng.random() < er.NODULE_MISSED:
            continue
        place = lobe if rng.random() < 0.75 else alias
        size = f"{rng.uniform(0.8, 1.8):.1f} cm"
        if portable:  # a portable film hides a nodule behind vessels and ribs: hedged
            report.say(f"Possible {size} nodular opacity in the {place}.", Lung_Lesion=UNC)
            report.say(
                f"Possible {place} nodule; recommend chest CT.", impression=True, Lung_Lesion=UNC
            )
        else:
            report.say(f"A {size} nodule is seen in the {place}.", Lung_Lesion=POS)
            report.say(
                f"{place.capitalize()} nodule; recommend chest CT.",
                impression=True,
                Lung_Lesion=POS,
            )
    if state.paced:
        report.say(
            "A left-sided pacemaker is present with its lead in the right ventricle.",
            Support_Devices=POS,
        )
    if not report.impression:
        report.say("No acute cardiopulmonary process.", impression=True)
    return report


def labeler_row(
    rng: np.random.Generator, report: Report, f1: dict[str, tuple[float, float, float]]
) -> list[float]:
    """The 14 observations a labeler reads from the report (1, 0, -1, NaN = blank)."""
    read: dict[str, float] = {}
    for observation, status in report.mentions.items():
        mention, negation, uncertainty = f1[observation]
        if rng.random() >= mention:
            continue  # mention missed: blank
        if status == NEG:
            read[observation] = NEG if rng.random() < negation else POS
        elif status == UNC:
            read[observation] = UNC if rng.random() < uncertainty else POS
        else:
            read[observation] = POS
    healthy = not any(read.get(o) in (POS, UNC) for o in PATHOLOGIES)
    if healthy and rng.random() < f1["No Finding"][0]:
        read["No Finding"] = POS
    return [read.get(o, np.nan) for o in CHEXPERT_OBSERVATIONS]
