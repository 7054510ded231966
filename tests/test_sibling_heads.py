"""EMCL-Net and DiCoSA heads against independent NumPy / loop restatements of their equations, by-hand EM and
decorrelation values, tiled EMCL scoring, checkpoint round trips, the per-head params blocks and the parameter
counts at ViT-B/32 width."""

import math

import numpy as np
import pytest
import torch

from diffusionret.config import ConfigError, load_params, params_from_dict
from diffusionret.evaluation.scoring import block_similarity
from diffusionret.method.losses import concept_decorrelation
from diffusionret.method.objectives import ContrastiveObjective, head_training_losses
from diffusionret.model.checkpoint import load_extractor, save_extractor
from diffusionret.model.extractor import TextFeatures, VideoFeatures, build_feature_extractor
from diffusionret.model.heads import (SIMILARITY_HEADS, DiCoSAHead, EMCLHead, build_head, em_reconstruction)

WIDTH = 8


def _inputs(seed: int, texts: int = 3, videos: int = 4, frames: int = 4, words: int = 5, width: int = WIDTH):
    """float64 features with padded frames (video b has 1 + b % frames valid frames) and padded tokens."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randn(texts, words, width, generator=generator, dtype=torch.float64)
    text_mask = torch.ones(texts, words, dtype=torch.long)
    text_mask[:, 3:] = 0
    sentence = torch.randn(texts, width, generator=generator, dtype=torch.float64)
    video = torch.randn(videos, frames, width, generator=generator, dtype=torch.float64)
    video_mask = torch.ones(videos, frames, dtype=torch.long)
    for row in range(videos):
        video_mask[row, 1 + row % frames:] = 0
    return tokens, text_mask, sentence, video, video_mask


# ------------------------------------------------------------------------------------------- restatements


def np_softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


def np_pool(sentence, frames, mask, temperature):
    """v[a, b] = sum_f softmax_f(<c_a, F_bf> / tau) mask[b, f] F_bf, one pair at a time."""
    texts, videos = len(sentence), len(frames)
    pooled = np.zeros((texts, videos, sentence.shape[1]))
    for a in range(texts):
        for b in range(videos):
            weights = np_softmax(np.array([sentence[a] @ frame for frame in frames[b]]) / temperature) * mask[b]
            pooled[a, b] = sum(w * frame for w, frame in zip(weights, frames[b]))
    return pooled


def np_em(x, start, iters, lamd):
    """The EM of EMCL-Net element by element: returns the reconstruction (M, D) and the final bases U (M, K)."""
    rows, dims = x.shape
    bases_count = start.shape[1]
    u = np.repeat(start, rows, axis=0)
    for _ in range(iters):
        z = np.zeros((dims, bases_count))
        for j in range(dims):
            z[j] = np_softmax(np.array([sum(x[m, j] * u[m, k] for m in range(rows)) / lamd
                                        for k in range(bases_count)]))
        for k in range(bases_count):
            z[:, k] /= 1e-6 + z[:, k].sum()
        u = np.zeros((rows, bases_count))
        for m in range(rows):
            for k in range(bases_count):
                u[m, k] = sum(x[m, j] * z[j, k] for j in range(dims))
        for k in range(bases_count):
            u[:, k] /= 1e-6 + math.sqrt((u[:, k] ** 2).sum())
    reconstruction = np.array([[sum(u[m, k] * z[j, k] for k in range(bases_count)) for j in range(dims)]
                               for m in range(rows)])
    return reconstruction, u


def np_emcl(sentence, frames, mask, start, *, iters, lamd, beta, temperature, momentum):
    """Scores (Bt, Bv) of one block and the updated mu0."""
    pooled = np_pool(sentence, frames, mask, temperature)
    texts, videos, width = pooled.shape
    joint = np.concatenate([pooled.reshape(texts * videos, width), sentence])
    reconstruction, u = np_em(joint, start, iters, lamd)
    joint = joint + beta * reconstruction
    video_part, text_part = joint[:texts * videos].reshape(texts, videos, width), joint[texts * videos:]
    scores = np.array([[text_part[a] @ video_part[a, b] / np.linalg.norm(text_part[a]) /
                        np.linalg.norm(video_part[a, b]) for b in range(videos)] for a in range(texts)])
    return scores, momentum * start + (1 - momentum) * u.mean(axis=0, keepdims=True)


def np_dicosa(head: DiCoSAHead, sentence, frames, mask, temperature):
    """S[a, b] = sum_k MLP([c_ak; v_abk]) cos(c_ak, v_abk), looping over (a, b, k)."""
    pooled = np_pool(sentence, frames, mask, temperature)
    w1, b1 = head.weight_fc[0].weight.detach().numpy(), head.weight_fc[0].bias.detach().numpy()
    w2, b2 = head.weight_fc[2].weight.detach().numpy(), head.weight_fc[2].bias.detach().numpy()
    chunks, width = head.concepts, head.chunk_width
    scores = np.zeros(pooled.shape[:2])
    for a in range(len(sentence)):
        for b in range(len(frames)):
            for k in range(chunks):
                text_chunk = sentence[a, k * width:(k + 1) * width]
                video_chunk = pooled[a, b, k * width:(k + 1) * width]
                weight = (w2 @ np.maximum(w1 @ np.concatenate([text_chunk, video_chunk]) + b1, 0) + b2)[0]
                cosine = text_chunk @ video_chunk / np.linalg.norm(text_chunk) / np.linalg.norm(video_chunk)
                scores[a, b] += weight * cosine
    return scores


# ------------------------------------------------------------------------------------------------- EMCL


def test_em_iteration_and_basis_update_by_hand():
    """K = 1: Z = 1 / (D + 1e-6) in every row, U = X Z normalised, R = U Z^T; mu0 <- 0.9 mu0 + 0.1 mean(U)."""
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)  # M = 2 rows, D = 2 dimensions
    reconstruction, bases = em_reconstruction(x, torch.tensor([[1.0]]), iters=1, lamd=1.0)
    z = 1.0 / (2.0 + 1e-6)
    u = np.array([3.0 * z, 7.0 * z])  # X Z: row sums times z
    u = u / (1e-6 + math.sqrt(u[0] ** 2 + u[1] ** 2))
    np.testing.assert_allclose(bases.numpy()[:, 0], u, rtol=1e-12)
    np.testing.assert_allclose(reconstruction.numpy(), np.array([[u[0] * z, u[0] * z], [u[1] * z, u[1] * z]]),
                               rtol=1e-12)

    head = EMCLHead(2, bases=1, em_iters=1, momentum=0.9, beta=0.0, frame_temperature=1.0).double()
    head.basis.fill_(1.0)
    head.train()
    sentence = x[1:]  # one caption c = (3, 4)
    frames = x[:1, None, :]  # one video with one frame (1, 2): pooled v = softmax of one logit * F = (1, 2)
    head(None, None, sentence, frames, torch.ones(1, 1))
    assert head.basis.item() == pytest.approx(0.9 * 1.0 + 0.1 * (u[0] + u[1]) / 2, rel=1e-12)


@pytest.mark.parametrize("iters", [1, 9])
def test_emcl_training_scores_and_basis_update_match_numpy(iters):
    tokens, text_mask, sentence, video, video_mask = _inputs(0)
    torch.manual_seed(1)
    head = EMCLHead(WIDTH, bases=3, em_iters=iters, momentum=0.9, lamd=0.5, beta=3.0, frame_temperature=2.0).double()
    start = head.basis.numpy().copy()
    assert np.all(np.abs(np.abs(start) - 1.0) < 1e-3)  # the official +-1 initial bases (x / (1e-6 + |x|))
    head.train()
    scores = head(tokens, text_mask, sentence, video, video_mask)
    expected, new_basis = np_emcl(sentence.numpy(), video.numpy(), video_mask.numpy(), start, iters=iters, lamd=0.5,
                                  beta=3.0, temperature=2.0, momentum=0.9)
    np.testing.assert_allclose(scores.detach().numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(head.basis.numpy(), new_basis, rtol=1e-9, atol=1e-12)


def test_emcl_eval_mode_leaves_the_bases_and_tiles_the_matrix():
    tokens, text_mask, sentence, video, video_mask = _inputs(2, texts=5, videos=6)
    torch.manual_seed(3)
    head = EMCLHead(WIDTH, bases=3, em_iters=3, eval_block=2).double().eval()
    start = head.basis.clone()
    scores = head(tokens, text_mask, sentence, video, video_mask)
    assert torch.equal(head.basis, start)  # no update outside training
    expected = np.zeros((5, 6))
    for t in range(0, 5, 2):
        for v in range(0, 6, 2):
            expected[t:t + 2, v:v + 2] = np_emcl(sentence.numpy()[t:t + 2], video.numpy()[v:v + 2],
                                                 video_mask.numpy()[v:v + 2], start.numpy(), iters=3, lamd=1.0,
                                                 beta=3.0, temperature=3.0, momentum=0.9)[0]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-9, atol=1e-12)
    whole, _ = np_emcl(sentence.numpy(), video.numpy(), video_mask.numpy(), start.numpy(), iters=3, lamd=1.0,
                       beta=3.0, temperature=3.0, momentum=0.9)
    assert np.abs(whole - expected).max() > 1e-6  # a score depends on its block (documented behaviour)


def test_em_reconstruction_passes_no_gradient():
    """dX'/dX = I: the reconstruction is a constant for autograd."""
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    reconstruction, _ = em_reconstruction(x, torch.ones(1, 3), iters=9, lamd=1.0)
    assert not reconstruction.requires_grad
    output = x + 3.0 * reconstruction
    weights = torch.randn(6, 4, dtype=torch.float64)
    (gradient,) = torch.autograd.grad((output * weights).sum(), x)
    assert torch.equal(gradient, weights)


