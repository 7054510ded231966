"""HBI's Banzhaf estimator: its training step (Monte-Carlo labels of a frozen trunk's maps, MSE) and its files.

The `train_estimator@A` stage writes models/A/estimator/: `estimator.safetensors` (the teacher's weights) and
`estimator.json` (a record: whether an estimator is needed at all, the steps trained, the label definition).
For a head other than hbi the stage writes only the record, saying no estimator is needed.
`load_estimator` is what train_disc calls for head hbi: a missing, foreign or untrained estimator is an error
naming the file and the command that makes it, never a silently random teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from diffusionret.model.banzhaf import BanzhafModule, banzhaf_labels, draw_coalitions
from diffusionret.model.heads import INVALID_WEIGHT_LOGIT

WEIGHTS_FILE, RECORD_FILE = "estimator.safetensors", "estimator.json"


class EstimatorMissing(FileNotFoundError):
    """The Banzhaf estimator HBI distils from is absent, foreign or untrained."""


def positive_maps(extractor, text_tokens: torch.Tensor, text_mask: torch.Tensor, video_frames: torch.Tensor,
                  video_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The frozen trunk's entity level for pairs (caption a, video a): masked cosine maps (B, L, T) and the WTI
    weights after their masked softmax, text (B, L) and video (B, T). `extractor.head` must be a WTI head."""
    head = extractor.head
    text_mask_f, video_mask_f = text_mask.to(text_tokens.dtype), video_mask.to(video_frames.dtype)
    maps = torch.einsum("ald,afd->alf", F.normalize(text_tokens, dim=-1), F.normalize(video_frames, dim=-1))
    maps = maps * text_mask_f[:, :, None] * video_mask_f[:, None, :]  # (B, L, T)
    text_weights = torch.softmax(head.text_weight_fc(text_tokens).squeeze(-1).masked_fill(
        text_mask == 0, INVALID_WEIGHT_LOGIT), dim=-1)  # (B, L)
    video_weights = torch.softmax(head.video_weight_fc(video_frames).squeeze(-1).masked_fill(
        video_mask == 0, INVALID_WEIGHT_LOGIT), dim=-1)  # (B, T)
    return maps, text_weights, video_weights


def estimator_loss(teacher: BanzhafModule, maps: torch.Tensor, text_mask: torch.Tensor, video_mask: torch.Tensor,
                   text_weights: torch.Tensor, video_weights: torch.Tensor, *, draws: int, generator: torch.Generator,
                   semantics: str, multiplier: float, draw_chunk: int) -> torch.Tensor:
    """MSE (mean over B L T cells) between the Monte-Carlo labels and the teacher's map (masked to valid cells).
    The teacher sees the maps as they are; the labels are computed on maps x multiplier (as released)."""
    with torch.no_grad():
        coalitions = draw_coalitions(draws, maps.shape[1], maps.shape[2], generator)
        labels = banzhaf_labels(maps, text_mask, video_mask, text_weights, video_weights, coalitions,
                                semantics=semantics, multiplier=multiplier, draw_chunk=draw_chunk)  # (B, L, T)
    cells = text_mask.to(maps.dtype)[:, :, None] * video_mask.to(maps.dtype)[:, None, :]
    return F.mse_loss(teacher(maps) * cells, labels)


