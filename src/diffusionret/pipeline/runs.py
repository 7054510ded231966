"""Process set-up shared by the training stages: accelerator, seeding, and the MLflow run of a stage."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusionret import tracking
from diffusionret.config import Params, StageTrainParams, batch_partition, flatten
from diffusionret.method.objectives import Partition
from diffusionret.training.loop import LoopSettings
from diffusionret.training.state import TrainingState
from diffusionret.training.optim import (build_optimizer, build_param_groups, faithful_bertadam_param_groups,
                                         faithful_warmup_cosine_lambda, warmup_cosine_lambda)

# train.* keys that do not change a stage's weights (left out of the resume fingerprint of both training stages)
NOT_AFFECTING_WEIGHTS = ("log_every", "checkpoint_every", "keep_checkpoints", "num_workers", "benchmarks",
                         "accelerate_config")


def make_accelerator(precision: str):
    """An Accelerator on the GPU when there is one (bf16 autocast if asked), else fp32 on the CPU."""
    from accelerate import Accelerator

    use_cpu = not torch.cuda.is_available()
    bf16 = precision == "bf16" and not use_cpu and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not bf16:
        print(f"train.precision = bf16 is not supported on {'the CPU' if use_cpu else 'this GPU'}; training in fp32")
    return Accelerator(cpu=use_cpu, mixed_precision="bf16" if bf16 else "no")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (used only where a library draws from the global RNG: weight init)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class RunLogger:
    """The MLflow run of one training stage; resumes the same run id after a kill, without duplicate steps."""

    def __init__(self, accelerator, params: Params, repo_root: Path, *, experiment: str, run_name: str,
                 tags: dict[str, Any], state: TrainingState, curve: str, parent_reference: dict | None = None):
        self.accelerator, self.state, self.curve = accelerator, state, curve
        self.main = accelerator.is_main_process
        self.experiment = f"{params.tracking.experiment_prefix}/{experiment}"
        self.run_name, self.tags, self.parent_reference = run_name, tags, parent_reference
        self.params, self.repo_root = params, repo_root
        self.run_id: str | None = None
        self.resumed = False
        self.last_logged_step = -1
        self._context = None

    def _previous_run_id(self) -> str | None:
        saved = self.state.peek()
        return saved.get("extra", {}).get("mlflow_run_id") if saved else None

    def __enter__(self) -> "RunLogger":
        if not self.main:
            return self
        self.uri = tracking.configure(self.params.tracking.tracking_uri, self.params.tracking.artifact_root,
                                      self.repo_root)
        previous = self._previous_run_id()
        # stage 2 nests under the stage-1 run, or under this DVC experiment's group when it did not train stage 1
        parent = tracking.evaluation_parent(self.parent_reference) if self.parent_reference and not previous else None
        self._context = tracking.start_run(experiment=self.experiment, run_name=self.run_name, tags=self.tags,
                                           parent_run_id=parent, resume_run_id=previous,
                                           log_system_metrics=True)
        self._context.__enter__()
        self.run_id = tracking.active_run_id()
        if previous:
            self.resumed = True
            self.last_logged_step = tracking.last_logged_step(self.run_id, self.curve)
        return self

    def __exit__(self, *exc) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)

    def log_params(self, flat: dict[str, Any]) -> None:
        if self.main and not self.resumed:
            tracking.log_params(flat)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log a row unless a run that was killed and resumed already holds this step."""
        if self.main and step > self.last_logged_step:
            tracking.log_metrics(metrics, step)

    def extra_state(self) -> dict[str, Any]:
        return {"mlflow_run_id": self.run_id} if self.run_id else {}

    def finish(self, run_reference: Path, summary: dict[str, float], tags: dict[str, Any]) -> None:
        """Final metrics and tags, and the run-reference file later stages nest under."""
        if not self.main:
            return
        tracking.log_metrics(summary)
        tracking.set_tags(tags)
        tracking.write_run_reference(run_reference, self.run_id, self.experiment, self.uri)


def stage_params(params: Params, keys: tuple[str, ...]) -> dict[str, Any]:
    """The flattened params under `keys` (sections or single values, e.g. `train`, `eval.rerank_k`): what a
    stage reads, so a run's params show its own settings and not, say, every benchmark's."""
    flat = flatten(params)
    return {key: value for key, value in flat.items() if any(key == k or key.startswith(f"{k}.") for k in keys)}


def make_optimizer(settings, model: torch.nn.Module, clip_module: torch.nn.Module | None):
    """Optimiser + LR scheduler of a training stage.

    `adamw`: groups by module type (norms, embeddings and biases without decay), linear warm-up then cosine.
    `bertadam`: the official recipe (official optimization.py): name-based groups, BertAdam (no bias correction,
    per-tensor clipping) and warm-up/cosine on the global progress.
    """
    if settings.optimizer == "bertadam":
        groups = faithful_bertadam_param_groups(model, lr=settings.lr, coef_lr=settings.coef_lr,
                                                weight_decay=settings.weight_decay)
        proportion = min(max(settings.warmup_steps / settings.steps, 1e-6), 0.999)
        schedule = faithful_warmup_cosine_lambda(settings.steps, proportion)
    else:
        groups = build_param_groups(model, clip_module, lr=settings.lr, coef_lr=settings.coef_lr,
                                    weight_decay=settings.weight_decay)
        schedule = warmup_cosine_lambda(settings.steps, settings.warmup_steps)
    optimizer = build_optimizer(settings.optimizer, groups)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def validation_steps(settings: StageTrainParams, batches_per_epoch: int) -> frozenset[int]:
    """Steps validated besides every `val_every`-th and the last: step 1 and the epoch ends when asked
    (the official cadence: every 150 steps, step 1 and the end of every epoch)."""
    steps: set[int] = {1} if settings.val_first_step else set()
    if settings.val_epoch_ends:
        steps.update(range(batches_per_epoch, settings.steps + 1, batches_per_epoch))
    return frozenset(steps)


def loop_settings(settings: StageTrainParams, batches_per_epoch: int) -> LoopSettings:
    """The loop's settings from a stage's RESOLVED settings (steps and warmup_steps set, `resolve_schedule`)."""
    return LoopSettings(total_steps=settings.steps, log_every=settings.log_every, val_every=settings.val_every,
                        grad_clip=settings.grad_clip, checkpoint_every=settings.checkpoint_every,
                        ema_decay=settings.ema_decay, keep_checkpoints=settings.keep_checkpoints,
                        extra_val_steps=validation_steps(settings, batches_per_epoch))


def partition(accelerator, settings: StageTrainParams, section: str) -> Partition:
    """This process's rank, the world size and the micro-batches per process (errors when they don't divide)."""
    _, micro_batches = batch_partition(settings, accelerator.num_processes, section)
    return Partition(rank=accelerator.process_index, world_size=accelerator.num_processes,
                     micro_batches=micro_batches)


def fingerprint(*sections: object, exclude: tuple[str, ...] = ()) -> dict:
    """Flattened parameters that determine a stage's weights; a resume under other values is refused."""
    flat: dict = {}
    for index, section in enumerate(sections):
        flat.update({f"{index}.{key}": value for key, value in flatten(section).items()})
    return {key: value for key, value in flat.items() if not key.split(".", 1)[1].startswith(exclude)}
