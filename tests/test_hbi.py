"""HBI: the head's levels against NumPy loop restatements (masks and padded frames included), the token-merging
steps, the Banzhaf labels (by hand on a 3-token example, vectorised against a per-draw loop), the losses by hand,
checkpoint round trips, the estimator's files and errors, the params block and the parameter counts."""

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch

from diffusionret.config import ConfigError, load_params, params_from_dict
from diffusionret.method.losses import banzhaf_distill, kl_mean
from diffusionret.method.objectives import ContrastiveObjective, hbi_losses
from diffusionret.model.banzhaf import BanzhafModule, banzhaf_labels, draw_coalitions
from diffusionret.model.checkpoint import load_extractor, save_extractor
from diffusionret.model.estimator import (EstimatorMissing, RECORD_FILE, load_estimator, save_estimator,
                                          write_not_needed)
from diffusionret.model.extractor import TextFeatures, VideoFeatures, build_feature_extractor
from diffusionret.model.heads import HBIHead, build_head
from diffusionret.model.token_merge import (ClusterMerge, MergedTokenAttention, TokenSet, dpc_knn_clusters,
                                            merge_clusters)

WIDTH = 16


def _inputs(seed: int, texts: int = 4, videos: int = 4, frames: int = 5, words: int = 7, width: int = WIDTH):
    """float64 features; captions have 4..7 valid tokens, video b has 2 + b % (frames - 1) valid frames."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(texts, words, width, generator=generator, dtype=torch.float64)
    text_mask = torch.zeros(texts, words, dtype=torch.long)
    for row in range(texts):
        text_mask[row, :4 + row % (words - 3)] = 1
    sentence = torch.randn(texts, width, generator=generator, dtype=torch.float64)
    video = torch.randn(videos, frames, width, generator=generator, dtype=torch.float64)
    video_mask = torch.zeros(videos, frames, dtype=torch.long)
    for row in range(videos):
        video_mask[row, :2 + row % (frames - 1)] = 1
    return tokens, text_mask, sentence, video, video_mask


def _head(**settings) -> HBIHead:
    torch.manual_seed(0)
    head = HBIHead(WIDTH, chunk_size=3, merge_heads=4, **settings).double()
    for merge in (*head.text_merge.merges, *head.video_merge.merges):
        merge.density_noise = 0.0  # deterministic clusters for the restatements
    return head


# ------------------------------------------------------------------------------------------- restatements


def np_softmax(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


def np_mlp(mlp, x: np.ndarray) -> float:
    w1, b1 = mlp[0].weight.detach().numpy(), mlp[0].bias.detach().numpy()
    w2, b2 = mlp[2].weight.detach().numpy(), mlp[2].bias.detach().numpy()
    return float((w2 @ np.maximum(w1 @ x + b1, 0.0) + b2)[0])


def np_wti(text, text_mask, video, video_mask, text_fc, video_fc) -> np.ndarray:
    """WTI pair by pair; masks None = every token valid (the merged levels). Padded weights get -9e15 logits,
    padded cells are 0 (not -inf) before the maxima."""
    texts, videos = len(text), len(video)
    out = np.zeros((texts, videos))
    for a in range(texts):
        tm = np.ones(len(text[a])) if text_mask is None else text_mask[a]
        tw = np_softmax([np_mlp(text_fc, t) if m else -9e15 for t, m in zip(text[a], tm)])
        for b in range(videos):
            vm = np.ones(len(video[b])) if video_mask is None else video_mask[b]
            vw = np_softmax([np_mlp(video_fc, f) if m else -9e15 for f, m in zip(video[b], vm)])
            cells = np.array([[t @ f / np.linalg.norm(t) / np.linalg.norm(f) * tm[l] * vm[k]
                               for k, f in enumerate(video[b])] for l, t in enumerate(text[a])])
            out[a, b] = (sum(tw[l] * cells[l].max() for l in range(len(tw)))
                         + sum(vw[k] * cells[:, k].max() for k in range(len(vw)))) / 2
    return out


def np_dpc(x: np.ndarray, mask, clusters: int, knn: int) -> np.ndarray:
    """DPC-kNN of one batch (B, N, D) element by element, without density noise."""
    batch, count, width = x.shape
    dist = np.array([[[np.linalg.norm(x[b, i] - x[b, j]) / math.sqrt(width) for j in range(count)]
                      for i in range(count)] for b in range(batch)])
    if mask is not None:
        top = dist.max() + 1
        dist = np.where(mask[:, None, :] > 0, dist, top)
    out = np.zeros((batch, count), dtype=np.int64)
    for b in range(batch):
        rho = np.array([math.exp(-np.mean(np.sort(dist[b, i])[:knn] ** 2)) for i in range(count)])
        if mask is not None:
            rho = rho * mask[b]
        largest = dist[b].max()
        delta = np.array([min([dist[b, i, j] for j in range(count) if rho[j] > rho[i]], default=largest)
                          for i in range(count)])
        centres = list(np.argsort(-(rho * delta), kind="stable")[:clusters])
        for i in range(count):
            out[b, i] = centres.index(i) if i in centres else int(np.argmin([dist[b, c, i] for c in centres]))
    return out


# ----------------------------------------------------------------------------------------- token merging


def test_dpc_knn_matches_numpy_with_padded_tokens():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 8, 5, generator=generator, dtype=torch.float64)
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    got = dpc_knn_clusters(x, mask, clusters=3, knn=3, density_noise=0.0)
    np.testing.assert_array_equal(got.numpy(), np_dpc(x.numpy(), mask.numpy(), 3, 3))
    assert got[1, 5:].tolist() != [] and set(got.flatten().tolist()) <= {0, 1, 2}
    np.testing.assert_array_equal(dpc_knn_clusters(x, None, 2, 3, 0.0).numpy(), np_dpc(x.numpy(), None, 2, 3))


def test_merge_is_the_score_weighted_mean_of_each_cluster():
    x = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 6.0]]], dtype=torch.float64)
    assignment = torch.tensor([[0, 1, 0, 1]])
    weight = torch.tensor([[1.0, 2.0, 3.0, 0.0]], dtype=torch.float64)  # the last token padded (exp(-inf) = 0)
    merged = merge_clusters(x, assignment, 2, weight)
    expected = np.array([[(1 * np.array([1, 0]) + 3 * np.array([5, 4])) / (4 + 1e-6),
                          (2 * np.array([3, 2]) + 0 * np.array([7, 6])) / (2 + 1e-6)]])
    np.testing.assert_allclose(merged.numpy(), expected, rtol=1e-12)


def test_cluster_merge_step_restated():
    """x <- LN(x + conv(x)); s = Linear(x), -inf at padded tokens; DPC on the normalised x; merge with exp(s)."""
    torch.manual_seed(2)
    step = ClusterMerge(6, rate=0.4, knn=3, density_noise=0.0).double()  # knn 2 ties mutual neighbours
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    merged, keys = step(TokenSet(x, mask))
    w = step.conv.weight.detach().numpy()  # (D_out, D_in, 3)
    xn = x.numpy()
    padded = np.pad(xn, ((0, 0), (1, 1), (0, 0)))
    conv = np.stack([[sum(w[:, :, k] @ padded[b, n + k] for k in range(3)) for n in range(5)] for b in range(2)])
    y = xn + conv
    y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-5)
    y = y * step.norm.weight.detach().numpy() + step.norm.bias.detach().numpy()
    score = y @ step.score.weight.detach().numpy()[0] + step.score.bias.item()
    score = np.where(mask.numpy() > 0, score, -np.inf)
    np.testing.assert_allclose(keys.tokens.detach().numpy(), y, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(np.isinf(keys.score.detach().numpy()), np.isinf(score))
    clusters = math.ceil(5 * 0.4)
    assignment = np_dpc(y, mask.numpy(), clusters, 3)
    expected = np.zeros((2, clusters, 6))
    for b in range(2):
        for c in range(clusters):
            members = [i for i in range(5) if assignment[b, i] == c]
            weights = np.exp(score[b, members])
            expected[b, c] = (weights[:, None] * y[b, members]).sum(0) / (weights.sum() + 1e-6)
    assert merged.mask is None and merged.tokens.shape == (2, clusters, 6)
    np.testing.assert_allclose(merged.tokens.detach().numpy(), expected, rtol=1e-9, atol=1e-12)


def test_merged_token_attention_is_explicit_attention_with_a_key_bias():
    torch.manual_seed(3)
    block = MergedTokenAttention(8, heads=2).double()
    queries = torch.randn(2, 3, 8, dtype=torch.float64)
    keys = torch.randn(2, 5, 8, dtype=torch.float64)
    score = torch.randn(2, 5, dtype=torch.float64)
    score[1, 3:] = float("-inf")  # padded keys
    out = block(TokenSet(queries), TokenSet(keys, None, score)).tokens.detach().numpy()

    def ln(v):
        v = (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)
        return v * block.norm.weight.detach().numpy() + block.norm.bias.detach().numpy()

    lin = lambda layer, v: v @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()  # noqa: E731
    expected = np.zeros_like(out)
    for b in range(2):
        q, kv = lin(block.q, ln(queries[b].numpy())), lin(block.kv, ln(keys[b].numpy()))
        k, v = kv[:, :8], kv[:, 8:]
        heads = []
        for h in range(2):
            cols = slice(4 * h, 4 * h + 4)
            rows = []
            for i in range(3):
                logits = [q[i, cols] @ k[j, cols] / 2.0 + score[b, j].item() for j in range(5)]
                rows.append(sum(p * v[j, cols] for j, p in enumerate(np_softmax(logits))))
            heads.append(np.stack(rows))
        expected[b] = queries[b].numpy() + lin(block.proj, np.concatenate(heads, axis=1))
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------------ head


def test_default_rate_scores_are_the_entity_wti_with_masks():
    tokens, text_mask, sentence, video, video_mask = _inputs(4)
    head = _head().eval()
    scores = head(tokens, text_mask, sentence, video, video_mask)
    expected = np_wti(tokens.numpy(), text_mask.numpy(), video.numpy(), video_mask.numpy(),
                      head.entity.text_weight_fc, head.entity.video_weight_fc)
    np.testing.assert_allclose(scores.detach().numpy(), expected, rtol=1e-9, atol=1e-12)


def test_merged_levels_and_rate_weighting_match_unmasked_loops():
    tokens, text_mask, sentence, video, video_mask = _inputs(5, texts=5, videos=4)
    head = _head(rate=(0.2, 0.5, 0.3)).eval()
    texts = [t.detach() for t in head.text_merge(tokens, text_mask)]
    videos = [v.detach() for v in head.video_merge(video, video_mask)]
    assert [t.shape[1] for t in texts] == [2, 1] and [v.shape[1] for v in videos] == [2, 1]  # ceil(7/4), ceil(2/2)
    levels = [np_wti(tokens.numpy(), text_mask.numpy(), video.numpy(), video_mask.numpy(),
                     head.entity.text_weight_fc, head.entity.video_weight_fc)]
    for level in range(2):
        levels.append(np_wti(texts[level].numpy(), None, videos[level].numpy(), None,
                             head.text_weight_fcs[level], head.video_weight_fcs[level]))
    got = head(tokens, text_mask, sentence, video, video_mask).detach().numpy()
    np.testing.assert_allclose(got, 0.2 * levels[0] + 0.5 * levels[1] + 0.3 * levels[2], rtol=1e-9, atol=1e-12)

    training = head.training_levels(tokens[:4], text_mask[:4], video, video_mask)
    for level, expected in zip(training, levels):
        np.testing.assert_allclose(level.similarity.detach().numpy(), expected[:4], rtol=1e-9, atol=1e-12)
    entity_maps = training[0].maps.detach().numpy()  # (B, L, T): positive pairs, zero at padded cells
    for a in range(4):
        for l, k in itertools.product(range(7), range(5)):
            t, f = tokens[a, l].numpy(), video[a, k].numpy()
            cosine = t @ f / np.linalg.norm(t) / np.linalg.norm(f) * text_mask[a, l].item() * video_mask[a, k].item()
            assert entity_maps[a, l, k] == pytest.approx(cosine, abs=1e-12)
    assert training[1].maps.shape == (4, 2, 2) and training[1].map_mask is None


# ------------------------------------------------------------------------------------------ Banzhaf labels


def _official_three_tokens(m, w):
    """Label of cell (0, 0) for 3 tokens and 1 frame (official definition), by hand: S_v is always empty, so
    f4 = f2 = 0; the mean over S_t in {}, {1}, {2}, {1, 2} of f1 - f3."""
    def soft(values):
        e = [math.exp(v) for v in values]
        return [x / sum(e) for x in e]

    total = m[0]  # S_t = {}: f1 = (1 m0 + m0) / 2, f3 = 0
    for other in (1, 2):  # S_t = {other}: f4's weights put all on `other`; f1 re-softmaxes (w0, 1)
        text1 = soft([w[0], 1.0])[0]
        total += (text1 * m[0] + m[0]) / 2 - m[other]
    p = soft([w[1], w[2]])  # S_t = {1, 2}
    text1 = soft([w[0], p[0], p[1]])[0]
    total += (text1 * m[0] + m[0]) / 2 - (p[0] * m[1] + p[1] * m[2] + max(m[1], m[2])) / 2
    return total / 4


def _textbook_three_tokens(m, w):
    """Textbook index for 1 frame: mean over S_t of f(S_t + 0, {0}) - f(S_t, {0}); f(A, {0}) = 1/2 (sum_A w m / sum_A
    w + max_A m), f({}, .) = 0."""
    def f(members):
        if not members:
            return 0.0
        return (sum(w[l] * m[l] for l in members) / sum(w[l] for l in members) + max(m[l] for l in members)) / 2

    subsets = [[], [1], [2], [1, 2]]
    return sum(f([0] + s) - f(s) for s in subsets) / 4


def _every_coalition(words: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 2^L x 2^T (S_t, S_v) pairs as draws, the same for every cell: the mean is the exact expectation."""
    pairs = list(itertools.product(itertools.product([0.0, 1.0], repeat=words),
                                   itertools.product([0.0, 1.0], repeat=frames)))
    text = torch.tensor([t for t, _ in pairs])[:, None, None, :].expand(-1, words, frames, -1)
    video = torch.tensor([v for _, v in pairs])[:, None, None, :].expand(-1, words, frames, -1)
    return text, video