def _tiny_extractor(head: str, **head_params):
    torch.manual_seed(0)
    return build_feature_extractor("tiny", temporal="seqTransf", temporal_layers=2, head=head, vocab_size=300,
                                   bos_token_id=0, eos_token_id=1, pad_token_id=2, head_params=head_params)


def test_block_scoring_keeps_the_official_tiles_whatever_the_query_block():
    """evaluation.scoring rounds its blocks to multiples of the head's tile, so the matrix equals the per-tile
    computation for any query_block / video_block."""
    extractor = _tiny_extractor("emcl", eval_block=4).eval()
    tokens, text_mask, sentence, video, video_mask = _inputs(4, texts=10, videos=9, width=extractor.backbone.width)
    text = TextFeatures(tokens=tokens.float(), mask=text_mask, sentence=sentence.float())
    videos = VideoFeatures(frames=video.float(), mask=video_mask)
    expected = torch.zeros(10, 9)
    with torch.no_grad():
        for t in range(0, 10, 4):
            for v in range(0, 9, 4):
                expected[t:t + 4, v:v + 4] = extractor.similarity(text[t:t + 4], videos[v:v + 4])
    for query_block, video_block in ((3, None), (4, 5), (9, 8), (256, None)):
        got = block_similarity(extractor.similarity, text, videos, query_block=query_block, video_block=video_block)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_emcl_bases_survive_a_checkpoint_round_trip_and_the_faithful_switch_redraws_them(tmp_path):
    extractor = _tiny_extractor("emcl", bases=5)
    extractor.head.basis.copy_(torch.linspace(-0.01, 0.02, 5)[None])  # a trained, decayed mu0
    metadata = {"model": {"backbone": "tiny", "temporal": "seqTransf", "temporal_layers": 2, "head": "emcl",
                          "head_params": {"bases": 5}}}
    save_extractor(extractor, tmp_path / "saved", metadata)
    loaded, _ = load_extractor(tmp_path / "saved")
    assert torch.equal(loaded.head.basis, extractor.head.basis)
    assert loaded.head.em_iters == 9 and loaded.head.basis.shape == (1, 5)

    metadata["model"]["head_params"]["reinit_basis_on_load"] = True
    save_extractor(extractor, tmp_path / "faithful", metadata)
    faithful, _ = load_extractor(tmp_path / "faithful")
    assert torch.all((faithful.head.basis.abs() - 1.0).abs() < 1e-3)  # fresh +-1 bases, as the official reload


