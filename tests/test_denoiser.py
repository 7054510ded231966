"""The t2v / v2t denoisers against a loop-by-loop restatement of the official
`Diffusion` / `Diffusion_v` forward passes."""

import math

import pytest
import torch

from diffusionret.model.denoiser import Generator, TextToVideoDenoiser, VideoToTextDenoiser

D, T = 8, 3  # tiny width and frame count


def _inputs(B: int, N: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(B, N, generator=g)
    t = torch.randint(0, 50, (B,), generator=g)
    sentence = torch.randn(B, D, generator=g)
    candidate_sentences = torch.randn(B, N, D, generator=g)
    frames = torch.randn(B, N, T, D, generator=g)
    mask = (torch.rand(B, N, T, generator=g) > 0.3).long()
    mask[..., 0] = 1
    query_frames = torch.randn(B, T, D, generator=g)
    query_mask = torch.tensor([[1] * T] + [[1] * (T - 1) + [0]] * (B - 1))
    return x_t, t, sentence, candidate_sentences, frames, mask, query_frames, query_mask


def _linear(layer, x):
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def _time_embedding(net, step: int):
    pe = torch.tensor(
        [math.sin(step / 10000 ** (i / D)) if i % 2 == 0 else math.cos(step / 10000 ** ((i - 1) / D)) for i in range(D)]
    )
    hidden = _linear(net.time_embed.mlp[0], pe)
    return _linear(net.time_embed.mlp[2], hidden * torch.sigmoid(hidden))


def _decode(net, z, candidate):
    h = torch.relu(_linear(net.decoder[0], torch.cat([z, candidate])))
    return _linear(net.decoder[2], h)[0]


def _pool(sentence, frames, mask, tau):
    """sum_f softmax_f(<s, F_f> / tau) * M_f * F_f, the mask applied after the softmax."""
    logits = torch.stack([sentence @ frames[f] / tau for f in range(frames.shape[0])])
    weights = torch.exp(logits - logits.max()) / torch.exp(logits - logits.max()).sum()
    return sum(weights[f] * mask[f] * frames[f] for f in range(frames.shape[0]))


def _brute_t2v(net, x_t, t, sentence, frames, mask):
    B, N = x_t.shape
    out = torch.zeros(B, N)
    for b in range(B):
        e = _time_embedding(net, int(t[b]))
        pooled = [_pool(sentence[b], frames[b, n], mask[b, n].float(), net.frame_temperature) for n in range(N)]
        q = _linear(net.q_proj, sentence[b] + e)
        logits = torch.stack([q @ _linear(net.k_proj, pooled[n] + e) + x_t[b, n] for n in range(N)])
        a = torch.softmax(logits, 0)
        z = _linear(net.out_proj, sum(a[n] * _linear(net.v_proj, pooled[n] + e) for n in range(N)))
        for n in range(N):
            out[b, n] = _decode(net, z, pooled[n]) + a[n]
    return out


def _brute_v2t(net, x_t, t, candidate_sentences, query_frames, query_mask):
    B, N = x_t.shape
    out = torch.zeros(B, N)
    for b in range(B):
        e = _time_embedding(net, int(t[b]))
        cands = candidate_sentences[b]
        pooled = [_pool(cands[n], query_frames[b], query_mask[b].float(), net.frame_temperature) for n in range(N)]
        logits = torch.stack(
            [_linear(net.q_proj, pooled[n] + e) @ _linear(net.k_proj, cands[n] + e) + x_t[b, n] for n in range(N)]
        )
        a = torch.softmax(logits, 0)
        z = _linear(net.out_proj, sum(a[n] * _linear(net.v_proj, cands[n] + e) for n in range(N)))
        for n in range(N):
            out[b, n] = _decode(net, z, cands[n]) + a[n]
    return out


def _with_random_weights(net, seed=1):
    """Default init has zero biases and tiny weights; larger random weights make the comparison sharper."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def test_t2v_matches_brute_force():
    net = _with_random_weights(TextToVideoDenoiser(D, frame_temperature=2.0))
    x_t, t, sentence, _, frames, mask, _, _ = _inputs(B=2, N=4)
    expected = _brute_t2v(net, x_t, t, sentence, frames, mask)
    assert torch.allclose(net(x_t, t, sentence, frames, mask), expected, atol=1e-4, rtol=1e-4)


def test_v2t_matches_brute_force():
    net = _with_random_weights(VideoToTextDenoiser(D, frame_temperature=0.5))
    x_t, t, _, cands, _, _, query_frames, query_mask = _inputs(B=3, N=4)
    expected = _brute_v2t(net, x_t, t, cands, query_frames, query_mask)
    assert torch.allclose(net(x_t, t, cands, query_frames, query_mask), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("N", [2, 32, 128])
def test_output_shapes(N):
    x_t, t, sentence, cands, frames, mask, query_frames, query_mask = _inputs(B=2, N=N)
    assert TextToVideoDenoiser(D)(x_t, t, sentence, frames, mask).shape == (2, N)
    assert VideoToTextDenoiser(D)(x_t, t, cands, query_frames, query_mask).shape == (2, N)


def test_permutation_equivariance_over_candidates():
    t2v, v2t = _with_random_weights(TextToVideoDenoiser(D)), _with_random_weights(VideoToTextDenoiser(D))
    x_t, t, sentence, cands, frames, mask, query_frames, query_mask = _inputs(B=2, N=6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    out = t2v(x_t, t, sentence, frames, mask)
    out_perm = t2v(x_t[:, perm], t, sentence, frames[:, perm], mask[:, perm])
    assert torch.allclose(out_perm, out[:, perm], atol=1e-5)
    out = v2t(x_t, t, cands, query_frames, query_mask)
    out_perm = v2t(x_t[:, perm], t, cands[:, perm], query_frames, query_mask)
    assert torch.allclose(out_perm, out[:, perm], atol=1e-5)


def test_zero_mask_gives_zero_pooled_features():
    net = TextToVideoDenoiser(D)
    _, _, sentence, _, frames, _, _, _ = _inputs(B=2, N=3)
    zero_mask = torch.zeros(2, 3, T, dtype=torch.long)
    pooled = net.pool_frames(sentence, frames, zero_mask)
    assert torch.equal(pooled, torch.zeros(2, 3, D))
    # then the candidates' frame contents cannot matter any more
    x_t, t = torch.randn(2, 3), torch.tensor([1, 2])
    assert torch.equal(net(x_t, t, sentence, frames, zero_mask), net(x_t, t, sentence, 5 * frames, zero_mask))
    v2t = VideoToTextDenoiser(D)
    _, _, _, cands, _, _, query_frames, _ = _inputs(B=2, N=3)
    assert torch.equal(v2t.pool_frames(cands, query_frames, torch.zeros(2, T)), torch.zeros(2, 3, D))


def test_mask_is_applied_after_softmax_without_renormalisation():
    net = TextToVideoDenoiser(D)
    sentence = torch.ones(1, D)
    frames = torch.stack([torch.full((D,), 0.5), torch.ones(D)])[None, None]  # (1, 1, 2, D), logits D/2 and D
    w0 = math.exp(D / 2) / (math.exp(D / 2) + math.exp(D))  # softmax over BOTH frames
    w1 = 1 - w0
    expected = {(1, 1): 0.5 * w0 + w1, (1, 0): 0.5 * w0, (0, 1): w1}  # renormalising would give 0.5 and 1.0
    for mask, value in expected.items():
        pooled = net.pool_frames(sentence, frames, torch.tensor([[mask]]))
        assert torch.allclose(pooled[0, 0], torch.full((D,), value), atol=1e-6), mask


def test_parameter_count_at_width_512():
    width = 512
    qkv = 3 * width * width  # no bias
    proj = width * width + width
    time_mlp = 2 * (width * width + width)
    decoder = (2 * width) * (2 * width) + 2 * width + (2 * width) * 1 + 1
    expected = qkv + proj + time_mlp + decoder
    assert expected == 2_625_025
    generator = Generator(width)
    assert sum(p.numel() for p in generator.t2v.parameters()) == expected
    assert sum(p.numel() for p in generator.v2t.parameters()) == expected
    assert sum(p.numel() for p in generator.parameters()) == 5_250_050
    assert "time_embed.table" not in generator.t2v.state_dict()  # the sinusoidal table is not a weight


def test_init_is_normal_002_zero_bias_and_seeded():
    a, b = Generator(64, seed=3), Generator(64, seed=3)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
        if name.endswith("bias"):
            assert torch.equal(pa, torch.zeros_like(pa)), name
    weight = a.t2v.decoder[0].weight
    assert abs(weight.std().item() - 0.02) < 0.002 and abs(weight.mean().item()) < 0.002
    assert not torch.equal(a.t2v.q_proj.weight, a.v2t.q_proj.weight)  # separate weights
    assert not torch.equal(a.t2v.q_proj.weight, Generator(64, seed=4).t2v.q_proj.weight)
