"""Gaussian diffusion over a query's candidate vector: noise schedules, forward noising, DDIM sampling.

One entry point, `create_diffusion(steps, schedule)`, in the style of DiT's `diffusion/__init__.py`.
DiffusionRet vendors OpenAI's guided-diffusion but uses only a small part of it (official diffusion_models/): the
schedule, `q_sample`, uniform timesteps and deterministic DDIM (eta = 0) with an x0-predicting network.
The VLB / MSE machinery is dead code there and is not reproduced.

Notation (variable -> symbol of the DDIM paper, Song et al. 2021):
    betas[t]                  -> beta_t
    alphas_cumprod[t]         -> abar_t = prod_{s <= t} (1 - beta_s)
    alphas_cumprod_prev[t]    -> abar_{t-1}, with abar_{-1} = 1
    x0                        -> x_0, the clean vector (1 at the positive candidate, 0 or -1 elsewhere)
    noise                     -> eps ~ N(0, I)
    x_t                       -> x_t, the noisy vector at step t
    x0_hat                    -> x0_hat = clamp(f_theta(x_t, t), -1, 1), the network's clean estimate
    eps_hat                   -> eps_hat, the noise implied by (x_t, x0_hat)
Timesteps are integers 0..T-1 passed to the network unscaled (no rescaling to 1000), as
the official code does.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B, N), t (B,)) -> x0_hat (B, N)


#### Noise schedules ####


def cosine_betas(steps: int, offset: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule of Nichol & Dhariwal (2021): beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999)."""

    def abar(s: float) -> float:  # abar(s) = cos^2(((s + offset) / (1 + offset)) * pi / 2), s in [0, 1]
        return math.cos((s + offset) / (1.0 + offset) * math.pi / 2) ** 2

    return np.array(
        [min(1.0 - abar((i + 1) / steps) / abar(i / steps), max_beta) for i in range(steps)], dtype=np.float64
    )


def linear_betas(steps: int) -> np.ndarray:
    """Linear schedule of Ho et al. (2020), linspace(1e-4, 0.02) rescaled by 1000 / T as guided-diffusion does."""
    scale = 1000.0 / steps
    return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)


SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {"cosine": cosine_betas, "linear": linear_betas}


#### Gaussian diffusion ####