def test_ema_copies_the_emcl_bases():
    from diffusionret.training.optim import ModelEMA

    extractor = _tiny_extractor("emcl")
    ema = ModelEMA(extractor, decay=0.99)
    extractor.head.basis.mul_(0.5)
    ema.update(extractor)
    assert torch.equal(ema.module.head.basis, extractor.head.basis)


# ----------------------------------------------------------------------------------------------- DiCoSA


def test_dicosa_scores_match_a_loop_over_pairs_and_chunks():
    tokens, text_mask, sentence, video, video_mask = _inputs(5)
    torch.manual_seed(6)
    head = DiCoSAHead(WIDTH, chunk_size=2, concepts=4, frame_temperature=3.0, weight_hidden_mult=4).double()
    for layer in (head.weight_fc[0], head.weight_fc[2]):  # larger weights than the N(0, 0.02) start
        torch.nn.init.normal_(layer.weight, std=0.5)
        torch.nn.init.normal_(layer.bias, std=0.5)
    scores = head(tokens, text_mask, sentence, video, video_mask)
    expected = np_dicosa(head, sentence.numpy(), video.numpy(), video_mask.numpy(), 3.0)
    np.testing.assert_allclose(scores.detach().numpy(), expected, rtol=1e-9, atol=1e-12)


