"""Temporal modules over per-frame features (official `seqTransf`, DiffusionRet/models/module_cross.py).

`seqTransf`: frame position embedding + the first CLIP text blocks run bidirectionally over the frames,
with an additive -1e6 mask on padded frame keys, and a residual add of the input frames.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import CLIPModel

PADDING_BIAS = -1e6  # additive attention logit on padded frame keys, as the official code


class SeqTransf(nn.Module):
    """Frame transformer initialised from CLIP's text position table and first text blocks."""

    def __init__(self, clip: "CLIPModel", num_layers: int = 4) -> None:
        super().__init__()
        text_layers = clip.text_model.encoder.layers
        text_width = clip.config.text_config.hidden_size
        width = clip.config.projection_dim
        if text_width != width:
            raise ValueError(
                f"seqTransf copies CLIP text blocks of width {text_width} but runs on projected frame features "
                f"of width {width}; use a CLIP config whose text hidden_size equals projection_dim "
                "(true for ViT-B/32 and 'tiny'), or temporal='none'."
            )
        if not 0 <= num_layers <= len(text_layers):
            raise ValueError(
                f"temporal_layers={num_layers} but the CLIP text encoder has only {len(text_layers)} blocks to "
                f"copy; choose 0..{len(text_layers)}."
            )
        text_positions = clip.text_model.embeddings.position_embedding.weight  # (77, D)
        self.frame_position_embeddings = nn.Embedding(text_positions.shape[0], width)
        with torch.no_grad():
            self.frame_position_embeddings.weight.copy_(text_positions)
        self.layers = nn.ModuleList(copy.deepcopy(text_layers[index]) for index in range(num_layers))

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D) frame features, (B, T) 0/1 mask -> (B, T, D) contextualised frames + input residual."""
        batch, num_frames, _ = frames.shape
        max_frames = self.frame_position_embeddings.num_embeddings
        if num_frames > max_frames:
            raise ValueError(
                f"{num_frames} frames exceed the {max_frames}-row frame position table; lower max_frames."
            )
        positions = torch.arange(num_frames, device=frames.device)
        hidden = frames + self.frame_position_embeddings(positions).unsqueeze(0)  # (B, T, D)
        # (B, 1, T, T): every query (and head) sees -1e6 on padded keys; no causal mask
        key_bias = (1.0 - mask.to(hidden.dtype)) * PADDING_BIAS  # (B, T)
        attention_bias = key_bias[:, None, None, :].expand(batch, 1, num_frames, num_frames)
        for layer in self.layers:
            hidden = layer(hidden, attention_bias)
        return hidden + frames


class NoTemporal(nn.Module):
    """Identity temporal module: frames pass through unchanged."""

    def __init__(self, clip: "CLIPModel" | None = None, num_layers: int = 0) -> None:
        super().__init__()

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D) unchanged."""
        return frames


TEMPORAL_MODULES: dict[str, type[nn.Module]] = {"seqTransf": SeqTransf, "none": NoTemporal}


def build_temporal(name: str, clip: "CLIPModel", num_layers: int) -> nn.Module:
    """The registered temporal module `name` built from `clip`."""
    if name not in TEMPORAL_MODULES:
        raise ValueError(f"unknown temporal module {name!r}; choose one of {sorted(TEMPORAL_MODULES)}.")
    return TEMPORAL_MODULES[name](clip, num_layers)
