"""CLIP backbone on Hugging Face `transformers`: token, sentence and frame features as DiffusionRet's
official module_clip.py computes them.

`build_clip` makes a `CLIPModel` from a registered architecture (random weights, no download), a local
checkpoint directory or a hub id; `ClipBackbone` reads features at the sub-module level because
`get_*_features` return output objects, not tensors, in transformers 5.x.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # transformers costs seconds to import (about 5 s for CLIPModel)
    from transformers import CLIPModel

LOGIT_SCALE_INIT = math.log(100.0)  # CLIP's initial logit scale, ln 100 = 4.6052
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's normalisation, as the official data loaders use
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Architectures as data: name -> CLIPConfig keyword arguments (random weights, built offline).
NAMED_CLIP_CONFIGS: dict[str, dict] = {
    # CPU default: text width = projection width so seqTransf can copy text layers.
    "tiny": dict(
        text_config=dict(
            vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8, hidden_act="quick_gelu",
        ),
        projection_dim=64,
        logit_scale_init_value=LOGIT_SCALE_INIT,
    ),
    # Scale simulation (benchmarks/scale.py): narrow 1-layer towers projected to ViT-B/32's joint width 512, so
    # cached features have their real sizes at a fraction of the compute. Its text width is not 512: temporal none.
    "tiny-512": dict(
        text_config=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=16, hidden_act="quick_gelu",
        ),
        projection_dim=512,
        logit_scale_init_value=LOGIT_SCALE_INIT,
    ),
    # OpenAI CLIP ViT-B/32: text width 512, 8 heads; vision width 768, 12 heads, patch 32.
    "vit-b-32": dict(
        text_config=dict(
            vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
            num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            image_size=224, patch_size=32, hidden_act="quick_gelu",
        ),
        projection_dim=512,
        logit_scale_init_value=LOGIT_SCALE_INIT,
    ),
}


def build_clip(
    backbone: str,
    *,
    vocab_size: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> "CLIPModel":
    """A CLIPModel from a registered name (random weights), a local checkpoint dir or a hub id."""
    from transformers import CLIPConfig, CLIPModel

    if backbone in NAMED_CLIP_CONFIGS:
        spec = NAMED_CLIP_CONFIGS[backbone]
        text_config = dict(spec["text_config"])
        overrides = dict(vocab_size=vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         pad_token_id=pad_token_id)
        text_config.update({key: value for key, value in overrides.items() if value is not None})
        config = CLIPConfig(**{**spec, "text_config": text_config})
        return CLIPModel(config)

    overrides_given = [name for name, value in dict(vocab_size=vocab_size, bos_token_id=bos_token_id,
                                                    eos_token_id=eos_token_id, pad_token_id=pad_token_id).items()
                       if value is not None]
    if overrides_given:
        raise ValueError(
            f"backbone {backbone!r} is a checkpoint: its vocabulary is fixed, so {overrides_given} cannot be "
            f"overridden; use its own tokenizer, or a registered name ({sorted(NAMED_CLIP_CONFIGS)}) with a "
            "tokenizer trained here."
        )
    return CLIPModel.from_pretrained(resolve_backbone(backbone))


# --- hub access for pretrained backbones (issue 15) ---------------------------------------------------------------

# What a CLIP checkpoint folder needs: config, weights, tokenizer files (vocab.json, merges.txt, tokenizer*.json).
HUB_FILES = ("*.json", "*.txt", "*.safetensors")
HUB_FALLBACK_WEIGHTS = "pytorch_model.bin"  # only when the repository has no safetensors weights


class BackboneUnavailable(FileNotFoundError):
    """A pretrained backbone could neither be found locally nor fetched from the hub."""


def hub_offline() -> bool:
    """Whether the environment switches the Hugging Face hub off (the Makefile does: HF_HUB_OFFLINE=1)."""
    return any(os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _unavailable(backbone: str, reason: str, offline: bool = False) -> BackboneUnavailable:
    folder = backbone.rstrip("/").split("/")[-1]
    allow = (f"  - to fetch it, allow the Hugging Face hub: the preset command does (`diffusionret preset run "
             f"<name>`), or unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE (make sets both to 1);\n" if offline else "")
    return BackboneUnavailable(
        f"could not load the pretrained CLIP backbone {backbone!r}: {reason}\n{allow}"
        f"  - download it on a machine that reaches the hub, e.g. `huggingface-cli download {backbone} "
        f"--local-dir /data/{folder}`, and point model.backbone at that folder: "
        f"`dvc exp run -S model.backbone=/data/{folder}` (or `diffusionret preset run <name> --backbone "
        f"/data/{folder}`). The folder must hold config.json, the weights (model.safetensors or "
        f"pytorch_model.bin) and the tokenizer files (vocab.json + merges.txt or tokenizer.json)."
    )


def resolve_backbone(backbone: str) -> str:
    """The local folder of a pretrained backbone: a directory as given, or the snapshot of a hub id.

    A hub id is fetched (only the config, safetensors weights and tokenizer files; pytorch_model.bin when the
    repository has no safetensors) unless the hub is switched off, in which case the local hub cache must hold
    it. Anything else is a `BackboneUnavailable` naming the backbone and how to use a local folder instead.
    """
    if backbone in NAMED_CLIP_CONFIGS:
        raise ValueError(f"{backbone!r} is a registered architecture (random weights), not a checkpoint")
    path = Path(backbone).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _unavailable(backbone, f"the folder {path} has no config.json (not a saved CLIP checkpoint)")
        return str(path)
    if path.is_absolute() or backbone.startswith((".", "~")) or backbone.count("/") > 1:
        raise _unavailable(backbone, "no such folder")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = hub_offline()
    try:
        folder = Path(snapshot_download(backbone, allow_patterns=list(HUB_FILES), local_files_only=offline))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(backbone, allow_patterns=list(HUB_FILES) + [HUB_FALLBACK_WEIGHTS],
                                            local_files_only=offline))
    except LocalEntryNotFoundError as error:
        reason = ("the hub is switched off (HF_HUB_OFFLINE=1) and the local hub cache does not hold it" if offline
                  else f"the hub could not be reached ({type(error).__name__})")
        raise _unavailable(backbone, reason, offline) from error
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise _unavailable(backbone, f"the hub did not serve it ({type(error).__name__}: {error})", offline) from error
    return str(folder)


# What one frame's image feature is made of (model.frame_feature):
#   cls       CLIP's image feature: the post-layernormed CLS token times visual_projection (the paper's)
#   cls+grid  beyond the paper: that, plus the post-layernormed patch tokens average-pooled on a frame_grid x
#             frame_grid grid and projected by a learned linear map (grid_projection). The CLS token of a small
#             image tower trained from scratch drops where things are in the frame, so motion cannot be read from
#             a sequence of them; the pooled grid keeps coarse position at almost no cost.
FRAME_FEATURES = ("cls", "cls+grid")


class ClipBackbone(nn.Module):
    """CLIP text and image towers returning token features, sentence features and per-frame features."""

    def __init__(self, clip: "CLIPModel", frame_feature: str = "cls", frame_grid: int = 2) -> None:
        super().__init__()
        self.clip = clip
        # the patch-embedding conv is frozen in all stages, as in the official code
        clip.vision_model.embeddings.patch_embedding.weight.requires_grad_(False)
        self.image_size = clip.config.vision_config.image_size
        if frame_feature not in FRAME_FEATURES:
            raise ValueError(f"unknown frame feature {frame_feature!r}; choose one of {list(FRAME_FEATURES)}.")
        self.frame_feature, self.frame_grid = frame_feature, frame_grid
        self.patches_per_side = self.image_size // clip.config.vision_config.patch_size
        self.grid_projection: nn.Linear | None = None
        if frame_feature == "cls+grid":
            if not 1 <= frame_grid <= self.patches_per_side:
                raise ValueError(f"frame_grid={frame_grid} must lie in 1..{self.patches_per_side} (the patches per "
                                 f"side of {self.image_size} px frames at patch size "
                                 f"{clip.config.vision_config.patch_size})")
            vision_width = clip.config.vision_config.hidden_size
            # (G*G*Dv) -> D, added to the projected CLS: the same as projecting their concatenation
            self.grid_projection = nn.Linear(frame_grid * frame_grid * vision_width, self.width, bias=False)
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def width(self) -> int:
        """D, the joint (projection) width."""
        return self.clip.config.projection_dim

    @property
    def text_transformer_layers(self) -> nn.ModuleList:
        """The CLIP text encoder's blocks (seqTransf copies the first ones)."""
        return self.clip.text_model.encoder.layers

    def clip_parameters(self) -> list[nn.Parameter]:
        """Every CLIP parameter (frozen ones included; logit_scale too): the optimiser's coef_lr group."""
        return list(self.clip.parameters())

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected features of every token (B, L, D) and the sentence feature at eos (B, D), unnormalised."""
        hidden = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        tokens = self.clip.text_projection(hidden)  # (B, L, D); last_hidden_state is already final-layer-normed
        eos_position = attention_mask.long().sum(dim=1) - 1  # (B,) tokenize() puts eos last among valid tokens
        sentence = tokens[torch.arange(tokens.shape[0], device=tokens.device), eos_position]  # (B, D)
        return tokens, sentence

    def normalise_frames(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, T, S, S, 3) -> CLIP-normalised float (B*T, 3, S, S); padded frames become 0 (still encoded)."""
        if frames.dim() != 5 or frames.shape[-1] != 3 or frames.shape[2] != frames.shape[3]:
            raise ValueError(f"frames must be uint8 (B, T, S, S, 3); got shape {tuple(frames.shape)}")
        if frames.shape[2] != self.image_size:
            raise ValueError(
                f"frames are {frames.shape[2]}x{frames.shape[3]} but the CLIP backbone expects "
                f"{self.image_size}x{self.image_size}; re-run preprocessing with that size."
            )
        batch, num_frames, size = frames.shape[0], frames.shape[1], frames.shape[2]
        pixels = frames.reshape(batch * num_frames, size, size, 3).permute(0, 3, 1, 2).float() / 255.0
        pixels = (pixels - self.pixel_mean) / self.pixel_std  # (B*T, 3, S, S), float32; CLIP casts to its dtype
        if mask is not None:
            # padded frames are all-zero in the normalised space of the original code
            pixels = pixels * mask.reshape(batch * num_frames, 1, 1, 1).float()
        return pixels

    def encode_frames(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-frame CLIP image features (B, T, D): post-layernormed CLS times visual_projection."""
        batch, num_frames = frames.shape[0], frames.shape[1]
        pixels = self.normalise_frames(frames, mask)  # (B*T, 3, S, S)
        output = self.clip.vision_model(pixel_values=pixels)
        features = self.clip.visual_projection(output.pooler_output)  # (B*T, D)
        if self.grid_projection is not None:
            features = features + self.grid_projection(self.pooled_patch_grid(output.last_hidden_state))
        return features.reshape(batch, num_frames, -1)  # (B, T, D)

    def pooled_patch_grid(self, hidden: torch.Tensor) -> torch.Tensor:
        """Last vision hidden states (N, 1 + P*P, Dv) -> patch tokens, post-layernormed, averaged over a G x G grid
        of equal cells (adaptive pooling when G does not divide P), flattened row by row: (N, G*G*Dv)."""
        side, width = self.patches_per_side, hidden.shape[-1]
        patches = self.clip.vision_model.post_layernorm(hidden[:, 1:])  # (N, P*P, Dv), row-major patch order
        patches = patches.reshape(-1, side, side, width).permute(0, 3, 1, 2)  # (N, Dv, P, P)
        grid = F.adaptive_avg_pool2d(patches, self.frame_grid)  # (N, Dv, G, G)
        return grid.permute(0, 2, 3, 1).reshape(hidden.shape[0], -1)  # (N, G*G*Dv): cell (row, col), then channel