def np_decorrelation(text_chunks, video_chunks, normaliser, alpha, beta):
    batch, chunks, width = text_chunks.shape
    zt = (text_chunks - text_chunks.mean(-1, keepdims=True)) / text_chunks.std(-1, ddof=1, keepdims=True)
    zv = (video_chunks - video_chunks.mean(-1, keepdims=True)) / video_chunks.std(-1, ddof=1, keepdims=True)
    gamma = np.zeros((chunks, chunks))
    for k in range(chunks):
        for j in range(chunks):
            gamma[k, j] = sum(zt[a, k] @ zv[a, j] for a in range(batch)) / batch / normaliser
    loss = 0.0
    for k in range(chunks):
        for j in range(chunks):
            loss += alpha * (gamma[k, j] - 1) ** 2 if k == j else beta * gamma[k, j] ** 2
    return loss


def test_decorrelation_loss_by_hand():
    """Two identical chunks of width 3 in one pair: every z-score is (-1, 0, 1), Gamma = 2 / normaliser everywhere."""
    chunk = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    text = torch.stack([chunk, chunk])[None]  # (1, C=2, w=3)
    corrected = concept_decorrelation(text, text, normaliser=2, alpha=0.01, beta=0.005)  # w - 1
    assert corrected.item() == pytest.approx(0.01 * 0 + 0.005 * 2 * 1.0 ** 2)  # Gamma = 1: only off-diagonal
    official = concept_decorrelation(text, text, normaliser=16, alpha=0.01, beta=0.005)  # max_words 16
    assert official.item() == pytest.approx(0.01 * 2 * (0.125 - 1) ** 2 + 0.005 * 2 * 0.125 ** 2)


