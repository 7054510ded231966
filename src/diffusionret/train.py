"""The accelerate training loop shared by both stages; what trains is a parameter.

The loop owns: optimisation (backward, gradient clipping, optimiser and scheduler steps), the EMA copy,
periodic validation of the raw and the EMA weights (the better one is kept), resumable state, and
logging (MLflow curves, a CSV for DVC plots, steps/s). The objective module's forward returns the loss
and a dict of scalars to log; it is the module accelerate wraps, so gradient synchronisation works.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from diffusionret.optim import ModelEMA


@dataclass
class LoopSettings:
    total_steps: int
    log_every: int
    val_every: int
    grad_clip: float
    checkpoint_every: int
    ema_decay: float


@dataclass
class Progress:
    """What a resumed run needs beyond model/optimiser/scheduler state (checkpointed by accelerate)."""

    step: int = 0
    best_value: float = -math.inf
    best_source: str = ""
    best_step: int = -1
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the MLflow run id, RNG states

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "best_value": self.best_value, "best_source": self.best_source,
                "best_step": self.best_step, "extra": self.extra}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.best_value = int(state["step"]), float(state["best_value"])
        self.best_source, self.best_step = str(state["best_source"]), int(state["best_step"])
        self.extra = dict(state["extra"])


@dataclass
class LoopResult:
    best_state: dict[str, torch.Tensor]  # weights of the kept model (raw or EMA) at its best validation
    best_source: str  # "raw" or "ema"
    best_value: float
    best_step: int
    steps_per_second: float


class TrainingState:
    """Resumable state on disk: `<dir>/latest` (accelerate state) and `<dir>/best.safetensors`."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.latest = directory / "latest"
        self.best = directory / "best.safetensors"
        self.log_csv = directory / "log.csv"

    def exists(self) -> bool:
        return (self.latest / "progress.json").is_file()

    def save(self, accelerator, progress: Progress) -> None:
        """Write the state to a temporary directory, then swap it in (a kill never leaves half a state)."""
        if not accelerator.is_main_process:
            accelerator.save_state(str(self.directory / "tmp-latest"))  # collective call on every rank
            accelerator.wait_for_everyone()
            return
        tmp = self.directory / "tmp-latest"
        if tmp.exists():
            shutil.rmtree(tmp)
        accelerator.save_state(str(tmp))
        (tmp / "progress.json").write_text(json.dumps(progress.state_dict()))
        old = self.directory / "old-latest"
        if self.latest.exists():
            self.latest.rename(old)
        tmp.rename(self.latest)
        if old.exists():
            shutil.rmtree(old)
        accelerator.wait_for_everyone()

    def load(self, accelerator, progress: Progress) -> None:
        accelerator.load_state(str(self.latest))
        progress.load_state_dict(json.loads((self.latest / "progress.json").read_text()))


def _append_log(path: Path, row: dict[str, float]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop rows logged after the resumed state's step (they will be produced again)."""
    if not path.exists():
        return
    with path.open() as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= last_step]
    path.unlink()
    for row in rows:
        _append_log(path, row)


def run_training(*, accelerator, objective: torch.nn.Module, trainable: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler, batches: Callable[[int], Iterable],
                 validate: Callable[[torch.nn.Module], float], settings: LoopSettings, state: TrainingState,
                 log_metrics: Callable[[dict[str, float], int], None], after_step: Callable[[], None] = lambda: None,
                 progress: Progress | None = None, on_resume: Callable[[Progress], None] = lambda p: None,
                 extra_state: Callable[[], dict[str, Any]] = dict) -> LoopResult:
    """Train `trainable` (inside `objective`) for settings.total_steps, resuming from `state` if present.

    batches(start_step) yields this process's batches from start_step on; validate(module) returns the
    selection metric (higher is better) of a module with the same structure as `trainable`.
    """
    progress = progress or Progress()
    ema = ModelEMA(trainable, decay=settings.ema_decay)
    objective, optimizer, scheduler = accelerator.prepare(objective, optimizer, scheduler)
    accelerator.register_for_checkpointing(ema)
    state.directory.mkdir(parents=True, exist_ok=True)
    if state.exists():
        state.load(accelerator, progress)
        on_resume(progress)
        if accelerator.is_main_process:
            _truncate_log(state.log_csv, progress.step)
            accelerator.print(f"resumed from {state.latest} at step {progress.step}")
    elif accelerator.is_main_process and state.log_csv.exists():
        state.log_csv.unlink()

    def consider(module: torch.nn.Module, source: str, step: int) -> None:
        value = validate(module)
        if accelerator.is_main_process:
            log_metrics({f"val/{source}": value}, step)
        if value > progress.best_value:
            progress.best_value, progress.best_source, progress.best_step = value, source, step
            if accelerator.is_main_process:
                tmp = state.best.with_suffix(".tmp")
                save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
                tmp.replace(state.best)

    def validate_both(step: int) -> None:
        trainable.eval()
        with torch.no_grad():
            consider(trainable, "raw", step)
            consider(ema.module, "ema", step)
        trainable.train()

    start = progress.step
    bar = tqdm(total=settings.total_steps, initial=start, disable=not accelerator.is_main_process,
               desc="train", dynamic_ncols=True)
    window_start, window_steps, steps_per_second = time.perf_counter(), 0, float("nan")
    trainable.train()
    for batch in batches(start):
        step = progress.step
        loss, scalars = objective(batch)
        accelerator.backward(loss)
        if settings.grad_clip > 0:
            accelerator.clip_grad_norm_([p for p in trainable.parameters() if p.requires_grad], settings.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        after_step()
        ema.update(trainable)
        progress.step = step + 1
        window_steps += 1
        bar.update(1)

        if progress.step % settings.log_every == 0 or progress.step == settings.total_steps:
            reduced = {name: accelerator.reduce(value.detach().float(), reduction="mean").item()
                       for name, value in scalars.items()}
            now = time.perf_counter()
            steps_per_second = window_steps / max(now - window_start, 1e-9)
            window_start, window_steps = now, 0
            row = dict(reduced)
            for group in optimizer.param_groups:
                row[f"lr/{group.get('name', 'group')}"] = group["lr"]
            row["perf/steps_per_second"] = steps_per_second
            if accelerator.is_main_process:
                log_metrics(row, progress.step)
                _append_log(state.log_csv, {"step": progress.step, **row})
                bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in reduced.items()})
        if progress.step % settings.val_every == 0 or progress.step == settings.total_steps:
            validate_both(progress.step)
        if progress.step % settings.checkpoint_every == 0 or progress.step == settings.total_steps:
            progress.extra.update(extra_state())
            state.save(accelerator, progress)
    bar.close()
    if progress.best_step < 0:  # a resumed run that had already finished
        validate_both(progress.step)
    accelerator.wait_for_everyone()
    return LoopResult(best_state=load_file(str(state.best)), best_source=progress.best_source,
                      best_value=progress.best_value, best_step=progress.best_step,
                      steps_per_second=steps_per_second)
