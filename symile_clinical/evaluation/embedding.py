"""Embeddings: a trained model applied to a dataset split, a candidate pool or one query.

The one home of how stored data reaches the model and how embeddings are made:
- `embed_split`: every row of a split -> ecg, labs, cxr embeddings (training's validation,
  evaluation, the study);
- `embed_queries`: split rows -> their ECG + labs query embeddings, batched (the app's
  admissions, the index's recall checks);
- `embed_ecg`, `embed_labs`: ECG records or lab panels given as arrays, one forward pass
  each (the app's lab masking); `embed_query` is one admission's ECG + labs (uploads);
- `embed_masked_labs`: the labs embedding with every lab missing (an ECG-only query);
- `embed_cxr_pool`: candidate CXRs -> embeddings and thumbnails (the index);
- `cxr_thumbnails`: the one thumbnail rule (area averaging of the stored pixels), used by
  the index, the app and the report's example grids.
Stored CXR pixels become [0, 1] in `dataset_dir.cxr_to_unit` only. How an objective turns
query embeddings into the vector a candidate is dotted with is `similarity.query_vector`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from symile_clinical.formats.dataset_dir import SplitArrays, cxr_to_unit


class EmbeddingModel(Protocol):
    """What embedding needs of a model (models.SymileModel has it)."""

    def encode_ecg(self, ecg: torch.Tensor) -> torch.Tensor: ...
    def encode_labs(self, labs: torch.Tensor, observed: torch.Tensor) -> torch.Tensor: ...
    def encode_cxr(self, cxr: torch.Tensor) -> torch.Tensor: ...


@dataclass
class SplitEmbeddings:
    """A model's embeddings of rows of a split, float32 [N, d] each (numpy, CPU).

    labs_masked, when computed (evaluation), is the labs embedding with every lab masked (an
    ECG-only query): the same row for every admission, a read-only broadcast view.
    """

    ecg: np.ndarray
    labs: np.ndarray
    cxr: np.ndarray
    labs_masked: np.ndarray | None = None


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    """torch.autocast on `device` with `dtype`; a no-op context when dtype is None (fp32)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(
    batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool = False
) -> dict[str, torch.Tensor]:
    """A batch's tensors on `device` (the CXR channels-last when asked)."""
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    if channels_last and "cxr" in moved:
        moved["cxr"] = moved["cxr"].contiguous(memory_format=torch.channels_last)
    return moved


