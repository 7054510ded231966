"""Optimiser pieces (official optimization.py, main_retrieval.py): param groups, BertAdam, AdamW, LR schedules, EMA.

Two flavours where the official code has a defect:
- `build_param_groups` exempts from weight decay by MODULE TYPE (norm layers, embeddings, biases,
  scalars); `faithful_bertadam_param_groups` reproduces the official NAME test, which misses CLIP's
  `ln_*` norms, so their weights are decayed.
- `warmup_cosine_lambda` warms up linearly then decays with a cosine over the REMAINING steps;
  `faithful_warmup_cosine_lambda` reproduces the official cosine of the GLOBAL progress
  (a small jump at the end of warm-up).
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn

NO_DECAY_MODULES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.Embedding,
)


#### Parameter groups ####


def _empty_groups(lr: float, coef_lr: float, weight_decay: float) -> dict[str, dict]:
    """The four named groups: CLIP at lr * coef_lr or the rest at lr, each with and without weight decay."""
    return {
        name: {"name": name, "params": [], "lr": group_lr, "weight_decay": group_wd}
        for name, group_lr, group_wd in [
            ("clip_decay", lr * coef_lr, weight_decay),
            ("clip_no_decay", lr * coef_lr, 0.0),
            ("other_decay", lr, weight_decay),
            ("other_no_decay", lr, 0.0),
        ]
    }


def build_param_groups(
    model: nn.Module, clip_module: nn.Module | None, *, lr: float, coef_lr: float, weight_decay: float
) -> list[dict]:
    """Four named groups: CLIP parameters at lr * coef_lr, the rest at lr; each split into decay / no decay.

    No decay: every parameter of a norm layer or nn.Embedding, every parameter named `bias`, and
    scalar (0-d) parameters such as CLIP's `logit_scale`. Frozen parameters are left out, and so are
    empty groups.
    """
    clip_ids = set() if clip_module is None else {id(p) for p in clip_module.parameters()}
    groups = _empty_groups(lr, coef_lr, weight_decay)
    seen: set[int] = set()
    for module in model.modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            no_decay = isinstance(module, NO_DECAY_MODULES) or param_name == "bias" or param.dim() == 0
            prefix = "clip" if id(param) in clip_ids else "other"
            groups[f"{prefix}_{'no_decay' if no_decay else 'decay'}"]["params"].append(param)
    trainable_clip_ids = set() if clip_module is None else {id(p) for p in clip_module.parameters() if p.requires_grad}
    missing = trainable_clip_ids - seen
    if missing:
        raise ValueError(
            f"build_param_groups: {len(missing)} trainable parameters of clip_module are not in model; "
            "pass the CLIP sub-module of the model being optimised"
        )
    return [group for group in groups.values() if group["params"]]


def faithful_bertadam_param_groups(
    model: nn.Module, *, lr: float, coef_lr: float, weight_decay: float, clip_prefix: str = "clip."
) -> list[dict]:
    """The official name-based rule: `clip_prefix` in name -> lr * coef_lr; "bias"/"LayerNorm.*" -> no decay."""
    no_decay_markers = ("bias", "LayerNorm.bias", "LayerNorm.weight")
    groups = _empty_groups(lr, coef_lr, weight_decay)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        prefix = "clip" if clip_prefix in name else "other"
        no_decay = any(marker in name for marker in no_decay_markers)
        groups[f"{prefix}_{'no_decay' if no_decay else 'decay'}"]["params"].append(param)
    return [group for group in groups.values() if group["params"]]


#### Optimisers ####


class BertAdam(torch.optim.Optimizer):
    """Adam as in pytorch-pretrained-BERT (official optimization.py): no bias correction,
    decoupled decay, per-tensor clip.

    Per parameter tensor p with gradient g (clipped to L2 norm `max_grad_norm` first, skipped if <= 0):
        m <- beta1 m + (1 - beta1) g ;  v <- beta2 v + (1 - beta2) g^2
        p <- p - lr * ( m / (sqrt(v) + eps) + weight_decay * p )
    The learning-rate schedule is external (torch.optim.lr_scheduler), unlike the official class.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"BertAdam: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("BertAdam does not support sparse gradients; use a dense embedding")
                if group["max_grad_norm"] > 0:  # as torch.nn.utils.clip_grad_norm_ applied to this tensor alone
                    clip_coef = group["max_grad_norm"] / (grad.norm() + 1e-6)
                    grad = grad * clip_coef.clamp(max=1.0)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = exp_avg / (exp_avg_sq.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
                state["step"] += 1
        return loss


def _adamw(param_groups: list[dict], betas: tuple[float, float], eps: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups, betas=betas, eps=eps)


def _bertadam(param_groups: list[dict], betas: tuple[float, float], eps: float) -> torch.optim.Optimizer:
    return BertAdam(param_groups, betas=betas, eps=eps)


OPTIMIZERS: dict[str, Callable[[list[dict], tuple[float, float], float], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "bertadam": _bertadam,
}


def build_optimizer(
    name: str, param_groups: list[dict], betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6
) -> torch.optim.Optimizer:
    """`name` in OPTIMIZERS over groups that carry their own lr and weight_decay (see build_param_groups)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    for group in param_groups:
        if "lr" not in group or "weight_decay" not in group:
            raise ValueError(f"param group {group.get('name', '?')!r} needs its own 'lr' and 'weight_decay'")
    # torch fills missing defaults into the group dicts in place: copy, so the caller's groups stay reusable
    return OPTIMIZERS[name]([dict(group) for group in param_groups], tuple(betas), eps)


#### Learning-rate schedules (multipliers for torch.optim.lr_scheduler.LambdaLR) ####


def warmup_cosine_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """step -> step / warmup during warm-up, then 0.5 (1 + cos(pi * r)) with r the progress over the rest; 0 after."""
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got {total_steps} and {warmup_steps}"
        )

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return multiplier


def faithful_warmup_cosine_lambda(total_steps: int, warmup_proportion: float = 0.1) -> Callable[[int], float]:
    """Official "warmup_cosine" on x = step / total_steps: x / w for x < w, else 0.5 (1 + cos(pi x)) (not clamped)."""
    if total_steps < 1 or not 0 < warmup_proportion < 1:
        raise ValueError(f"need total_steps >= 1 and 0 < warmup_proportion < 1, got {total_steps}, {warmup_proportion}")

    def multiplier(step: int) -> float:
        x = step / total_steps
        return x / warmup_proportion if x < warmup_proportion else 0.5 * (1.0 + math.cos(math.pi * x))

    return multiplier


#### EMA ####


class ModelEMA:
    """Exponential moving average of a model's parameters (official `--moment`), kept in eval mode.

    Starts as an exact copy (synced); `update(model)` sets ema <- decay * ema + (1 - decay) * param for
    every parameter, frozen ones included, and copies buffers. `state_dict()` is the averaged model's
    own state dict, so it loads straight into a fresh model for evaluation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.99):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay} (the official `--moment` is 0.99)")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards `model` (pass the unwrapped model, e.g. accelerator.unwrap_model(model))."""
        ema_params = dict(self.module.named_parameters())
        params = dict(model.named_parameters())
        if ema_params.keys() != params.keys():
            raise ValueError(
                "ModelEMA.update: parameter names differ from the averaged copy (first mismatch: "
                f"{sorted(ema_params.keys() ^ params.keys())[:3]}); pass the unwrapped model, not a DDP wrapper"
            )
        for name, ema_param in ema_params.items():
            ema_param.lerp_(params[name].detach().to(ema_param.dtype), 1.0 - self.decay)
        model_buffers = dict(model.named_buffers())
        for name, ema_buffer in self.module.named_buffers():
            ema_buffer.copy_(model_buffers[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged model's state dict."""
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Restore the averaged weights (strict: every key must match)."""
        self.module.load_state_dict(state_dict, strict=True)