@pytest.mark.parametrize("semantics", ["official", "textbook"])
def test_banzhaf_labels_of_three_tokens_by_hand(semantics):
    m, w = [0.6, 0.2, 0.9], [0.5, 0.3, 0.2]
    maps = torch.tensor(m, dtype=torch.float64)[None, :, None]  # (1, 3, 1)
    labels = banzhaf_labels(maps, torch.ones(1, 3), torch.ones(1, 1), torch.tensor([w], dtype=torch.float64),
                            torch.ones(1, 1, dtype=torch.float64), _every_coalition(3, 1), semantics=semantics,
                            multiplier=1.0, draw_chunk=5)
    expected = _official_three_tokens(m, w) if semantics == "official" else _textbook_three_tokens(m, w)
    assert labels[0, 0, 0].item() == pytest.approx(expected, rel=1e-12)


def np_coalition_value(m, cells, text_logits, video_logits):
    masked = m * cells
    return (np_softmax(text_logits) @ masked.max(axis=1) + np_softmax(video_logits) @ masked.max(axis=0)) / 2


def np_official_labels(maps, tm, vm, tw, vw, text_draws, video_draws, multiplier):
    """The official label loop, one (pair, i, j, draw) at a time, with the given coalitions."""
    batch, words, frames = maps.shape
    out = np.zeros_like(maps)
    big = -9e15
    for b, i, j in itertools.product(range(batch), range(words), range(frames)):
        m = maps[b] * multiplier
        total = 0.0
        for n in range(len(text_draws)):
            st = text_draws[n, i, j].copy() * tm[b]
            st[i] = 0
            sv = video_draws[n, i, j].copy() * vm[b]
            sv[j] = 0
            grid = np.outer(st, sv)
            tl4 = np.where(st > 0, tw[b], big)
            vl = np.where(vm[b] > 0, vw[b], big)
            f4 = np_coalition_value(m, grid, tl4, vl)
            tl1 = np.where(st > 0, np_softmax(tl4), big)
            tl1[i] = tw[b, i]
            vl1 = np.where(vm[b] > 0, np_softmax(vl), big)
            vl1[j] = vw[b, j]
            grid1 = grid.copy()
            grid1[i, j] = 1
            f1 = np_coalition_value(m, grid1, tl1, vl1)
            sti = st.copy()
            sti[i] = 1
            f2 = np_coalition_value(m, np.outer(sti, sv), np.where(sti > 0, tw[b], big), vl)
            svj = sv.copy()
            svj[j] = 1
            f3 = np_coalition_value(m, np.outer(st, svj), tl4, vl)
            total += f1 - f2 - f3 + f4
        out[b, i, j] = total / len(text_draws) * tm[b, i] * vm[b, j]
    return out


