"""The one scoring path (evaluation/scoring.py), feature containers, the metric-name contract (evaluation/names.py)."""

import numpy as np
import pytest
import torch

from diffusionret.config import PostprocessParams
from diffusionret.evaluation.cell import CellScores
from diffusionret.evaluation.names import (ROWS, file_metric_key, headline_keys, postprocess_of, run_metric_name,
                                           split_key)
from diffusionret.evaluation.rows import cell_metrics, headline_files, headline_metrics, metrics_of_postprocess
from diffusionret.evaluation.scoring import RerankSettings, block_similarity, score_queries
from diffusionret.method.diffusion import create_diffusion
from diffusionret.model.denoiser import Generator
from diffusionret.model.extractor import TextFeatures, VideoFeatures

C, V, L, T, D = 7, 5, 4, 3, 8


def features(seed=0):
    g = torch.Generator().manual_seed(seed)
    text = TextFeatures(tokens=torch.randn(C, L, D, generator=g), mask=torch.ones(C, L, dtype=torch.long),
                        sentence=torch.randn(C, D, generator=g))
    video = VideoFeatures(frames=torch.randn(V, T, D, generator=g), mask=torch.ones(V, T, dtype=torch.long))
    return text, video


def mean_pool(text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
    """A stand-in head: sentence . mean frame, (Q, V)."""
    return text.sentence @ video.frames.mean(dim=1).T


def brute_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Pessimistic 0-based ranks by a loop: candidates scoring >= the target's, other than the target."""
    return np.array([sum(scores[i, j] >= scores[i, targets[i]] for j in range(scores.shape[1]) if j != targets[i])
                     for i in range(len(scores))])


def test_feature_containers_index_and_concatenate():
    text, video = features()
    rows = torch.tensor([4, 0, 2])
    picked = text[rows]
    assert len(picked) == 3 and torch.equal(picked.tokens[1], text.tokens[0]) and torch.equal(picked.sentence[2],
                                                                                               text.sentence[2])
    again = TextFeatures.cat([text[:3], text[3:]])
    assert all(torch.equal(getattr(again, name), getattr(text, name)) for name in ("tokens", "mask", "sentence"))
    joined = VideoFeatures.cat([video[1:2], video[0:1]])
    assert len(joined) == 2 and torch.equal(joined.frames[0], video.frames[1]) and torch.equal(joined.mask[1],
                                                                                               video.mask[0])


@pytest.mark.parametrize("query_block, video_block", [(1, 1), (2, 3), (3, None), (100, 100)])
def test_block_similarity_is_the_whole_matrix(query_block, video_block):
    text, video = features()
    expected = torch.einsum("cd,vtd->cv", text.sentence, video.frames) / T
    got = block_similarity(mean_pool, text, video, query_block=query_block, video_block=video_block)
    assert got.dtype == torch.float32 and got.shape == (C, V)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_score_queries_reranks_each_seed_and_ranks_like_a_loop():
    text, video = features()
    generator, diffusion = Generator(width=D, seed=3), create_diffusion(10, "cosine")
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.mul_(3)
    rerank = RerankSettings(k=3, temperature=1.0, alpha=1.0, seeds=(5, 6), query_batch=2)
    t2v = score_queries(mean_pool, text, video, direction="t2v", query_block=2, generator=generator,
                        diffusion=diffusion, rerank=rerank)
    assert len(t2v.draws) == 2 and not torch.equal(t2v.reranked[0], t2v.reranked[1])  # one draw per seed
    alone = score_queries(mean_pool, text[2:3], video, direction="t2v", query_block=2, generator=generator,
                          diffusion=diffusion, rerank=RerankSettings(k=3, temperature=1.0, alpha=1.0, seeds=(5,)))
    # only the top-3 of a row move, by a probability in (0, 1]; the rest keep their stage-1 score
    moved = (t2v.reranked[0] - t2v.stage1).numpy()
    assert ((moved > 0).sum(axis=1) == 3).all() and (moved <= 1.0 + 1e-6).all()
    torch.testing.assert_close(alone.stage1[0], t2v.stage1[2])  # a query's stage-1 row does not depend on the others
    targets = np.array([0, 1, 2, 3, 4, 0, 1])
    for draw in (None, 0, 1):
        scores = (t2v.stage1 if draw is None else t2v.reranked[draw]).numpy()
        assert (t2v.ranks(targets, draw=draw, chunk_size=3) == brute_ranks(scores, targets)).all()
    v2t = score_queries(mean_pool, text, video, direction="v2t", query_block=3, generator=generator,
                        diffusion=diffusion, rerank=rerank)
    torch.testing.assert_close(v2t.stage1, t2v.stage1.T)
    assert v2t.reranked[0].shape == (V, C) and v2t.draws[0].topk_indices.shape == (V, 3)


def test_score_queries_needs_the_generator_to_rerank():
    text, video = features()
    with pytest.raises(ValueError, match="needs the generator"):
        score_queries(mean_pool, text, video, query_block=2, rerank=RerankSettings(1, 1.0, 1.0, (0,)))
    with pytest.raises(ValueError, match="direction"):
        score_queries(mean_pool, text, video, query_block=2, direction="x2y")


def small_cell_metrics():
    rng = np.random.default_rng(0)
    caption_video = np.array([0, 1, 1, 2, 3, 3])
    q, v, n, b = 6, 4, 2, 3
    cell = CellScores(stage1=rng.random((q, v)), t2v_rerank=rng.random((n, q, v)), v2t_rerank=rng.random((n, v, q)),
                      bank_t2v=rng.random((b, v)), bank_t2v_rerank=rng.random((n, b, v)), bank_v2t=rng.random((b, q)),
                      bank_v2t_rerank=rng.random((n, b, q)), bank_captions=np.arange(b), bank_videos=np.arange(b),
                      caption_video=caption_video, seeds=(0, 1))
    post = PostprocessParams(qbnorm_bank_size=3, qbnorm_bank_seed=0, qbnorm_beta=20.0, qbnorm_k=1,
                             qbnorm_min_count=1, dsl_temperature=10.0)
    metrics, _ = cell_metrics(cell, post, chunk_size=4, faithful_msvd_grouping=True)
    metrics["protocol/selected_on_test"] = 0.0
    return metrics


def test_every_run_logs_the_same_names_and_they_map_back():
    metrics = small_cell_metrics()
    names = {}
    for postprocess in ("none", "qbnorm", "dsl"):
        logged = {run_metric_name(key): value for key, value in metrics_of_postprocess(metrics, postprocess).items()}
        assert all(metrics[file_metric_key(name, postprocess)] == value for name, value in logged.items())
        names[postprocess] = {name for name in logged if "/" in name and name.split("/")[0][:3] in ("t2v", "v2t")}
    assert names["none"] == names["qbnorm"] == names["dsl"]
    assert {"t2v/R1", "t2v_rerank/R1_std", "v2t_rerank/MnR", "t2v_rerank_faithful/MnR"} <= names["qbnorm"]
    # every key lands in exactly one run, and a row key's post-processing is its suffix's
    assert sum(len(metrics_of_postprocess(metrics, p)) for p in ("none", "qbnorm", "dsl")) == len(metrics)
    assert postprocess_of("v2t_rerank_dsl_faithful/R5") == "dsl" and postprocess_of("chance/R1") == "none"
    assert split_key("t2v_rerank_qbnorm_faithful/R1") == ("t2v", "_rerank_qbnorm", True, "R1")
    assert set(ROWS) == {split_key(f"t2v{suffix}/R1")[1] for suffix in ROWS}


def test_headline_is_stage1_and_reranked_in_both_directions():
    metrics = small_cell_metrics()
    headline = headline_metrics(metrics)
    assert list(headline) == list(headline_keys()) and len(headline) == 2 * 2 * 5
    assert {key.split("/")[0] for key in headline} == {"t2v", "t2v_rerank", "v2t", "v2t_rerank"}
    assert {key.split("/")[1] for key in headline} == {"R1", "R5", "R10", "MdR", "MnR"}
    assert all(headline[key] == metrics[key] for key in headline)
    files = headline_files(metrics)  # what the DVC metric files hold: a file per row, five columns each
    assert list(files) == ["t2v", "t2v_rerank", "v2t", "v2t_rerank"]
    assert all(values == {name: metrics[f"{row}/{name}"] for name in ("R1", "R5", "R10", "MdR", "MnR")}
               for row, values in files.items())