def write_not_needed(directory: Path, head: str) -> None:
    """The record of a pipeline whose head needs no estimator (the same bytes for every such head)."""
    directory.mkdir(parents=True, exist_ok=True)
    record = {"needed": False, "note": "model.head is not hbi: no Banzhaf estimator is needed"}
    (directory / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")


def save_estimator(teacher: BanzhafModule, directory: Path, record: dict) -> None:
    """Weights, then the record (written last: a killed run leaves no record claiming a trained estimator)."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({key: value.detach().cpu().contiguous() for key, value in teacher.state_dict().items()},
              str(directory / WEIGHTS_FILE))
    (directory / RECORD_FILE).write_text(json.dumps({"needed": True, **record}, indent=2) + "\n")


def load_estimator(directory: Path, benchmark: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The trained teacher's state dict and its record; EstimatorMissing names the file and the fix."""
    fix = (f"run `dvc repro train_estimator@{benchmark}` with model.head: hbi (or `dvc exp run -S model.head=hbi`, "
           f"which runs it before train_disc@{benchmark})")
    record_path, weights_path = Path(directory) / RECORD_FILE, Path(directory) / WEIGHTS_FILE
    if not record_path.is_file():
        raise EstimatorMissing(f"{record_path} not found: HBI distils from a pre-trained Banzhaf estimator and none "
                               f"was written; {fix}")
    record = json.loads(record_path.read_text())
    if not record.get("needed"):
        raise EstimatorMissing(f"{record_path} says no estimator was trained (it was written for a head other than "
                               f"hbi); {fix}")
    if int(record.get("trained_steps", 0)) < 1:
        raise EstimatorMissing(f"{record_path}: the estimator in {weights_path} is untrained "
                               f"({record.get('trained_steps', 0)} steps); HBI would distil a random teacher; {fix}")
    if not weights_path.is_file():
        raise EstimatorMissing(f"{weights_path} not found (its record {record_path} exists); {fix}")
    return load_file(str(weights_path)), record


# ---------------------------------------------------------------------------------------------------
# Resumable progress (a killed train_estimator run continues from its last checkpoint)
# ---------------------------------------------------------------------------------------------------

PROGRESS_FILE, PROGRESS_WEIGHTS = "progress.json", "progress.safetensors"


def save_progress(directory: Path, teacher: BanzhafModule, optimizer: torch.optim.Optimizer, step: int,
                  fingerprint: dict, log_rows: list[str]) -> None:
    """The teacher, the optimiser's moments and the step, through temporary names (a kill never leaves half a
    state: progress.json, written last, names a complete weights file)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"teacher.{key}": value.detach().cpu().contiguous() for key, value in teacher.state_dict().items()}
    steps = {}
    for index, parameter in enumerate(teacher.parameters()):
        state = optimizer.state.get(parameter, {})
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                steps[f"{index}.{name}"] = value
    save_file(tensors, str(directory / f"{PROGRESS_WEIGHTS}.tmp"))
    (directory / f"{PROGRESS_WEIGHTS}.tmp").replace(directory / PROGRESS_WEIGHTS)
    progress = {"step": step, "fingerprint": fingerprint, "optimizer_scalars": steps, "log_rows": log_rows}
    (directory / f"{PROGRESS_FILE}.tmp").write_text(json.dumps(progress) + "\n")
    (directory / f"{PROGRESS_FILE}.tmp").replace(directory / PROGRESS_FILE)


def load_progress(directory: Path, teacher: BanzhafModule, optimizer: torch.optim.Optimizer,
                  fingerprint: dict) -> tuple[int, list[str]]:
    """(steps done, log rows) of a saved run with the same fingerprint, its state loaded; (0, []) if none."""
    path = directory / PROGRESS_FILE
    if not path.is_file():
        return 0, []
    progress = json.loads(path.read_text())
    if progress["fingerprint"] != json.loads(json.dumps(fingerprint)):
        return 0, []  # another configuration's run: left where it is, this one starts afresh
    tensors = load_file(str(directory / PROGRESS_WEIGHTS))
    teacher.load_state_dict({key[len("teacher."):]: value for key, value in tensors.items()
                             if key.startswith("teacher.")})
    for index, parameter in enumerate(teacher.parameters()):
        state = {name.split(".", 2)[2]: value.to(parameter.device) for name, value in tensors.items()
                 if name.startswith(f"optimizer.{index}.")}
        state.update({name.split(".", 1)[1]: value for name, value in progress["optimizer_scalars"].items()
                      if name.split(".", 1)[0] == str(index)})
        if state:
            optimizer.state[parameter] = state
    return int(progress["step"]), list(progress["log_rows"])