def np_textbook_labels(maps, tm, vm, tw, vw, text_draws, video_draws, multiplier):
    """f(S_t + i, S_v + j) - f(S_t + i, S_v) - f(S_t, S_v + j) + f(S_t, S_v), f the WTI of the sub-map with the
    weights renormalised over the coalition, one (pair, i, j, draw) at a time."""
    batch, words, frames = maps.shape

    def f(m, st, sv, b):
        if st.sum() == 0 or sv.sum() == 0:  # an empty side: every cell is 0
            return 0.0
        cells = m * np.outer(st, sv)
        text_w, video_w = tw[b] * st / (tw[b] * st).sum(), vw[b] * sv / (vw[b] * sv).sum()
        return (text_w @ cells.max(axis=1) + video_w @ cells.max(axis=0)) / 2

    out = np.zeros_like(maps)
    for b, i, j in itertools.product(range(batch), range(words), range(frames)):
        if tm[b, i] == 0 or vm[b, j] == 0:
            continue  # padded cells: label 0
        m, total = maps[b] * multiplier, 0.0
        for n in range(len(text_draws)):
            st = text_draws[n, i, j] * tm[b]
            st[i] = 0
            sv = video_draws[n, i, j] * vm[b]
            sv[j] = 0
            sti, svj = st.copy(), sv.copy()
            sti[i], svj[j] = 1, 1
            total += f(m, sti, svj, b) - f(m, sti, sv, b) - f(m, st, svj, b) + f(m, st, sv, b)
        out[b, i, j] = total / len(text_draws) * tm[b, i] * vm[b, j]
    return out


