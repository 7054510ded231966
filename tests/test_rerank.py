"""Re-ranking (as official): only the top-k move, by alpha * softmax(x0_hat), independently of batching."""

import pytest
import torch
from torch import nn

from diffusionret.method.diffusion import create_diffusion
from diffusionret.method.rerank import rerank_scores, rerank_t2v, rerank_v2t
from diffusionret.model.denoiser import Generator

Q, V, T, D, K = 7, 9, 2, 8, 3


def _features(seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(Q, V, generator=g)  # (texts, videos)
    sentences = torch.randn(Q, D, generator=g)
    frames = torch.randn(V, T, D, generator=g)
    mask = torch.ones(V, T, dtype=torch.long)
    mask[::2, -1] = 0
    return scores, sentences, frames, mask


def _generator():
    generator = Generator(width=D, seed=1)
    with torch.no_grad():  # larger weights than the N(0, 0.02) init so outputs differ visibly across queries
        for p in generator.parameters():
            p.mul_(3)
    return generator


class _Constant(nn.Module):
    """A 'denoiser' whose x0_hat is a constant, whatever the inputs."""

    def __init__(self, value: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))

    def condition(self, *features):
        return None

    def denoise(self, x_t, t, condition):
        return torch.full_like(x_t, float(self.value))


def test_only_topk_entries_change_and_input_is_untouched():
    scores, sentences, frames, mask = _features()
    original = scores.clone()
    result = rerank_t2v(scores, sentences, frames, mask, _generator().t2v, create_diffusion(5), k=K, seed=0)
    assert torch.equal(scores, original)
    for row in range(Q):
        expected_topk = sorted(range(V), key=lambda j: -float(original[row, j]))[:K]
        assert result.topk_indices[row].tolist() == expected_topk
        for column in range(V):
            if column in expected_topk:
                r = expected_topk.index(column)
                added = float(result.probabilities[row, r])
                expected = float(original[row, column]) + added
                assert float(result.scores[row, column]) == pytest.approx(expected, abs=1e-6)
            else:
                assert float(result.scores[row, column]) == float(original[row, column])
    assert torch.allclose(result.probabilities, torch.softmax(result.x0_hat, dim=1))
    assert torch.allclose(result.probabilities.sum(1), torch.ones(Q))
    assert result.x0_hat.abs().max() <= 1.0


def test_constant_denoiser_alpha_zero_and_uniform_bonus():
    scores, sentences, frames, mask = _features()
    diffusion = create_diffusion(4)
    unchanged = rerank_t2v(scores, sentences, frames, mask, _Constant(0.3), diffusion, k=K, alpha=0.0, seed=0)
    assert torch.equal(unchanged.scores, scores)
    uniform = rerank_t2v(scores, sentences, frames, mask, _Constant(0.3), diffusion, k=K, alpha=1.0, seed=0)
    bonus = uniform.scores - scores
    for row in range(Q):
        top = set(sorted(range(V), key=lambda j: -float(scores[row, j]))[:K])
        assert all(abs(float(bonus[row, j]) - (1 / K if j in top else 0.0)) < 1e-6 for j in range(V))


def test_temperature_scales_the_softmax():
    scores, sentences, frames, mask = _features()
    result = rerank_t2v(scores, sentences, frames, mask, _generator().t2v, create_diffusion(3),
                        k=K, temperature=5.0, seed=0)
    assert torch.allclose(result.probabilities, torch.softmax(5.0 * result.x0_hat, dim=1))


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_batching_does_not_change_results(direction):
    scores, sentences, frames, mask = _features()
    generator, diffusion = _generator(), create_diffusion(5)

    def run(query_batch, seed=3):
        if direction == "t2v":
            return rerank_t2v(scores, sentences, frames, mask, generator.t2v, diffusion, k=K, seed=seed,
                              query_batch=query_batch)
        return rerank_v2t(scores.T.contiguous(), frames, mask, sentences, generator.v2t, diffusion, k=K, seed=seed,
                          query_batch=query_batch)

    small, large = run(3), run(100)
    # equal up to float rounding: a batched matmul may round differently for a different number of rows
    assert torch.equal(small.topk_indices, large.topk_indices)
    assert torch.allclose(small.x0_hat, large.x0_hat, atol=1e-6, rtol=0)
    assert torch.allclose(small.scores, large.scores, atol=1e-6, rtol=0)
    assert not torch.allclose(small.x0_hat[0], small.x0_hat[1], atol=1e-3)  # the check is not vacuous
    assert not torch.allclose(run(3, seed=4).x0_hat, small.x0_hat, atol=1e-3)  # and the seed matters


