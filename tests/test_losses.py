"""Contrastive (InfoNCE) loss against a hand-written log-softmax loop; gather_with_grad outside distributed."""

import math

import pytest
import torch

from diffusionret.method.losses import contrastive_loss, gather_with_grad


def _infonce_by_hand(similarity: list[list[float]], scale: float) -> float:
    """1/2 [mean_i -log softmax_j(s S_ij)[i] + mean_j -log softmax_i(s S_ij)[j]] (official CrossEn)."""
    size = len(similarity)
    text_to_video = 0.0
    for i in range(size):
        row = [scale * similarity[i][j] for j in range(size)]
        text_to_video += -(row[i] - math.log(sum(math.exp(x) for x in row)))
    video_to_text = 0.0
    for j in range(size):
        column = [scale * similarity[i][j] for i in range(size)]
        video_to_text += -(column[j] - math.log(sum(math.exp(x) for x in column)))
    return (text_to_video / size + video_to_text / size) / 2


@pytest.mark.parametrize("log_scale", [0.0, 1.3, math.log(100.0)])
def test_contrastive_loss_matches_hand_formula(log_scale):
    generator = torch.Generator().manual_seed(int(log_scale * 10))
    similarity = torch.rand(5, 5, generator=generator, dtype=torch.float64) * 2 - 1
    loss = contrastive_loss(similarity, torch.tensor(log_scale, dtype=torch.float64))
    assert loss.item() == pytest.approx(_infonce_by_hand(similarity.tolist(), math.exp(log_scale)), rel=1e-12)


def test_contrastive_loss_is_asymmetric_in_rows_and_columns():
    """A matrix whose rows and columns differ: both directions must enter (not twice the same one)."""
    similarity = torch.tensor([[1.0, 0.9, -1.0], [0.0, 1.0, 0.0], [0.5, 0.2, 1.0]], dtype=torch.float64)
    loss = contrastive_loss(similarity, torch.tensor(0.7, dtype=torch.float64))
    assert loss.item() == pytest.approx(_infonce_by_hand(similarity.tolist(), math.exp(0.7)), rel=1e-12)


def test_contrastive_loss_gradient_reaches_logit_scale():
    similarity = torch.eye(3) * 0.5 + 0.1
    log_scale = torch.tensor(1.0, requires_grad=True)
    contrastive_loss(similarity, log_scale).backward()
    assert log_scale.grad is not None and log_scale.grad.item() < 0  # sharper logits lower the loss here


def test_contrastive_loss_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        contrastive_loss(torch.zeros(2, 3), torch.tensor(0.0))


def test_gather_is_identity_without_distributed():
    tensor = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    gathered = gather_with_grad(tensor)
    assert gathered is tensor
