"""Does the denoiser read the query and candidates, or copy its noisy input? Top-1 accuracy by noise level.

For each query whose top-k holds a true candidate: x0 = 1 at the true candidates, `negative_value` elsewhere (as in
training); x_t = q_sample(x0, t, noise) with the trained schedule; x0_hat = denoiser(x_t, t | query, candidates);
a hit when argmax x0_hat (ties at random) is a true candidate. At t = 0, x_t is nearly x0, so copying it is enough;
at t = T-1 almost nothing of x0 is left and only the features can tell. With the query shuffled across lists (each
list gets another list's query, the candidates and x_t kept), a denoiser that uses the query drops to chance at
every t; one that copies x_t keeps its accuracy at low t. `copy_xt` is the accuracy of argmax x_t itself.
"""

from __future__ import annotations

import numpy as np
import torch

from diffusionret.diagnostics.ranking import descending_order
from diffusionret.method.diffusion import GaussianDiffusion
from diffusionret.method.rerank import BlockDenoiserFactory


def noise_steps(fractions: tuple[float, ...], num_timesteps: int) -> list[int]:
    """t = min(floor(f * T), T - 1) for each fraction f in [0, 1]: 0 -> 0, 0.5 -> T/2, 1 -> T-1 (sorted, unique)."""
    return sorted({min(int(f * num_timesteps), num_timesteps - 1) for f in fractions})


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of range(n) with no fixed point (identity when n < 2)."""
    if n < 2:
        return np.arange(n)
    order = rng.permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = order[np.roll(np.arange(n), 1)]  # each element takes the next one's place along a random cycle
    return out


def _top1_hits(values: torch.Tensor, positives: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    top1 = descending_order(values.double().numpy(), rng)[:, 0]
    return positives[np.arange(len(top1)), top1]


@torch.no_grad()
def noise_level_accuracy(block_denoiser: BlockDenoiserFactory, diffusion: GaussianDiffusion,
                         candidates: torch.Tensor, positives: np.ndarray, *, steps: list[int], negative_value: float,
                         draws: int, seed: int) -> dict:
    """Top-1 accuracy (%) of x0_hat at each step, with the own query and with a shuffled one, and of x_t itself.

    candidates: (Q, k) candidate indices of each query's list (its stage-1 top-k); positives: (Q, k) bool.
    Keys per step t: `t<t>` (own query), `t<t>_shuffled`, `t<t>_copy_xt`; `chance` (mean share of true candidates
    in a list), `lists` (queries with a true candidate in their list, the only ones scored).
    """
    positives = np.asarray(positives, bool)
    eligible = np.flatnonzero(positives.any(axis=1))
    rng = np.random.default_rng(seed)
    noise_rng = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {"lists": float(len(eligible)),
                             "chance": 100.0 * float(positives[eligible].mean()) if len(eligible) else float("nan")}
    if len(eligible) == 0:
        return out
    rows = torch.as_tensor(eligible)  # (n,)
    lists = candidates[rows]  # (n, k)
    truth = positives[eligible]  # (n, k)
    x0 = torch.where(torch.as_tensor(truth), 1.0, float(negative_value)).float()  # (n, k)
    denoisers = {"": block_denoiser(rows, lists),
                 "_shuffled": block_denoiser(rows[torch.as_tensor(derangement(len(eligible), rng))], lists)}
    for step in steps:
        t = torch.full((len(eligible),), step, dtype=torch.long)  # (n,)
        hits = {suffix: [] for suffix in (*denoisers, "_copy_xt")}
        for _ in range(draws):
            x_t = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=noise_rng))  # (n, k)
            for suffix, denoise in denoisers.items():
                hits[suffix].append(_top1_hits(denoise(x_t, t).float(), truth, rng))
            hits["_copy_xt"].append(_top1_hits(x_t, truth, rng))
        for suffix, found in hits.items():
            out[f"t{step}{suffix}"] = 100.0 * float(np.mean(found))
    return out