@pytest.mark.parametrize("semantics", ["official", "textbook"])
def test_vectorised_labels_equal_a_loop_with_padding(semantics):
    generator = torch.Generator().manual_seed(6)
    maps = torch.rand(3, 4, 3, generator=generator, dtype=torch.float64) * 2 - 1
    tm = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float64)
    vm = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float64)
    maps = maps * tm[:, :, None] * vm[:, None, :]
    tw = torch.softmax(torch.randn(3, 4, generator=generator, dtype=torch.float64).masked_fill(tm == 0, -9e15), -1)
    vw = torch.softmax(torch.randn(3, 3, generator=generator, dtype=torch.float64).masked_fill(vm == 0, -9e15), -1)
    coalitions = draw_coalitions(7, 4, 3, torch.Generator().manual_seed(7))
    got = banzhaf_labels(maps, tm, vm, tw, vw, coalitions, semantics=semantics, multiplier=10.0, draw_chunk=3)
    loop = np_official_labels if semantics == "official" else np_textbook_labels
    expected = loop(maps.numpy(), tm.numpy(), vm.numpy(), tw.numpy(), vw.numpy(), coalitions[0].numpy(),
                    coalitions[1].numpy(), 10.0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)
    assert np.all(got.numpy()[tm.numpy()[:, :, None] * vm.numpy()[:, None, :] == 0] == 0)


