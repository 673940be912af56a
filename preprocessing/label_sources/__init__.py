"""MIMIC's own label sources, read into per-admission findings (docs/labels.md).

One module per source: ECG machine statements (`ecg_statements`, with the editable phrase
table `ecg_statements.csv`), lab reference ranges and flags (`lab_flags`), the CheXpert and
NegBio labels of MIMIC-CXR-JPG (`chexpert`), the free-text radiology reports of MIMIC-CXR
(`radiology_reports`); `derive` assembles them into the labels CSV `pretrain --labels`
reads. None of them reads the synthetic generator's answer key.
"""
