"""Error rates of the synthetic label sources, each from a published agreement figure.

Used as published (docs/labels.md cites each and says how it is applied); none is tuned to
a result. Where no figure exists for a statement, the nearest published one is named.
"""

from __future__ import annotations

# --- Computerised ECG statements against cardiologists ---------------------------------
# Poon, Okin & Kligfield, J Electrocardiol 2005;38:235-8 (GE MUSE, 4297 ECGs, cardiologist
# consensus), also summarised by Schlapfer & Wellens, JACC 2017;70:1183-92.
SINUS_FALSE_NEGATIVE = 0.013  # sinus rhythm not called sinus
SINUS_CALLED_IN_OTHER_RHYTHMS = 0.099  # "sinus" stated for another rhythm
AF_FALSE_NEGATIVE = 0.092  # atrial fibrillation not called
AF_CALLED_IN_OTHER_RHYTHMS = 0.011  # "atrial fibrillation" stated for another rhythm
PACED_REVISED = (
    258 / 343
)  # paced tracings whose rhythm statement was revised (565-307 of 4297-3954)
# Willems et al., NEJM 1991;325:1767-73: nine programs on 1220 clinically validated ECGs;
# median share of ECGs classified correctly by the programs.
MORPHOLOGY_CORRECT = 0.697  # a morphological abnormality named as such
# The one published false-statement rate of a machine statement at hand (Poon 2005, AF),
# applied to each morphology statement of a tracing without it.
MORPHOLOGY_FALSE_STATEMENT = AF_CALLED_IN_OTHER_RHYTHMS
# IEC 60601-2-25:2011 (201.12.4.102.3, from IEC 60601-2-51:2003) acceptance limits of
# interval measurements on the CSE database: standard deviation of program - referee
# differences, ms. A fiducial's noise is set so that the intervals' differences have it.
SD_PR_MS = 10.0
SD_QRS_MS = 10.0
SD_P_DURATION_MS = 15.0
SD_QT_MS = 30.0

# --- Radiologists' chest radiograph reports --------------------------------------------
# Quekel et al., Chest 1999;115:720-4: 19% of lung cancers presenting as a nodule were
# missed on the chest radiograph in clinical practice.
NODULE_MISSED = 0.19

# --- Report labelers against radiologists' reading of the report ----------------------
# Irvin et al., AAAI 2019 (CheXpert), Table 1: the CheXpert labeler on 1000 reports, F1 of
# mention extraction, negation and uncertainty detection per observation (transcribed from
# memory and not yet checked against the PDF; see docs/labels.md). Applied as P(mention
# found), P(negation read right), P(uncertainty read right).
CHEXPERT_F1 = {
    "Atelectasis": (0.998, 0.833, 0.936),
    "Cardiomegaly": (0.973, 0.909, 0.727),
    "Consolidation": (0.999, 0.981, 0.924),
    "Edema": (0.993, 0.962, 0.796),
    "Enlarged Cardiomediastinum": (0.935, 0.959, 0.854),
    "Fracture": (0.975, 0.807, 0.800),
    "Lung Lesion": (0.896, 0.900, 0.857),
    "Lung Opacity": (0.966, 0.914, 0.286),
    "No Finding": (0.769, 1.0, 1.0),
    "Pleural Effusion": (0.996, 0.971, 0.707),
    "Pleural Other": (0.850, 1.000, 0.769),
    "Pneumonia": (0.992, 0.750, 0.994),
    "Pneumothorax": (1.000, 0.977, 0.286),
    "Support Devices": (0.933, 0.720, 0.642),
}
# NegBio (Peng et al., AMIA Summits 2018) shares CheXpert's mention lists in MIMIC-CXR-JPG;
# no per-observation table of NegBio on the same reports was at hand, so it uses the same
# figures (docs/labels.md says so); its table differs from CheXpert's by its own draws.
NEGBIO_F1 = CHEXPERT_F1