# ------------------------------------------------------------------------------------------------ losses


def test_kl_mean_and_banzhaf_distill_by_hand():
    x = torch.tensor([[0.0, 0.0]])
    y = torch.tensor([[0.0, math.log(3.0)]])  # softmax(y) = (1/4, 3/4), softmax(x) = (1/2, 1/2)
    expected = (0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)) / 2  # sum over the row / 2 elements
    assert kl_mean(x, y).item() == pytest.approx(expected, rel=1e-6)

    generator = torch.Generator().manual_seed(8)
    student, teacher = (torch.randn(3, 2, 4, generator=generator, dtype=torch.float64) for _ in range(2))

    def np_kl(p_logits, q_logits, axis):  # KL(softmax(q) || softmax(p)) along `axis`, summed, / numel
        lp = p_logits - np.log(np.exp(p_logits).sum(axis, keepdims=True))
        lq = q_logits - np.log(np.exp(q_logits).sum(axis, keepdims=True))
        return (np.exp(lq) * (lq - lp)).sum() / p_logits.size

    s, t = student.numpy(), teacher.numpy()
    expected = np_kl(s, t, 2) + np_kl(s, t, 0)  # the reversed axes normalise over the batch
    assert banzhaf_distill(student, teacher).item() == pytest.approx(expected, rel=1e-10)


