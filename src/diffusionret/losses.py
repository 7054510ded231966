"""Losses. Contrastive (discrimination) loss of stage 1 with features gathered across processes (reference §2.5)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (B, ...) from every process along dim 0 -> (W*B, ...), gradients flowing to every slice.

    Identity when torch.distributed is not initialised. The backward sums, over processes, the gradient each
    process's loss sends to this process's slice (open_clip's gather_with_grad); with gradients averaged over
    processes afterwards (DDP / accelerate), parameters get the gradient of the global-batch loss, independent
    of the number of processes. (The original AllGather kept only the local slice: 1/W of that.)
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def contrastive_loss(similarity: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE on exp(logit_scale) * S (B, B) with the diagonal as positives (reference §2.5)."""
    if similarity.dim() != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(f"contrastive_loss needs a square (B, B) similarity; got {tuple(similarity.shape)}")
    logits = logit_scale.exp() * similarity  # (B, B): rows = texts, columns = videos
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2.0