@torch.no_grad()
def embed_split(
    model: torch.nn.Module,
    arrays: SplitArrays,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> SplitEmbeddings:
    """Every row of a split through the model's forward: float32 [N, d] ecg, labs, cxr.

    The model is put in eval mode for the pass and restored to its mode afterwards.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    outputs: list[tuple[np.ndarray, ...]] = []
    try:
        for start in range(0, len(arrays), batch_size):
            rows = np.arange(start, min(start + batch_size, len(arrays)))
            batch = to_device(arrays.batch(rows), device, channels_last)
            with autocast(device, amp_dtype):
                embs = model(batch["ecg"], batch["labs"], batch["labs_observed"], batch["cxr"])
            outputs.append(tuple(e.float().cpu().numpy() for e in embs))
    finally:
        model.train(was_training)
    if not outputs:
        raise ValueError(f"the {arrays.split} split of {arrays.dataset_dir} has no rows")
    ecg, labs, cxr = (np.concatenate(parts) for parts in zip(*outputs, strict=True))
    return SplitEmbeddings(ecg=ecg, labs=labs, cxr=cxr)


def model_device(model: EmbeddingModel) -> torch.device:
    """The device a model's parameters are on (CPU for a model without parameters)."""
    parameters = getattr(model, "parameters", None)
    first = next(iter(parameters()), None) if parameters is not None else None
    return first.device if first is not None else torch.device("cpu")


def _tensor(array: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """float32 tensor on `device`; np.array copies, as memmapped rows are read-only and torch
    wants writable memory."""
    if isinstance(array, torch.Tensor):
        return array.to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.array(array, np.float32)).to(device)


def embed_ecg(
    model: EmbeddingModel,
    ecg: np.ndarray | torch.Tensor,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """ECG records [B, 12, T] (normalised as the dataset) -> float32 [B, d], one forward pass
    on `device` (default: the model's)."""
    device = model_device(model) if device is None else device
    with torch.inference_mode():
        return model.encode_ecg(_tensor(ecg, device)).float().cpu().numpy()


def embed_labs(
    model: EmbeddingModel,
    labs: np.ndarray | torch.Tensor,
    observed: np.ndarray | torch.Tensor,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Lab panels: percentiles [B, L] (missing filled), observed [B, L] (1 = observed) ->
    float32 [B, d], one forward pass on `device` (default: the model's)."""
    device = model_device(model) if device is None else device
    with torch.inference_mode():
        labs_t, observed_t = _tensor(labs, device), _tensor(observed, device)
        return model.encode_labs(labs_t, observed_t).float().cpu().numpy()


def embed_queries(
    model: EmbeddingModel,
    arrays: SplitArrays,
    rows: np.ndarray | None = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(ecg, labs) query embeddings float32 [R, d] of split rows (None = every row), one
    forward pass per batch, from a model in eval mode."""
    rows = np.arange(len(arrays)) if rows is None else np.asarray(rows, np.int64)
    ecg_parts, labs_parts = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]  # the query inputs alone: no CXR is read
        ecg_parts.append(embed_ecg(model, arrays.ecg[chunk], device))
        labs_parts.append(
            embed_labs(model, arrays.labs[chunk], arrays.labs_observed[chunk], device)
        )
    if not ecg_parts:
        raise ValueError(f"no rows of the {arrays.split} split of {arrays.dataset_dir} to embed")
    return np.concatenate(ecg_parts), np.concatenate(labs_parts)


def embed_query(
    model: EmbeddingModel, ecg: np.ndarray, labs: np.ndarray, observed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One admission: ecg float32 [12, T], labs [L] percentiles, observed [L] (1 = observed)
    -> (ecg embedding [d], labs embedding [d]) float32, from a model in eval mode."""
    ecg_emb = embed_ecg(model, np.asarray(ecg)[None])
    labs_emb = embed_labs(model, np.asarray(labs)[None], np.asarray(observed)[None])
    return ecg_emb[0], labs_emb[0]


def embed_masked_labs(
    model: EmbeddingModel, fill: np.ndarray, device: torch.device | str | None = None
) -> np.ndarray:
    """float32 [d]: the labs embedding with every lab missing (values = `fill` [L],
    observed = 0), the same for every admission: what an ECG-only query uses."""
    fill = np.asarray(fill, dtype=np.float32)[None, :]
    return embed_labs(model, fill, np.zeros_like(fill), device)[0]


def cxr_thumbnails(stored: np.ndarray, size: int) -> np.ndarray:
    """Stored CXRs uint8 (or float16 in [0, 1]) [B, 1, S, S] -> uint8 [B, T, T], T = min(S,
    size), by area averaging (0 = black)."""
    pixels = torch.from_numpy(cxr_to_unit(np.asarray(stored)))
    if pixels.shape[-1] > size:
        pixels = F.interpolate(pixels, size=(size, size), mode="area")
    return (pixels[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def embed_cxr_pool(
    model: EmbeddingModel,
    cxr: np.ndarray,
    batch_size: int = 64,
    thumbnail_size: int = 96,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Stored CXRs [N, 1, S, S] -> (float32 [N, d] embeddings, uint8 [N, T, T] thumbnails),
    embedded on the model's device."""
    device = model_device(model)
    embeddings, thumbs = [], []
    starts = range(0, len(cxr), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc="index", unit="batch", disable=not progress):
            stored = np.asarray(cxr[start : start + batch_size])
            batch = torch.from_numpy(cxr_to_unit(stored)).to(device)
            embeddings.append(model.encode_cxr(batch).float().cpu().numpy())
            thumbs.append(cxr_thumbnails(stored, thumbnail_size))
    if not embeddings:
        raise ValueError("no candidate CXRs to embed")
    return np.concatenate(embeddings), np.concatenate(thumbs)