def test_hbi_losses_compose_the_three_families():
    tokens, text_mask, sentence, video, video_mask = _inputs(9)
    head = _head(kl=2.0, skl=0.5)
    head.load_teacher(BanzhafModule(64).double().state_dict())
    logit_scale = torch.tensor(math.log(20.0), dtype=torch.float64)
    text = TextFeatures(tokens=tokens, mask=text_mask, sentence=sentence)
    videos = VideoFeatures(frames=video, mask=video_mask)
    terms = hbi_losses(head, text, videos, logit_scale)
    assert set(terms) == {"loss/contrastive", "loss/contrastive_action", "loss/contrastive_event", "loss/banzhaf",
                          "loss/hierarchical_kl"}
    levels = head.training_levels(tokens, text_mask, video, video_mask)

    def ce_sym(s):
        logits = 20.0 * s
        rows = [-(logits[a, a] - np.log(np.exp(logits[a]).sum())) for a in range(len(s))]
        cols = [-(logits[a, a] - np.log(np.exp(logits[:, a]).sum())) for a in range(len(s))]
        return (np.mean(rows) + np.mean(cols)) / 2

    for name, level in zip(("contrastive", "contrastive_action", "contrastive_event"), levels):
        assert terms[f"loss/{name}"].item() == pytest.approx(ce_sym(level.similarity.detach().numpy()), rel=1e-9)
    banzhaf = 0.0
    for index, level in enumerate(levels):
        student = head.students[index](level.maps).detach()
        teacher = head.teacher(level.maps).detach()
        if index == 0:  # entity level: padded cells zeroed in both
            student, teacher = student * level.map_mask, teacher * level.map_mask
        banzhaf += kl_mean(student, teacher) + kl_mean(student.permute(2, 1, 0), teacher.permute(2, 1, 0))
    assert terms["loss/banzhaf"].item() == pytest.approx(0.5 * banzhaf.item(), rel=1e-9)
    entity = levels[0].similarity.detach()
    hierarchy = sum(kl_mean(level.similarity.detach().T, entity.T) + kl_mean(level.similarity.detach(), entity)
                    for level in levels[1:])
    assert terms["loss/hierarchical_kl"].item() == pytest.approx(2.0 * hierarchy.item(), rel=1e-9)


def test_training_refuses_a_random_teacher_and_logs_every_term():
    torch.manual_seed(0)
    extractor = build_feature_extractor("tiny", temporal="seqTransf", temporal_layers=2, head="hbi", vocab_size=300,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=2)
    objective = ContrastiveObjective(extractor)
    tokens, text_mask, sentence, video, video_mask = _inputs(10, width=extractor.backbone.width)
    text = TextFeatures(tokens=tokens.float(), mask=text_mask.bool(), sentence=sentence.float())
    videos = VideoFeatures(frames=video.float(), mask=video_mask.bool())
    with pytest.raises(RuntimeError, match="teacher was never loaded"):
        objective.loss(text, videos)
    extractor.head.load_teacher(BanzhafModule(64).state_dict())
    total = objective.loss(text, videos)
    assert total.item() == pytest.approx(sum(v.item() for v in objective.last_terms.values()), rel=1e-6)
    total.backward()
    assert extractor.head.students[1].query.grad is not None
    assert all(p.grad is None for p in extractor.head.teacher.parameters())  # frozen


# --------------------------------------------------------------------------------------- files and errors


