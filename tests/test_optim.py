"""Parameter groups, BertAdam, LR schedules and EMA against hand computations (official optimization.py)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffusionret.training.optim import (
    BertAdam,
    ModelEMA,
    build_optimizer,
    build_param_groups,
    faithful_bertadam_param_groups,
    faithful_warmup_cosine_lambda,
    warmup_cosine_lambda,
)


class _Clip(nn.Module):
    def __init__(self):
        super().__init__()
        self.token_embedding = nn.Embedding(10, 4)
        self.ln_1 = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 4)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.patch = nn.Conv2d(3, 4, 2, bias=False)
        self.patch.weight.requires_grad_(False)  # frozen: must not appear in any group


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.clip = _Clip()
        self.LayerNorm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.frame_position = nn.Embedding(12, 4)


def _names(groups, model):
    by_id = {id(p): name for name, p in model.named_parameters()}
    return {g["name"]: sorted(by_id[id(p)] for p in g["params"]) for g in groups}


def test_param_groups_by_module_type_and_clip_lr():
    model = _Model()
    groups = build_param_groups(model, model.clip, lr=1e-4, coef_lr=1e-3, weight_decay=0.2)
    assert _names(groups, model) == {
        "clip_decay": ["clip.fc.weight"],
        "clip_no_decay": ["clip.fc.bias", "clip.ln_1.bias", "clip.ln_1.weight", "clip.logit_scale",
                          "clip.token_embedding.weight"],
        "other_decay": ["head.weight"],
        "other_no_decay": ["LayerNorm.bias", "LayerNorm.weight", "frame_position.weight", "head.bias"],
    }
    settings = {g["name"]: (g["lr"], g["weight_decay"]) for g in groups}
    assert settings["clip_decay"] == (pytest.approx(1e-7), 0.2)
    assert settings["clip_no_decay"] == (pytest.approx(1e-7), 0.0)
    assert settings["other_decay"] == (1e-4, 0.2) and settings["other_no_decay"] == (1e-4, 0.0)


def test_param_groups_without_clip_and_with_a_foreign_clip_module():
    model = _Model()
    groups = build_param_groups(model, None, lr=1.0, coef_lr=0.5, weight_decay=0.1)
    assert {g["name"] for g in groups} == {"other_decay", "other_no_decay"}
    with pytest.raises(ValueError, match="not in model"):
        build_param_groups(model.head, model.clip, lr=1.0, coef_lr=0.5, weight_decay=0.1)


def test_faithful_groups_follow_the_official_name_rule():
    model = _Model()
    names = _names(faithful_bertadam_param_groups(model, lr=1e-4, coef_lr=1e-3, weight_decay=0.2), model)
    assert "clip.ln_1.weight" in names["clip_decay"]  # the official defect: ln_* weights are decayed
    assert "clip.token_embedding.weight" in names["clip_decay"]
    assert names["other_no_decay"] == ["LayerNorm.bias", "LayerNorm.weight", "head.bias"]


def test_bertadam_two_steps_against_hand_update():
    p0 = np.array([0.5, -1.0, 2.0])
    grads = [np.array([3.0, -4.0, 0.0]), np.array([0.1, 0.2, -0.3])]  # norm 5 (clipped), then < 1 (unchanged)
    lr, wd, b1, b2, eps = 0.01, 0.1, 0.9, 0.98, 1e-6

    p, m, v = p0.copy(), np.zeros(3), np.zeros(3)
    for g in grads:
        g = g * min(1.0, 1.0 / (np.linalg.norm(g) + 1e-6))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (np.sqrt(v) + eps) + wd * p)  # no bias correction, decoupled decay

    param = nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    optimizer = BertAdam([param], lr=lr, weight_decay=wd)
    for g in grads:
        param.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
    assert np.allclose(param.detach().numpy(), p, atol=1e-12)
    assert optimizer.state[param]["step"] == 2
    assert torch.equal(param.grad, torch.tensor(grads[-1], dtype=torch.float64))  # .grad itself is not rescaled


def test_build_optimizer_registry():
    model = _Model()
    groups = build_param_groups(model, model.clip, lr=1e-4, coef_lr=1e-3, weight_decay=0.2)
    adamw = build_optimizer("adamw", groups)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.9, 0.98)
    assert [g["name"] for g in adamw.param_groups] == [g["name"] for g in groups]
    bert = build_optimizer("bertadam", groups, eps=1e-8)
    assert isinstance(bert, BertAdam) and bert.param_groups[0]["eps"] == 1e-8
    with pytest.raises(ValueError, match="adamw"):
        build_optimizer("sgd", groups)


def test_warmup_cosine_values():
    f = warmup_cosine_lambda(total_steps=100, warmup_steps=10)
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)  # halfway through the 90 cosine steps
    assert f(10 + 30) == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))
    assert f(100) == pytest.approx(0.0, abs=1e-12) and f(150) == pytest.approx(0.0, abs=1e-12)
    no_warmup = warmup_cosine_lambda(total_steps=4, warmup_steps=0)
    assert [no_warmup(s) for s in range(5)] == pytest.approx([1.0, 0.8535533905932737, 0.5, 0.14644660940672627, 0.0])


def test_faithful_warmup_cosine_values():
    f = faithful_warmup_cosine_lambda(total_steps=100, warmup_proportion=0.1)
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(0.9755282581475768)  # 0.5 (1 + cos(0.1 pi)): the jump after warm-up
    assert f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-12)


def test_lambda_drives_lambdalr():
    param = nn.Parameter(torch.zeros(1))
    optimizer = BertAdam([param], lr=2.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine_lambda(10, 4))
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(1)
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0 * 0.5 * (1 + math.cos(math.pi / 6))])


def test_ema_update_against_hand_computation():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    for (_, a), b in zip(ema.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b)  # synced at init
    old = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)))  # changes BN running stats
    ema.update(model)
    for name, new in model.named_parameters():
        expected = 0.9 * old[name] + 0.1 * new.detach()
        assert torch.allclose(ema.state_dict()[name], expected, atol=1e-6), name
    for name, buffer in model.named_buffers():
        assert torch.equal(ema.state_dict()[name], buffer), name

    restored = ModelEMA(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)))
    restored.load_state_dict(ema.state_dict())
    for a, b in zip(restored.state_dict().values(), ema.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="unwrapped"):
        ema.update(nn.Sequential(nn.Linear(3, 2)))
