"""What the training loop logs: window means of the losses, one lr curve per distinct lr, named validation curves."""

import numpy as np
import pytest
import torch
from torch import nn

from diffusionret.training.loop import LoopSettings, learning_rates, run_training
from diffusionret.training.state import TrainingState
from diffusionret.training.optim import build_param_groups

LOSSES = [5.0, 3.0, 4.0, 1.0, 2.0, 6.0, 0.5, 0.25, 7.0, 8.0]  # the loss of steps 1..10


class ScriptedObjective(nn.Module):
    """Returns LOSSES[i] at the i-th step (and a real backward pass on a one-weight model)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, 0

    def backward_step(self, batch):
        (self.model.weight.sum() * 0.0).backward()
        value = LOSSES[self.calls]
        self.calls += 1
        return {"loss/scripted": torch.tensor(value), "loss/scripted_twice": torch.tensor(2 * value)}


def train(tmp_path, log_every: int, checkpoint_every: int = 100):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    logged = []
    settings = LoopSettings(total_steps=len(LOSSES), log_every=log_every, val_every=5, grad_clip=0.0,
                            checkpoint_every=checkpoint_every, ema_decay=0.9)
    run_training(accelerator=accelerator, objective=ScriptedObjective(model), trainable=model, optimizer=optimizer,
                 scheduler=scheduler, batches=lambda start: range(start, len(LOSSES)), validate=lambda module: 0.5,
                 settings=settings, state=TrainingState(tmp_path / "state"),
                 log_metrics=lambda row, step: logged.append((step, dict(row))), validation_metric="t2v_R1")
    return logged


def test_logged_loss_is_the_mean_over_each_window(tmp_path):
    logged = train(tmp_path, log_every=4)
    losses = {step: row["loss/scripted"] for step, row in logged if "loss/scripted" in row}
    # by hand: steps 1-4, 5-8, and the last (shorter) window 9-10
    assert losses == pytest.approx({4: (5 + 3 + 4 + 1) / 4, 8: (2 + 6 + 0.5 + 0.25) / 4, 10: (7 + 8) / 2})
    doubled = {step: row["loss/scripted_twice"] for step, row in logged if "loss/scripted_twice" in row}
    assert doubled == pytest.approx({step: 2 * value for step, value in losses.items()})
    assert {step: row["lr"] for step, row in logged if "lr" in row} == pytest.approx({4: 0.1, 8: 0.1, 10: 0.1})


def test_validation_curves_name_their_metric(tmp_path):
    logged = train(tmp_path, log_every=4)
    names = {name for _, row in logged for name in row if name.startswith("val/")}
    assert names == {"val/t2v_R1_raw", "val/t2v_R1_ema"}


def test_a_run_resumed_mid_window_logs_the_same_means(tmp_path):
    """A checkpoint every 3 steps cuts the 4-step windows; a resumed run must still log the full-window means."""
    straight = train(tmp_path / "straight", log_every=4)
    from accelerate import Accelerator

    class KilledAfterSix(ScriptedObjective):
        def backward_step(self, batch):
            if self.calls == 6:
                raise KeyboardInterrupt
            return super().backward_step(batch)

    accelerator = Accelerator(cpu=True)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    settings = LoopSettings(total_steps=len(LOSSES), log_every=4, val_every=5, grad_clip=0.0, checkpoint_every=3,
                            ema_decay=0.9)
    state = TrainingState(tmp_path / "resumed")  # killed at step 7: the last state is step 6, mid-window (5-8)
    first, second = [], []
    with pytest.raises(KeyboardInterrupt):
        run_training(accelerator=accelerator, objective=KilledAfterSix(model), trainable=model, optimizer=optimizer,
                     scheduler=scheduler, batches=lambda start: range(start, len(LOSSES)),
                     validate=lambda module: 0.5, settings=settings, state=state,
                     log_metrics=lambda row, step: first.append((step, dict(row))))
    assert state.exists()
    accelerator = Accelerator(cpu=True)  # a new process: fresh objects, registered once
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    resumed = ScriptedObjective(model)
    resumed.calls = 6
    run_training(accelerator=accelerator, objective=resumed, trainable=model, optimizer=optimizer,
                 scheduler=scheduler, batches=lambda start: range(start, len(LOSSES)), validate=lambda module: 0.5,
                 settings=settings, state=state, log_metrics=lambda row, step: second.append((step, dict(row))))
    by_step = {step: row["loss/scripted"] for step, row in first + second if "loss/scripted" in row}
    expected = {step: row["loss/scripted"] for step, row in straight if "loss/scripted" in row}
    assert by_step == pytest.approx(expected)


def test_one_lr_curve_per_distinct_learning_rate():
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    clip = nn.Linear(2, 2)
    whole = nn.ModuleDict({"clip": clip, "rest": model})
    same = build_param_groups(whole, clip, lr=1e-3, coef_lr=1.0, weight_decay=0.1)
    assert learning_rates(same) == {"lr": 1e-3}
    scaled = build_param_groups(whole, clip, lr=1e-3, coef_lr=0.01, weight_decay=0.1)
    assert learning_rates(scaled) == pytest.approx({"lr/clip": 1e-5, "lr/other": 1e-3})
    only_other = build_param_groups(model, None, lr=1e-3, coef_lr=0.01, weight_decay=0.1)
    assert learning_rates(only_other) == {"lr": 1e-3}
    assert np.isfinite(list(learning_rates(scaled).values())).all()