def test_checkpoint_round_trip_keeps_every_level_and_the_teacher(tmp_path):
    torch.manual_seed(0)
    extractor = build_feature_extractor("tiny", temporal="seqTransf", temporal_layers=2, head="hbi", vocab_size=300,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=2,
                                        head_params={"rate": (0.5, 0.3, 0.2)})
    trained = BanzhafModule(64)
    extractor.head.load_teacher(trained.state_dict())
    metadata = {"model": {"backbone": "tiny", "temporal": "seqTransf", "temporal_layers": 2, "head": "hbi",
                          "head_params": {"rate": [0.5, 0.3, 0.2]}}}
    save_extractor(extractor, tmp_path / "disc", metadata)
    loaded, _ = load_extractor(tmp_path / "disc")
    for key, value in extractor.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.head.rate == (0.5, 0.3, 0.2)
    tokens, text_mask, sentence, video, video_mask = _inputs(11, width=64)
    for module in (extractor.head, loaded.head):
        for merge in (*module.text_merge.merges, *module.video_merge.merges):
            merge.density_noise = 0.0
    extractor.eval()
    args = (tokens.float(), text_mask, sentence.float(), video.float(), video_mask)
    torch.testing.assert_close(loaded.head(*args), extractor.head(*args))


def test_estimator_round_trip_and_errors(tmp_path):
    teacher = BanzhafModule(8)
    directory = tmp_path / "models/synthetic/estimator"
    with pytest.raises(EstimatorMissing, match=r"estimator\.json not found.*dvc repro train_estimator@synthetic"):
        load_estimator(directory, "synthetic")
    write_not_needed(directory, "wti")
    with pytest.raises(EstimatorMissing, match="head other than hbi.*train_estimator@synthetic"):
        load_estimator(directory, "synthetic")
    save_estimator(teacher, directory, {"trained_steps": 0})
    with pytest.raises(EstimatorMissing, match=r"untrained \(0 steps\).*random teacher"):
        load_estimator(directory, "synthetic")
    save_estimator(teacher, directory, {"trained_steps": 3})
    (directory / "estimator.safetensors").unlink()
    with pytest.raises(EstimatorMissing, match=r"estimator\.safetensors not found"):
        load_estimator(directory, "synthetic")
    save_estimator(teacher, directory, {"trained_steps": 3})
    state, record = load_estimator(directory, "synthetic")
    assert record["needed"] and record["trained_steps"] == 3
    fresh = BanzhafModule(8)
    fresh.load_state_dict(state)
    for key, value in teacher.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_a_killed_estimator_run_resumes_to_the_same_teacher(tmp_path):
    from diffusionret.config import EstimatorParams
    from diffusionret.pipeline.train_estimator import fit_teacher

    settings = EstimatorParams(steps=4, global_batch=3, mc_draws=4, draw_chunk=2, checkpoint_every=2, log_every=1)

    def inputs(step: int):  # a pure function of the step, as the stage's batches
        generator = torch.Generator().manual_seed(step)
        maps = torch.rand(3, 4, 2, generator=generator)
        text_mask, video_mask = torch.ones(3, 4), torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
        weights = (torch.softmax(torch.randn(3, 4, generator=generator), -1),
                   torch.softmax(torch.randn(3, 2, generator=generator), -1))
        return maps * video_mask[:, None, :], text_mask, video_mask, *weights

    def killed_at_3(step: int):
        if step == 3:
            raise KeyboardInterrupt
        return inputs(step)

    run = dict(steps=4, schedule_steps=4, fingerprint={"run": 1}, label="test")
    torch.manual_seed(0)
    straight = BanzhafModule(8)
    start = {key: value.clone() for key, value in straight.state_dict().items()}
    loss, rows = fit_teacher(straight, inputs, settings, state_dir=tmp_path / "straight", **run)
    interrupted = BanzhafModule(8)
    interrupted.load_state_dict(start)
    with pytest.raises(KeyboardInterrupt):
        fit_teacher(interrupted, killed_at_3, settings, state_dir=tmp_path / "killed", **run)
    torch.manual_seed(99)
    resumed = BanzhafModule(8)  # other initial weights: the saved state replaces them
    resumed_loss, resumed_rows = fit_teacher(resumed, inputs, settings, state_dir=tmp_path / "killed", **run)
    assert resumed_loss == loss and resumed_rows == rows
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    other = BanzhafModule(8)
    other.load_state_dict(start)
    fit_teacher(other, inputs, settings, state_dir=tmp_path / "killed", **{**run, "fingerprint": {"run": 2}})
    assert torch.equal(other.state_dict()["query"], straight.state_dict()["query"])  # fresh start, same result


