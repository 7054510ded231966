"""Candidate selection, generation loss and the stage-2 loss wiring (as the official modeling.py)."""

import math

import pytest
import torch
from torch import nn

from diffusionret.method.diffusion import create_diffusion
from diffusionret.method.losses import generation_loss, same_video_candidates, select_candidates, stage2_loss
from diffusionret.model.denoiser import Generator

VIDEO_KEYS = torch.tensor([0, 1, 0, 2, 3, 1, 4])  # 7 pairs, videos 0 and 1 appear twice


def _brute_force_candidates(similarity, keys, k):
    """For each row i: [i] + other items j != i sorted by (same video?, -similarity, j), first k."""
    B = len(keys)
    rows = []
    for i in range(B):
        others = [j for j in range(B) if j != i]
        others.sort(key=lambda j: (int(keys[j]) == int(keys[i]), -float(similarity[i, j]), j))
        rows.append([i] + others[:k])
    return torch.tensor(rows)


@pytest.mark.parametrize("k", [1, 3, 5, 6])  # 5 = fewest true negatives of any row; 6 = B-1 needs fillers
def test_select_candidates_matches_brute_force(k):
    similarity = torch.randn(7, 7, generator=torch.Generator().manual_seed(k))
    t2v, v2t = select_candidates(similarity, VIDEO_KEYS, k)
    assert torch.equal(t2v, _brute_force_candidates(similarity, VIDEO_KEYS, k))
    assert torch.equal(v2t, _brute_force_candidates(similarity.T, VIDEO_KEYS, k))


def test_select_candidates_excludes_same_video_when_enough_negatives():
    similarity = torch.randn(7, 7, generator=torch.Generator().manual_seed(0))
    similarity[0, 2] = similarity[2, 0] = 100.0  # the same-video item is the most similar one
    t2v, v2t = select_candidates(similarity, VIDEO_KEYS, 5)
    for candidates in (t2v, v2t):
        assert not same_video_candidates(candidates, VIDEO_KEYS).any()
        assert torch.equal(candidates[:, 0], torch.arange(7))
        for row in range(7):  # negatives by descending similarity
            matrix = similarity if candidates is t2v else similarity.T
            scores = matrix[row, candidates[row, 1:]]
            assert bool((scores[:-1] >= scores[1:]).all())


def test_fillers_are_last_and_flagged():
    similarity = torch.randn(7, 7, generator=torch.Generator().manual_seed(1))
    t2v, _ = select_candidates(similarity, VIDEO_KEYS, 6)
    flags = same_video_candidates(t2v, VIDEO_KEYS)
    assert flags[0].tolist() == [False] * 6 + [True]  # row 0 (video 0): item 2 is the filler, in the last slot
    assert int(t2v[0, -1]) == 2
    assert flags[3].sum() == 0  # video 2 is unique in the batch
    assert all(len(set(row.tolist())) == 7 for row in t2v)  # the query's own item is never repeated


def _official_candidates(similarity, keys, k):
    """The official pick restated: w = softmax(row), every same-video entry (own included) set to -1, top k
    (ties of -1 in batch order); the candidate list is [own] + those k."""
    B = len(keys)
    rows = []
    for i in range(B):
        weights = torch.softmax(similarity[i].double(), dim=0).tolist()
        weights = [-1.0 if int(keys[j]) == int(keys[i]) else weights[j] for j in range(B)]
        order = sorted(range(B), key=lambda j: (-weights[j], j))
        rows.append([i] + order[:k])
    return torch.tensor(rows)


@pytest.mark.parametrize("k", [1, 4, 5, 6])
def test_faithful_negatives_match_the_official_pick(k):
    similarity = torch.randn(7, 7, generator=torch.Generator().manual_seed(10 + k))
    t2v, v2t = select_candidates(similarity, VIDEO_KEYS, k, faithful=True)
    assert torch.equal(t2v, _official_candidates(similarity, VIDEO_KEYS, k))
    assert torch.equal(v2t, _official_candidates(similarity.T, VIDEO_KEYS, k))


def test_faithful_negatives_can_repeat_the_query_own_item_ours_never_do():
    """With a duplicate video in the batch and K = B - 1 the official list holds the own item as a negative."""
    similarity = torch.randn(7, 7, generator=torch.Generator().manual_seed(3))
    faithful, _ = select_candidates(similarity, VIDEO_KEYS, 6, faithful=True)
    ours, _ = select_candidates(similarity, VIDEO_KEYS, 6)
    repeated = [row for row in range(7) if row in faithful[row, 1:].tolist()]
    # rows 0 and 1 are the first items of videos 0 and 1: their own item precedes the duplicate in batch order,
    # so the one tied -1 left out is the duplicate and the own item fills the last slot
    assert repeated == [0, 1]
    assert not any(row in ours[row, 1:].tolist() for row in range(7))
    unique = torch.tensor([0, 1, 2, 3, 4, 5, 6])  # no duplicates: both picks agree
    assert torch.equal(select_candidates(similarity, unique, 6, faithful=True)[0], select_candidates(similarity, unique, 6)[0])


