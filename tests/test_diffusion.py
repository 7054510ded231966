"""Noise schedules, forward noising and DDIM against formulas written out here (guided-diffusion / DDIM paper)."""

import math

import numpy as np
import pytest
import torch

from diffusionret.method.diffusion import create_diffusion


def _cosine_abar_direct(T: int, t: int) -> float:
    """abar_t = prod_{i <= t} (1 - min(1 - f((i+1)/T) / f(i/T), 0.999)), f(s) = cos^2((s + 0.008)/1.008 * pi/2)."""
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    product = 1.0
    for i in range(t + 1):
        product *= 1.0 - min(1.0 - f((i + 1) / T) / f(i / T), 0.999)
    return product


@pytest.mark.parametrize("t", [0, 10, 25, 40, 45, 48, 49])
def test_cosine_schedule_matches_direct_formula(t):
    diffusion = create_diffusion(50, "cosine")
    assert diffusion.alphas_cumprod.dtype == torch.float32
    assert diffusion.alphas_cumprod[t].item() == pytest.approx(_cosine_abar_direct(50, t), rel=1e-6, abs=1e-9)


def test_cosine_schedule_matches_reference_rounded_values():
    abar = create_diffusion(50, "cosine").alphas_cumprod
    for t, expected in {0: 0.998, 10: 0.879, 25: 0.463, 40: 0.077, 45: 0.015, 48: 0.001}.items():
        assert abs(abar[t].item() - expected) < 1e-3, (t, abar[t].item())
    assert abar[49].item() < 1e-3  # "~0"
    assert bool((abar[1:] < abar[:-1]).all())  # strictly decreasing


def test_linear_schedule_is_rescaled_linspace():
    d1000 = create_diffusion(1000, "linear")
    assert d1000.betas[0].item() == pytest.approx(1e-4) and d1000.betas[-1].item() == pytest.approx(0.02)
    d100 = create_diffusion(100, "linear")
    expected_betas = [0.001 + i * (0.2 - 0.001) / 99 for i in range(100)]  # 1000/T = 10 times (1e-4, 0.02)
    assert np.allclose(d100.betas.numpy(), expected_betas, rtol=1e-6)
    abar = 1.0
    for i, beta in enumerate(expected_betas):
        abar *= 1.0 - beta
        if i in (0, 30, 99):
            assert d100.alphas_cumprod[i].item() == pytest.approx(abar, rel=1e-5)


def test_unknown_schedule_and_bad_steps_fail_loudly():
    with pytest.raises(ValueError, match="cosine"):
        create_diffusion(50, "sigmoid")
    with pytest.raises(ValueError, match="positive integer"):
        create_diffusion(0)


@pytest.mark.parametrize("step", [5, 40])
def test_q_sample_mean_and_variance(step):
    diffusion = create_diffusion(50, "cosine")
    rng = torch.Generator().manual_seed(0)
    draws = 20000
    x0 = torch.tensor([1.0, 0.0, -1.0, 0.5]).repeat(draws, 1)  # (draws, 4)
    t = torch.full((draws,), step, dtype=torch.long)
    x_t = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=rng))
    abar = _cosine_abar_direct(50, step)
    expected_mean = math.sqrt(abar) * torch.tensor([1.0, 0.0, -1.0, 0.5])
    standard_error = math.sqrt((1 - abar) / draws)
    assert torch.allclose(x_t.mean(0), expected_mean, atol=5 * standard_error)
    assert torch.allclose(x_t.var(0), torch.full((4,), 1 - abar), rtol=0.05)


def test_q_sample_rejects_mismatched_noise():
    diffusion = create_diffusion(10)
    with pytest.raises(ValueError, match="noise shape"):
        diffusion.q_sample(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(2, 4))


def test_ddim_final_sample_is_last_clamped_x0_hat():
    diffusion = create_diffusion(50, "cosine")
    recorded, steps = [], []

    def denoise_fn(x_t, t):  # deliberately outside [-1, 1] so the clamp matters
        out = 3.0 * x_t + 0.1 * t[:, None].float()
        recorded.append(out.clamp(-1, 1))
        steps.append(int(t[0]))
        return out

    sample = diffusion.ddim_sample(denoise_fn, (4, 6), torch.Generator().manual_seed(1))
    assert steps == list(range(49, -1, -1))
    assert torch.equal(sample, recorded[-1])
    assert sample.abs().max() <= 1.0


def test_ddim_step_matches_hand_written_update():
    T = 3
    diffusion = create_diffusion(T, "cosine")
    abar = [_cosine_abar_direct(T, t) for t in range(T)]
    noise = torch.randn(2, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    x = noise.numpy().copy()
    for t in reversed(range(T)):  # x0_hat = clamp(0.7 x), eps_hat and x_{t-1} as in DDIM with eta = 0
        x0_hat = np.clip(0.7 * x, -1, 1)
        eps_hat = (x / math.sqrt(abar[t]) - x0_hat) / math.sqrt(1 / abar[t] - 1)
        abar_prev = abar[t - 1] if t > 0 else 1.0
        x = math.sqrt(abar_prev) * x0_hat + math.sqrt(1 - abar_prev) * eps_hat

    sample = diffusion.ddim_sample(lambda x_t, t: 0.7 * x_t, (2, 5), noise=noise)
    assert np.allclose(sample.numpy(), x, atol=1e-10)


def test_ddim_is_repeatable_and_leaves_global_rng_alone():
    diffusion = create_diffusion(10)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    fn = lambda x_t, t: torch.tanh(x_t)  # noqa: E731
    a = diffusion.ddim_sample(fn, (3, 4), torch.Generator().manual_seed(7))
    b = diffusion.ddim_sample(fn, (3, 4), torch.Generator().manual_seed(7))
    c = diffusion.ddim_sample(fn, (3, 4), torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), before)


def test_ddim_trajectory_and_argument_errors():
    diffusion = create_diffusion(5)
    sample, trajectory = diffusion.ddim_sample(
        lambda x_t, t: 0.5 * x_t, (2, 3), torch.Generator().manual_seed(0), return_trajectory=True
    )
    assert len(trajectory) == 5 and torch.equal(trajectory[-1], sample)
    with pytest.raises(ValueError, match="exactly one"):
        diffusion.ddim_sample(lambda x_t, t: x_t, (2, 3))
    with pytest.raises(ValueError, match="noise shape"):
        diffusion.ddim_sample(lambda x_t, t: x_t, (2, 3), noise=torch.zeros(2, 4))


def test_sample_timesteps_uniform_and_seeded():
    diffusion = create_diffusion(50)
    t = diffusion.sample_timesteps(50000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.min()) == 0 and int(t.max()) == 49
    counts = torch.bincount(t, minlength=50).float()
    assert (counts - 1000).abs().max() < 5 * math.sqrt(1000)
    assert torch.equal(t, diffusion.sample_timesteps(50000, torch.Generator().manual_seed(0)))