def test_decorrelation_loss_matches_numpy_and_the_head_picks_the_divisor():
    generator = torch.Generator().manual_seed(7)
    text, video = (torch.randn(5, 4, 6, generator=generator, dtype=torch.float64) for _ in range(2))
    for normaliser in (5, 32):
        got = concept_decorrelation(text, video, normaliser=normaliser, alpha=0.01, beta=0.005)
        assert got.item() == pytest.approx(np_decorrelation(text.numpy(), video.numpy(), normaliser, 0.01, 0.005))

    tokens, text_mask, sentence, frames, video_mask = _inputs(8, texts=4, videos=4, words=7)
    pooled = np_pool(sentence.numpy(), frames.numpy(), video_mask.numpy(), 3.0)
    positives = np.stack([pooled[a, a] for a in range(4)])
    for name, divisor in (("width_minus_1", WIDTH // 2 - 1), ("max_words", 7)):
        head = DiCoSAHead(WIDTH, concepts=2, decorrelation_normaliser=name).double()
        got = head_training_losses(head, TextFeatures(tokens=tokens, mask=text_mask, sentence=sentence),
                                   VideoFeatures(frames=frames, mask=video_mask))["loss/decorrelation"]
        expected = np_decorrelation(sentence.numpy().reshape(4, 2, 4), positives.reshape(4, 2, 4), divisor, 0.01,
                                    0.005)
        assert got.item() == pytest.approx(expected, rel=1e-9)


def test_dicosa_objective_adds_the_decorrelation_term():
    extractor = _tiny_extractor("dicosa")
    objective = ContrastiveObjective(extractor)
    tokens, text_mask, sentence, frames, video_mask = _inputs(9, texts=4, videos=4, width=extractor.backbone.width)
    text = TextFeatures(tokens=tokens.float(), mask=text_mask, sentence=sentence.float())
    video = VideoFeatures(frames=frames.float(), mask=video_mask)
    total = objective.loss(text, video)
    terms = objective.last_terms
    assert set(terms) == {"loss/contrastive", "loss/decorrelation"}
    assert total.item() == pytest.approx((terms["loss/contrastive"] + terms["loss/decorrelation"]).item())
    assert terms["loss/decorrelation"].item() > 0


# ------------------------------------------------------------------------------------ config and counts


def test_every_head_is_registered_in_config_and_model():
    from diffusionret.config import SIMILARITY_HEADS as CONFIG_HEADS

    assert set(CONFIG_HEADS) == set(SIMILARITY_HEADS) == {"wti", "meanP", "emcl", "dicosa", "hbi"}


def test_unknown_key_of_a_head_block_names_the_key_and_the_allowed_ones():
    import yaml

    data = yaml.safe_load(open("params.yaml"))
    data["model"]["head"] = "emcl"
    data["model"]["emcl"]["centerK"] = 32
    with pytest.raises(ConfigError, match=r"unknown key `model\.emcl\.centerK`.*bases.*eval_block"):
        params_from_dict(data)
    data["model"]["emcl"].pop("centerK")
    data["model"]["dicosa"]["decorrelation_normaliser"] = "words"
    with pytest.raises(ConfigError, match=r"model\.dicosa\.decorrelation_normaliser"):
        params_from_dict(data)


def test_head_params_reach_the_head():
    params = load_params()
    assert params.model.head_params() == {}  # wti has no block
    import dataclasses

    emcl = dataclasses.replace(params.model, head="emcl")
    assert emcl.head_params()["bases"] == params.model.emcl.bases
    head = build_head("emcl", 64, head_params=emcl.head_params())
    assert head.em_iters == params.model.emcl.em_iters and head.eval_block == params.model.emcl.eval_block


def test_parameter_counts_at_vit_b32_width_match_the_arithmetic():
    """D = 512: WTI's two weight MLPs 2 x (512*1024 + 1024 + 1024*1 + 1); EMCL none (32 floats of state);
    DiCoSA's chunk-weight MLP (128*256 + 256) + (256*1 + 1)."""
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    wti = 2 * (512 * 1024 + 1024 + 1024 * 1 + 1)
    assert wti == 1_052_674
    assert count(build_head("wti", 512)) == wti
    emcl = build_head("emcl", 512)
    assert count(emcl) == 0 and emcl.basis.numel() == 32
    assert count(emcl) - wti == -1_052_674
    dicosa = (128 * 256 + 256) + (256 * 1 + 1)
    assert count(build_head("dicosa", 512)) == dicosa == 33_281
    assert dicosa - wti == -1_019_393


def test_model_summary_reports_every_head():
    from diffusionret.cli import head_counts

    params = load_params()
    counts = head_counts(params.model, 512)
    assert set(counts) == set(SIMILARITY_HEADS)
    assert counts["emcl"] == {"parameters": 0, "state": 32, "vs_wti": -2 * (512 * 1024 + 1024 + 1024 + 1)}
    assert counts["dicosa"]["vs_wti"] == (128 * 256 + 256 + 257) - 2 * (512 * 1024 + 1024 + 1024 + 1)


def test_qbnorm_rows_use_each_directions_own_beta_and_theta():
    """DiCoSA's QB-Norm: beta and theta per direction (postprocess.qbnorm_beta_v2t / qbnorm_min_count_v2t)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_evaluate_rows import make_cell, qbnorm_restated

    from diffusionret.config import PostprocessParams
    from diffusionret.evaluation.rows import row_matrices

    cell = make_cell([0, 1, 1, 2, 3, 4, 5, 5], num_draws=1, bank_rows=12)
    post = PostprocessParams(qbnorm_bank_size=12, qbnorm_beta=30.0, qbnorm_min_count=2, qbnorm_beta_v2t=70.0,
                             qbnorm_min_count_v2t=3, dsl_temperature=10.0)
    rows = dict(row_matrices(cell, post, chunk_size=3))
    np.testing.assert_allclose(rows["t2v_qbnorm"][0], qbnorm_restated(cell.stage1, cell.bank_t2v, 30.0, min_count=2),
                               atol=1e-9)
    np.testing.assert_allclose(rows["v2t_qbnorm"][0], qbnorm_restated(cell.stage1.T, cell.bank_v2t, 70.0,
                                                                      min_count=3), atol=1e-9)
    assert not np.allclose(rows["v2t_qbnorm"][0], qbnorm_restated(cell.stage1.T, cell.bank_v2t, 30.0, min_count=2))
