"""The training loop shared by both stages; what trains is a parameter.

The loop owns: optimisation (the objective's forward + backward, gradient averaging over processes,
clipping, optimiser and scheduler steps), the EMA copy, periodic validation of the raw and the EMA
weights (the better one is kept), resumable state, and logging (MLflow curves, a CSV for DVC plots,
steps/s). Gradients are averaged over processes explicitly after the objective's backward pass (no DDP
wrapper), which lets the objectives compute their loss on the global batch with gradient caching or
micro-batching and still give exactly the single-process gradient.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from diffusionret.training.optim import ModelEMA
from diffusionret.training.state import Progress, TrainingState, check_resumable


@dataclass
class LoopSettings:
    total_steps: int
    log_every: int
    val_every: int
    grad_clip: float
    checkpoint_every: int
    ema_decay: float
    keep_checkpoints: int = 1
    extra_val_steps: frozenset[int] = frozenset()  # validation also after these steps (step 1, epoch ends)


@dataclass
class LoopResult:
    best_state: dict[str, torch.Tensor]  # weights of the kept model (raw or EMA) at its best validation
    best_source: str  # "raw" or "ema"
    best_value: float
    best_step: int
    steps_per_second: float


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


class WindowMean:
    """Running sums of the scalars of every step since the last log row: a logged loss is the mean over its
    logging window (every step counts), not the value of the window's last batch.

    The sums live on the scalars' device (no host sync per step) and are saved with the resumable state, so a
    run resumed mid-window logs what an uninterrupted run would.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, scalars: dict[str, torch.Tensor]) -> None:
        for name, value in scalars.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.steps += 1

    def means(self) -> dict[str, torch.Tensor]:
        """Mean of each scalar over the window; starts a new window."""
        out = {name: total / self.steps for name, total in self.sums.items()}
        self.sums, self.steps = {}, 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {name: float(total) for name, total in self.sums.items()}, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any], device) -> None:
        self.sums = {name: torch.tensor(value, device=device) for name, value in state.get("sums", {}).items()}
        self.steps = int(state.get("steps", 0))


def learning_rates(param_groups: list[dict]) -> dict[str, float]:
    """One curve per distinct learning rate: `lr` when every group with parameters shares one (the usual case),
    else `lr/<group>` per distinct initial lr (e.g. `lr/clip`, `lr/other` with train.coef_lr != 1). The
    decay / no-decay halves of a group always share their lr and are one curve."""
    by_initial: dict[float, tuple[list[str], float]] = {}
    for group in param_groups:
        if not group["params"]:
            continue
        name = str(group.get("name", "group")).removesuffix("_no_decay").removesuffix("_decay")
        names, _ = by_initial.setdefault(group.get("initial_lr", group["lr"]), ([], group["lr"]))
        if name not in names:
            names.append(name)
    if len(by_initial) == 1:
        return {"lr": next(iter(by_initial.values()))[1]}
    return {f"lr/{'_'.join(names)}": lr for names, lr in by_initial.values()}


def average_gradients(parameters: list[torch.nn.Parameter], world_size: int) -> None:
    """Average .grad over processes with one flat all-reduce (a no-op for a single process)."""
    if world_size == 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of sizes,)
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for parameter, grad in zip(parameters, grads):
        parameter.grad = flat[offset:offset + grad.numel()].view_as(grad).clone()
        offset += grad.numel()


