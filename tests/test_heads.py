"""Similarity heads: WTI against a brute-force loop, chunking, meanP against numpy."""

import math

import numpy as np
import pytest
import torch

from diffusionret.model.heads import SIMILARITY_HEADS, DiCoSAHead, EMCLHead, HBIHead, MeanPoolHead, WTIHead

WIDTH = 6


def _inputs(seed: int, texts: int = 3, videos: int = 4, words: int = 5, frames: int = 4):
    """Random unnormalised features (float64) with padded tokens and frames."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(texts, words, WIDTH, generator=generator, dtype=torch.float64)
    video = torch.randn(videos, frames, WIDTH, generator=generator, dtype=torch.float64)
    text_mask = torch.ones(texts, words, dtype=torch.long)
    video_mask = torch.ones(videos, frames, dtype=torch.long)
    for row in range(texts):
        text_mask[row, 2 + row % (words - 2) :] = 0  # 2..words-1 valid tokens
    for row in range(videos):
        video_mask[row, 1 + row % frames :] = 0  # 1..frames valid frames
    sentence = torch.randn(texts, WIDTH, generator=generator, dtype=torch.float64)
    return tokens, text_mask, sentence, video, video_mask


def _mlp(mlp: torch.nn.Sequential, vector: list[float]) -> float:
    """Linear-ReLU-Linear on one vector, with python lists."""
    first, second = mlp[0], mlp[2]
    hidden = [max(0.0, sum(w * x for w, x in zip(first.weight[j].tolist(), vector)) + first.bias[j].item())
              for j in range(first.out_features)]
    return sum(w * h for w, h in zip(second.weight[0].tolist(), hidden)) + second.bias[0].item()


def _softmax_valid(logits: list[float], valid: list[int]) -> list[float]:
    """softmax over positions with valid=1; invalid positions get weight 0."""
    peak = max(logit for logit, ok in zip(logits, valid) if ok)
    exps = [math.exp(logit - peak) if ok else 0.0 for logit, ok in zip(logits, valid)]
    return [e / sum(exps) for e in exps]


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def _wti_brute_force(head: WTIHead, tokens, text_mask, video, video_mask) -> np.ndarray:
    """The official WTI similarity written out with loops over (a, b, l, f)."""
    texts, words, _ = tokens.shape
    videos, frames, _ = video.shape
    result = np.zeros((texts, videos))
    for a in range(texts):
        mt = text_mask[a].tolist()
        wt = _softmax_valid([_mlp(head.text_weight_fc, tokens[a, l].tolist()) for l in range(words)], mt)
        for b in range(videos):
            mv = video_mask[b].tolist()
            wv = _softmax_valid([_mlp(head.video_weight_fc, video[b, f].tolist()) for f in range(frames)], mv)
            sims = [[sum(x * y for x, y in zip(_unit(tokens[a, l].tolist()), _unit(video[b, f].tolist())))
                     * mt[l] * mv[f] for f in range(frames)] for l in range(words)]
            t2v = sum(wt[l] * max(sims[l][f] for f in range(frames)) for l in range(words))
            v2t = sum(wv[f] * max(sims[l][f] for l in range(words)) for f in range(frames))
            result[a, b] = (t2v + v2t) / 2
    return result


def test_wti_matches_brute_force_loop():
    torch.manual_seed(0)  # nn.Linear's default init uses the global RNG
    head = WTIHead(WIDTH, chunk_size=2).double()
    tokens, text_mask, sentence, video, video_mask = _inputs(seed=1)
    with torch.no_grad():
        scores = head(tokens, text_mask, sentence, video, video_mask)
    expected = _wti_brute_force(head, tokens, text_mask, video, video_mask)
    assert scores.shape == (3, 4)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_wti_all_negative_picks_padded_zero():
    """Masked entries are 0, not -inf (official edge case): a padded frame wins the max."""
    torch.manual_seed(0)
    head = WTIHead(WIDTH).double()
    tokens = torch.ones(1, 2, WIDTH, dtype=torch.float64)
    video = -torch.ones(1, 2, WIDTH, dtype=torch.float64)
    with torch.no_grad():
        padded = head(tokens, torch.tensor([[1, 1]]), tokens[:, 0], video, torch.tensor([[1, 0]]))
        full = head(tokens, torch.tensor([[1, 1]]), tokens[:, 0], video, torch.tensor([[1, 1]]))
    # t2v: every token's max over frames is the padded 0; v2t: the valid frame's max over tokens is -1
    assert padded.item() == pytest.approx((0.0 + -1.0) / 2)
    assert full.item() == pytest.approx(-1.0)


def test_wti_chunked_equals_unchunked_values_and_gradients():
    torch.manual_seed(0)
    chunked, whole = WTIHead(WIDTH, chunk_size=2).double(), WTIHead(WIDTH, chunk_size=1000).double()
    whole.load_state_dict(chunked.state_dict())
    tokens, text_mask, sentence, video, video_mask = _inputs(seed=2, texts=5, videos=7)
    results = []
    for head in (chunked, whole):
        tokens_leaf, video_leaf = tokens.clone().requires_grad_(), video.clone().requires_grad_()
        scores = head(tokens_leaf, text_mask, sentence, video_leaf, video_mask)
        (scores * torch.arange(35, dtype=torch.float64).reshape(5, 7)).sum().backward()
        results.append((scores.detach(), tokens_leaf.grad, video_leaf.grad))
    for first, second in zip(*results):
        torch.testing.assert_close(first, second, rtol=1e-12, atol=1e-12)


def test_wti_never_builds_more_than_a_chunk(monkeypatch):
    torch.manual_seed(0)
    head = WTIHead(WIDTH, chunk_size=3)
    shapes = []
    einsum = torch.einsum

    def recording_einsum(equation, *operands):
        result = einsum(equation, *operands)
        shapes.append(tuple(result.shape))
        return result

    monkeypatch.setattr(torch, "einsum", recording_einsum)
    tokens, text_mask, sentence, video, video_mask = _inputs(seed=3, texts=7, videos=8)
    with torch.no_grad():
        scores = head(tokens.float(), text_mask, sentence.float(), video.float(), video_mask)
    assert scores.shape == (7, 8)
    assert shapes and all(shape[0] <= 3 and shape[1] <= 3 for shape in shapes)
    assert sum(shape[0] * shape[1] for shape in shapes) == 7 * 8  # every pair computed exactly once


def test_mean_pool_matches_numpy():
    tokens, text_mask, sentence, video, video_mask = _inputs(seed=4)
    with torch.no_grad():
        scores = MeanPoolHead(WIDTH)(tokens, text_mask, sentence, video, video_mask).numpy()
    s, v, m = sentence.numpy(), video.numpy(), video_mask.numpy().astype(float)
    expected = np.zeros((3, 4))
    for a in range(3):
        for b in range(4):
            unit = v[b] / np.linalg.norm(v[b], axis=1, keepdims=True)  # CLIP4Clip: each frame normalised first
            pooled = (unit * m[b][:, None]).sum(0) / m[b].sum()
            expected[a, b] = s[a] @ pooled / (np.linalg.norm(s[a]) * np.linalg.norm(pooled))
    np.testing.assert_allclose(scores, expected, rtol=1e-10)


def test_registry():
    assert SIMILARITY_HEADS == {"wti": WTIHead, "meanP": MeanPoolHead, "emcl": EMCLHead, "dicosa": DiCoSAHead,
                                "hbi": HBIHead}


def test_mean_pool_normalises_frames_before_averaging():
    """A long frame must not outweigh a short one: with unit frames e1 and 10 * e2, the video is (e1 + e2) / 2."""
    video = torch.zeros(1, 2, WIDTH, dtype=torch.float64)
    video[0, 0, 0], video[0, 1, 1] = 1.0, 10.0
    sentences = torch.zeros(2, WIDTH, dtype=torch.float64)
    sentences[0, 0], sentences[1, 1] = 1.0, 1.0  # one along each frame
    scores = MeanPoolHead(WIDTH)(sentences[:, None], torch.ones(2, 1), sentences, video, torch.ones(1, 2))
    # both sentences are at 45 degrees from (e1 + e2) / 2; averaging raw frames would give 0.0995 and 0.995
    np.testing.assert_allclose(scores[:, 0].numpy(), [2 ** -0.5, 2 ** -0.5], rtol=1e-12)


@pytest.mark.parametrize("width", [64, 512])
def test_wti_weight_mlps_use_the_official_init(width):
    """Every Linear of both weight MLPs: weights N(0, 0.02), biases 0 (the official init of the whole model)."""
    torch.manual_seed(0)
    head = WTIHead(width)
    linears = [m for mlp in (head.text_weight_fc, head.video_weight_fc) for m in mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4
    for linear in linears:
        weights = linear.weight.detach().double().numpy().ravel()
        # the sample std of n draws of N(0, 0.02) has standard error 0.02 / sqrt(2n); PyTorch's default
        # Kaiming-uniform has std 1 / sqrt(3 fan_in): 0.072 (first Linear) and 0.051 (second) at width 64,
        # and its biases are not zero
        standard_error = 0.02 / np.sqrt(2 * weights.size)
        assert abs(weights.std() - 0.02) < 6 * standard_error, (linear, weights.std())
        assert abs(weights.mean()) < 6 * 0.02 / np.sqrt(weights.size)
        assert torch.count_nonzero(linear.bias) == 0