def test_estimator_stage_writes_only_a_note_for_other_heads(tmp_path):
    from diffusionret.pipeline.paths import Paths
    from diffusionret.pipeline.train_estimator import train_estimator

    params = load_params()
    assert params.model.head != "hbi"
    summary = train_estimator("synthetic", params, Paths(tmp_path, params.data))
    assert summary == {"needed": False, "head": params.model.head}
    written = sorted(p.name for p in (tmp_path / "models/synthetic/estimator").iterdir())
    assert written == [RECORD_FILE]
    assert json.loads((tmp_path / "models/synthetic/estimator" / RECORD_FILE).read_text())["needed"] is False


def test_train_disc_stops_first_on_a_missing_or_untrained_estimator(tmp_path):
    """train_disc with head hbi stops before any work (no frames exist here), naming the file and the fix."""
    from diffusionret.pipeline.paths import Paths
    from diffusionret.pipeline.train_disc import train_disc

    params = load_params()
    params = dataclasses.replace(params, model=dataclasses.replace(params.model, head="hbi"))
    paths = Paths(tmp_path, params.data)
    record = paths.estimator("synthetic") / RECORD_FILE
    with pytest.raises(EstimatorMissing, match=f"{record} not found.*train_estimator@synthetic"):
        train_disc("synthetic", params, paths, tmp_path)
    save_estimator(BanzhafModule(64), paths.estimator("synthetic"), {"trained_steps": 0})
    with pytest.raises(EstimatorMissing, match="untrained"):
        train_disc("synthetic", params, paths, tmp_path)


# ---------------------------------------------------------------------------------------- params, counts


def test_hbi_block_rejects_unknown_keys_and_mismatched_levels():
    import yaml

    data = yaml.safe_load(open("params.yaml"))
    data["model"]["hbi"]["t_rate0"] = 0.25
    with pytest.raises(ConfigError, match=r"unknown key `model\.hbi\.t_rate0`.*banzhaf_planes"):
        params_from_dict(data)
    data["model"]["hbi"].pop("t_rate0")
    data["model"]["hbi"]["rate"] = [1.0, 0.0]
    with pytest.raises(ConfigError, match=r"model\.hbi\.rate"):
        params_from_dict(data)
    data["model"]["hbi"]["rate"] = [1.0, 0.0, 0.0]
    data["estimator"]["label_semantics"] = "shapley"
    with pytest.raises(ConfigError, match=r"estimator\.label_semantics"):
        params_from_dict(data)


def test_parameter_counts_at_vit_b32_width_match_the_arithmetic():
    """D = 512, P = 64: 4 WTI weight MLPs, 4 CTMs, 4 TCBlocks, 4 Banzhaf CNNs (3 students, 1 frozen teacher)."""
    d, p = 512, 64
    weight_mlp = d * 2 * d + 2 * d + 2 * d + 1
    ctm = 3 * d * d + 2 * d + (d + 1)  # conv k3 without bias, LayerNorm, score Linear(D, 1)
    tcblock = 2 * d + (d * d + d) + (d * 2 * d + 2 * d) + (d * d + d)  # LayerNorm, q, kv, proj
    banzhaf = (9 * p + p) + 2 * p + (9 * p + 1) + 3 * p * p  # conv in, unused BatchNorm, conv out, Q K V
    added = 4 * weight_mlp + 4 * ctm + 4 * tcblock + 4 * banzhaf
    assert added == 9_518_348 and banzhaf == 13_633
    head = build_head("hbi", 512)
    count = lambda module: sum(x.numel() for x in module.parameters())  # noqa: E731
    assert count(head) - count(build_head("wti", 512)) == added
    assert count(head.teacher) == banzhaf and not any(x.requires_grad for x in head.teacher.parameters())

    from diffusionret.cli import head_counts

    counts = head_counts(load_params().model, 512)
    assert counts["hbi"]["vs_wti"] == added
    assert counts["hbi"]["parameters"] == 2 * weight_mlp + added