def test_select_candidates_rejects_bad_k_and_shapes():
    similarity = torch.zeros(4, 4)
    keys = torch.arange(4)
    with pytest.raises(ValueError, match="B-1"):
        select_candidates(similarity, keys, 4)
    with pytest.raises(ValueError, match="B-1"):
        select_candidates(similarity, keys, 0)
    with pytest.raises(ValueError, match="square"):
        select_candidates(torch.zeros(4, 3), keys, 2)


def test_generation_loss_is_kl_from_one_hot():
    x0_hat = torch.tensor([[0.9, 0.1, -0.3, 0.85], [-0.2, 0.4, 0.0, 0.01]], dtype=torch.float64)
    expected = 0.0
    for row in x0_hat.tolist():  # KL(onehot || p) = sum_i onehot_i log(onehot_i / p_i) = -log p_0
        logits = [100 * v for v in row]
        top = max(logits)
        p0 = math.exp(logits[0] - top) / sum(math.exp(v - top) for v in logits)
        expected += -math.log(p0) / len(x0_hat)
    assert generation_loss(x0_hat).item() == pytest.approx(expected, rel=1e-9)
    assert generation_loss(x0_hat, temperature_inv=1.0).item() < expected


class _Recorder(nn.Module):
    """Stands in for one denoiser: records its inputs and returns a differentiable constant."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x_t, t, a, b, c):
        self.calls.append((x_t, t, a, b, c))
        return torch.zeros_like(x_t) + self.bias


class _RecordingGenerator(nn.Module):
    max_timesteps = 5000

    def __init__(self):
        super().__init__()
        self.t2v, self.v2t = _Recorder(), _Recorder()


def _batch(B=5, T=2, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        sentence=torch.randn(B, D, generator=g),
        frames=torch.randn(B, T, D, generator=g),
        frame_mask=torch.ones(B, T, dtype=torch.long),
        similarity=torch.randn(B, B, generator=g),
        video_keys=torch.tensor([0, 1, 2, 3, 0])[:B],
    )


@pytest.mark.parametrize("negative_value", [0.0, -1.0])
def test_stage2_loss_wiring(negative_value):
    diffusion = create_diffusion(50)
    batch = _batch()
    fake = _RecordingGenerator()
    loss, parts = stage2_loss(
        fake, diffusion, **batch, num_negatives=3, temperature_inv=100.0,
        generator_rng=torch.Generator().manual_seed(11), negative_value=negative_value,
    )
    # the same draws, in the documented order: t, then t2v noise, then v2t noise
    rng = torch.Generator().manual_seed(11)
    t = torch.randint(0, 50, (5,), generator=rng)
    noise_t2v, noise_v2t = torch.randn(5, 4, generator=rng), torch.randn(5, 4, generator=rng)
    (x_t2v, t_a, sentence, cand_frames, cand_mask), = fake.t2v.calls
    (x_v2t, t_b, cand_sentences, frames, frame_mask), = fake.v2t.calls
    assert torch.equal(t_a, t) and torch.equal(t_b, t)  # one t per query shared by both directions

    abar = diffusion.alphas_cumprod[t][:, None].double()
    expected_x0 = torch.tensor([1.0] + [negative_value] * 3).repeat(5, 1).double()
    for x_t, noise in ((x_t2v, noise_t2v), (x_v2t, noise_v2t)):
        recovered_x0 = (x_t.double() - (1 - abar).sqrt() * noise) / abar.sqrt()
        assert torch.allclose(recovered_x0, expected_x0, atol=1e-5)

    t2v_idx = _brute_force_candidates(batch["similarity"], batch["video_keys"], 3)
    v2t_idx = _brute_force_candidates(batch["similarity"].T, batch["video_keys"], 3)
    assert torch.equal(cand_frames, batch["frames"][t2v_idx]) and torch.equal(cand_mask, batch["frame_mask"][t2v_idx])
    assert torch.equal(cand_sentences, batch["sentence"][v2t_idx])
    assert torch.equal(sentence, batch["sentence"]) and torch.equal(frames, batch["frames"])

    # constant output -> uniform softmax over 4 candidates in each direction
    assert parts["t2v"].item() == pytest.approx(math.log(4)) and parts["v2t"].item() == pytest.approx(math.log(4))
    assert loss.item() == pytest.approx(2 * math.log(4))


def test_stage2_loss_trains_only_the_generator_and_is_seeded():
    generator = Generator(width=4)
    batch = _batch()
    batch["sentence"].requires_grad_(True)
    kwargs = dict(num_negatives=4, temperature_inv=100.0)
    loss, parts = stage2_loss(generator, create_diffusion(50), **batch, **kwargs,
                              generator_rng=torch.Generator().manual_seed(5))
    loss.backward()
    assert batch["sentence"].grad is None  # features are detached
    assert all(p.grad is not None for p in generator.parameters())
    again, _ = stage2_loss(generator, create_diffusion(50), **batch, **kwargs,
                           generator_rng=torch.Generator().manual_seed(5))
    assert again.item() == loss.item()
    assert loss.item() == pytest.approx(parts["t2v"].item() + parts["v2t"].item())


def test_stage2_loss_rejects_more_steps_than_the_timestep_table():
    generator = Generator(width=4, max_timesteps=10)
    with pytest.raises(ValueError, match="timestep table"):
        stage2_loss(generator, create_diffusion(50), **_batch(), num_negatives=2,
                    generator_rng=torch.Generator().manual_seed(0))