class GaussianDiffusion:
    """A discrete-time Gaussian diffusion with an x0-predicting network (predict_xstart in the official code)."""

    def __init__(self, betas: np.ndarray):
        betas = np.asarray(betas, dtype=np.float64)  # (T,)
        if betas.ndim != 1 or len(betas) == 0 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError(f"betas must be a non-empty 1-D array in (0, 1], got shape {betas.shape}")
        self.num_timesteps = len(betas)
        # float64 for the maths (as guided-diffusion), float32 tensors for the rest of the code.
        self._abar64 = np.cumprod(1.0 - betas)  # abar_t, (T,)
        self._abar_prev64 = np.append(1.0, self._abar64[:-1])  # abar_{t-1}, abar_{-1} = 1, (T,)
        self.betas = torch.from_numpy(betas).float()
        self.alphas_cumprod = torch.from_numpy(self._abar64).float()
        self.alphas_cumprod_prev = torch.from_numpy(self._abar_prev64).float()
        self.sqrt_alphas_cumprod = torch.from_numpy(np.sqrt(self._abar64)).float()
        self.sqrt_one_minus_alphas_cumprod = torch.from_numpy(np.sqrt(1.0 - self._abar64)).float()
        self._per_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"GaussianDiffusion(num_timesteps={self.num_timesteps})"

    def _q_coefficients(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar), sqrt(1 - abar)) on `device`, cached so training steps do not copy them every call."""
        if device not in self._per_device:
            self._per_device[device] = (
                self.sqrt_alphas_cumprod.to(device),
                self.sqrt_one_minus_alphas_cumprod.to(device),
            )
        return self._per_device[device]

    def sample_timesteps(
        self, batch: int, generator: torch.Generator, device: torch.device | str | None = None, min_step: int = 0
    ) -> torch.Tensor:
        """t ~ Uniform{min_step, ..., T-1}, one per query, drawn with `generator` (on its device), moved to `device`.

        min_step = 0 is the official uniform draw (and the same draws as before it existed)."""
        if not 0 <= min_step < self.num_timesteps:
            raise ValueError(f"min_step={min_step} must be in [0, {self.num_timesteps - 1}]")
        t = torch.randint(min_step, self.num_timesteps, (batch,), generator=generator,
                          device=generator.device)  # (B,)
        return t if device is None else t.to(device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward noising, eq. (4) of DDPM: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
        if noise.shape != x0.shape:
            raise ValueError(f"q_sample: noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        if t.shape != x0.shape[:1]:
            raise ValueError(f"q_sample: t must have shape ({x0.shape[0]},), got {tuple(t.shape)}")
        sqrt_abar, sqrt_one_minus_abar = self._q_coefficients(x0.device)
        view = (-1,) + (1,) * (x0.dim() - 1)  # broadcast (B,) over the candidate axis
        return (
            sqrt_abar[t].view(view).to(x0.dtype) * x0
            + sqrt_one_minus_abar[t].view(view).to(x0.dtype) * noise
        )

    @torch.no_grad()
    def ddim_sample(
        self,
        denoise_fn: DenoiseFn,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        *,
        noise: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        clamp: bool = True,
        return_trajectory: bool = False,
        clamp_final: bool = True,
        stop_step: int = 0,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Deterministic DDIM (eta = 0) over all T steps from x_T ~ N(0, I); returns the final x0_hat.

        Two options beyond the official sampler (the defaults are official):
        - `clamp_final=False` returns the last prediction unclamped (the steps before it still use the clamped
          x0_hat, as official). A clamped final x0_hat ties every candidate the network puts above +1, and a
          ranking by it then falls back to the stage-1 order among them; the unclamped value keeps its order.
        - `stop_step=s > 0` runs the steps T-1 ... s only and returns the x0_hat predicted at step s, for a
          network trained only on steps >= s (it never sees a lower step).

        The start noise is either drawn with `generator` (on the generator's device, then moved to
        `device`) or passed as `noise` (exactly one of the two). With `return_trajectory` the list of
        the T clamped x0_hat, in sampling order (t = T-1 ... 0), is returned as well.
        """
        if (generator is None) == (noise is None):
            raise ValueError("ddim_sample: pass exactly one of `generator` (to draw x_T) or `noise` (x_T itself)")
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=generator.device)  # x_T, (B, N)
        elif tuple(noise.shape) != tuple(shape):
            raise ValueError(f"ddim_sample: noise shape {tuple(noise.shape)} != requested shape {tuple(shape)}")
        if not 0 <= stop_step < self.num_timesteps:
            raise ValueError(f"ddim_sample: stop_step={stop_step} must be in [0, {self.num_timesteps - 1}]")
        x = noise if device is None else noise.to(device)
        trajectory: list[torch.Tensor] = []
        x0_hat = x
        for step in reversed(range(stop_step, self.num_timesteps)):
            abar, abar_prev = float(self._abar64[step]), float(self._abar_prev64[step])
            t = torch.full((shape[0],), step, dtype=torch.long, device=x.device)  # (B,)
            # 1. predicted original sample x0_hat ("predicted x_0" in DDIM eq. (12)), clamped to [-1, 1]
            x0_hat = denoise_fn(x, t)
            if step == stop_step and (not clamp_final or stop_step > 0):
                raw = x0_hat.clamp(-1.0, 1.0) if (clamp and clamp_final) else x0_hat  # the returned prediction
                if return_trajectory:
                    trajectory.append(raw)
                return (raw, trajectory) if return_trajectory else raw
            if clamp:
                x0_hat = x0_hat.clamp(-1.0, 1.0)
            if return_trajectory:
                trajectory.append(x0_hat)
            # 2. implied noise: eps_hat = (x_t / sqrt(abar_t) - x0_hat) / sqrt(1 / abar_t - 1)
            eps_hat = (x / math.sqrt(abar) - x0_hat) / math.sqrt(1.0 / abar - 1.0)
            # 3. DDIM eq. (12) with sigma_t = 0: x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1}) eps_hat
            #    (abar_{-1} = 1, so the last step returns x0_hat itself)
            x = math.sqrt(abar_prev) * x0_hat + math.sqrt(1.0 - abar_prev) * eps_hat
        return (x, trajectory) if return_trajectory else x


#### Factory ####


def create_diffusion(steps: int, schedule: str = "cosine") -> GaussianDiffusion:
    """Build the diffusion used by DiffusionRet: `steps` = T (50 in the README), `schedule` in SCHEDULES."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"diffusion steps must be a positive integer, got {steps!r} (the paper uses 50)")
    return GaussianDiffusion(SCHEDULES[schedule](steps))