def test_start_noise_of_query_i_is_row_i_of_one_seeded_draw():
    scores = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    diffusion = create_diffusion(4)
    first_x_t = {}

    def block_denoiser(rows, candidates):
        def denoise(x_t, t):
            if int(t[0]) == 3:  # the first DDIM step sees x_T
                for r, row in enumerate(rows.tolist()):
                    first_x_t[row] = x_t[r].clone()
            return torch.zeros_like(x_t)

        return denoise

    rerank_scores(scores, block_denoiser, diffusion, k=4, seed=9, query_batch=2)
    expected = torch.randn(5, 4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.stack([first_x_t[i] for i in range(5)]), expected)


def test_v2t_uses_rows_as_videos_and_checks_shapes():
    scores, sentences, frames, mask = _features()
    generator, diffusion = _generator(), create_diffusion(3)
    with pytest.raises(ValueError, match="transposed"):
        rerank_v2t(scores, frames, mask, sentences, generator.v2t, diffusion, k=K, seed=0)
    result = rerank_v2t(scores.T, frames, mask, sentences, generator.v2t, diffusion, k=K, seed=0)
    assert result.scores.shape == (V, Q) and result.topk_indices.shape == (V, K)
    with pytest.raises(ValueError, match="k="):
        rerank_t2v(scores, sentences, frames, mask, generator.t2v, diffusion, k=V + 1, seed=0)


def test_training_mode_is_restored():
    scores, sentences, frames, mask = _features()
    denoiser = _generator().t2v.train()
    rerank_t2v(scores, sentences, frames, mask, denoiser, create_diffusion(2), k=K, seed=0)
    assert denoiser.training


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_conditioning_once_per_block_equals_the_full_denoiser_at_every_step(direction):
    """The official loop calls the whole denoiser at each DDIM step; ours prepares the condition once per block."""
    scores, sentences, frames, mask = _features()
    generator, diffusion = _generator(), create_diffusion(6)
    denoiser = generator.t2v if direction == "t2v" else generator.v2t
    calls = []

    def full_forward_every_step(rows, candidates):
        def denoise(x_t, t):
            calls.append(len(rows))
            if direction == "t2v":
                return denoiser(x_t, t, sentences[rows], frames[candidates], mask[candidates])
            return denoiser(x_t, t, sentences[candidates], frames[rows], mask[rows])

        return denoise

    matrix = scores if direction == "t2v" else scores.T.contiguous()
    official = rerank_scores(matrix, full_forward_every_step, diffusion, k=K, seed=5, query_batch=2)
    if direction == "t2v":
        ours = rerank_t2v(matrix, sentences, frames, mask, denoiser, diffusion, k=K, seed=5, query_batch=1000)
    else:
        ours = rerank_v2t(matrix, frames, mask, sentences, denoiser, diffusion, k=K, seed=5, query_batch=1000)
    assert len(calls) == 6 * -(-matrix.shape[0] // 2)  # the official-style loop really ran T steps per 2-query block
    assert torch.equal(official.topk_indices, ours.topk_indices)
    assert torch.allclose(official.x0_hat, ours.x0_hat, atol=1e-5, rtol=0)
    assert not torch.allclose(ours.x0_hat[0], ours.x0_hat[1], atol=1e-3)  # not a constant output