def run_training(*, accelerator, objective: torch.nn.Module, trainable: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler, batches: Callable[[int], Iterable],
                 validate: Callable[[torch.nn.Module], float], settings: LoopSettings, state: TrainingState,
                 log_metrics: Callable[[dict[str, float], int], None], after_step: Callable[[], None] = lambda: None,
                 on_resume: Callable[[Progress], None] = lambda p: None,
                 extra_state: Callable[[], dict[str, Any]] = dict,
                 validation_metric: str = "metric") -> LoopResult:
    """Train `trainable` (inside `objective`) for settings.total_steps, resuming from `state` if present.

    Every `settings.val_every` steps both the raw weights and their EMA are validated; the better one so far is
    kept (`LoopResult.best_state`, `best_source` "raw" | "ema", `best_step`, `best_value`).

    Args:
        accelerator: the `accelerate.Accelerator` of the run (device, processes, gradient averaging, checkpoints).
        objective: module whose `backward_step(batch)` runs forward + backward of this process's share of one
            global batch and returns detached scalars to log, each logged as its mean over the `log_every` steps
            of a window (e.g. `method.objectives.ContrastiveObjective`).
        trainable: the module whose parameters are optimised and validated (inside `objective`).
        optimizer: optimiser over `trainable`'s parameters (`training.optim`).
        scheduler: LR scheduler stepped once per optimiser step.
        batches: `batches(start_step)` yields this process's batches from global step `start_step` on, so a
            resumed run continues the same sequence.
        validate: `validate(module)` returns the selection metric (higher is better) of a module with the same
            structure as `trainable` (the raw weights or the EMA copy), logged as `val/<validation_metric>_raw`
            and `val/<validation_metric>_ema`.
        settings: steps, logging / validation / checkpoint intervals, gradient clipping, EMA decay.
        state: the resumable state on disk (checkpoints, best weights, the loss CSV).
        log_metrics: `log_metrics(values, step)` (main process only), e.g. to MLflow.
        after_step: called after every optimiser step (e.g. clamping the logit scale).
        on_resume: `on_resume(progress)` after a checkpoint is loaded (e.g. restoring a noise generator).
        extra_state: returns JSON-able extras saved with each checkpoint (read back in `progress.extra`).
        validation_metric: the name of what `validate` returns (e.g. `t2v_R1`), used in the logged names.
    """
    progress = Progress()
    window = WindowMean()
    fingerprint = state.fingerprint
    check_resumable(state, fingerprint)
    ema = ModelEMA(trainable, decay=settings.ema_decay)
    stateful = {"model": trainable, "optimizer": optimizer, "scheduler": scheduler, "ema": ema}
    if accelerator.is_main_process:
        for message in state.prepare(settings.keep_checkpoints):
            accelerator.print(message)
    accelerator.wait_for_everyone()
    if state.exists():
        state.load(accelerator, progress, stateful)
        window.load_state_dict(progress.extra.get("log_window", {}), accelerator.device)
        on_resume(progress)
        if accelerator.is_main_process:
            _truncate_log(state.log_csv, progress.step)
            accelerator.print(f"resumed from {state.latest} at step {progress.step}")
    elif accelerator.is_main_process and state.log_csv.exists():
        state.log_csv.unlink()
    parameters = [p for p in trainable.parameters() if p.requires_grad]

    def consider(module: torch.nn.Module, source: str, step: int) -> None:
        value = validate(module)
        if accelerator.is_main_process:
            log_metrics({f"val/{validation_metric}_{source}": value}, step)
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

    bar = tqdm(total=settings.total_steps, initial=progress.step, disable=not accelerator.is_main_process,
               desc="train", dynamic_ncols=True)
    window_start, window_steps, steps_per_second = time.perf_counter(), 0, float("nan")
    trainable.train()
    for batch in batches(progress.step):
        with accelerator.autocast():
            scalars = objective.backward_step(batch)
        average_gradients(parameters, accelerator.num_processes)
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        after_step()
        ema.update(trainable)
        window.add(scalars)
        progress.step += 1
        window_steps += 1
        bar.update(1)

        if progress.step % settings.log_every == 0 or progress.step == settings.total_steps:
            reduced = {name: accelerator.reduce(value.to(accelerator.device), reduction="mean").item()
                       for name, value in window.means().items()}  # window mean, averaged over processes
            now = time.perf_counter()
            steps_per_second = window_steps / max(now - window_start, 1e-9)
            window_start, window_steps = now, 0
            row = {**reduced, **learning_rates(optimizer.param_groups)}
            row["perf/steps_per_second"] = steps_per_second
            if accelerator.is_main_process:
                log_metrics(row, progress.step)
                _append_log(state.log_csv, {"step": progress.step, **row})
                bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in reduced.items()})
        if (progress.step % settings.val_every == 0 or progress.step == settings.total_steps
                or progress.step in settings.extra_val_steps):
            validate_both(progress.step)
        if progress.step % settings.checkpoint_every == 0 or progress.step == settings.total_steps:
            progress.extra.update(extra_state())
            progress.extra["fingerprint"] = fingerprint
            progress.extra["log_window"] = window.state_dict()
            state.save(accelerator, progress, settings.keep_checkpoints, stateful)
    bar.close()
    if progress.best_step < 0:  # a resumed run that had already finished
        validate_both(progress.step)
    accelerator.wait_for_everyone()
    return LoopResult(best_state=load_file(str(state.best)), best_source=progress.best_source,
                      best_value=progress.best_value, best_step=progress.best_step,
                      steps_per_second=steps_per_second)
