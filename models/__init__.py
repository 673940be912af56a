"""Encoders for ECG, labs and chest X-ray, and the Symile model that joins them."""

from models.cxr_encoder import CXREncoder, CXRWeightsError
from models.ecg_encoder import ECGEncoder
from models.labs_encoder import LabsEncoder
from models.reference_mimic import SymileMIMICReference
from models.symile_model import LOGIT_SCALE_INIT, ModelConfig, SymileModel, build_model
from models.three_modalities import LOGIT_SCALE_MAX, ThreeModalityModel
from models.weights import WeightsError, load_encoder_weights

__all__ = [
    "LOGIT_SCALE_INIT",
    "LOGIT_SCALE_MAX",
    "CXREncoder",
    "CXRWeightsError",
    "ECGEncoder",
    "LabsEncoder",
    "ModelConfig",
    "SymileMIMICReference",
    "SymileModel",
    "ThreeModalityModel",
    "WeightsError",
    "build_model",
    "load_encoder_weights",
]
