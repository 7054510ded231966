"""Evaluation rows of a cell (evaluation/rows.py) against brute-force loops and restated formulas."""

import math

import numpy as np
import pytest

from diffusionret.config import PostprocessParams
from diffusionret.evaluation.cell import CellScores, bank_subsample, check_selection, draw_seeds
from diffusionret.evaluation.names import ROWS
from diffusionret.evaluation.rows import aggregate_draws, cell_metrics, metrics_of_postprocess, row_matrices

POST = PostprocessParams(qbnorm_bank_size=5, qbnorm_bank_seed=0, qbnorm_beta=20.0, qbnorm_k=1,
                         qbnorm_min_count=1, dsl_temperature=10.0)


def make_cell(caption_video, num_draws=2, bank_rows=5, seed=0, quantise=False):
    """Random scores of a small cell; `quantise` rounds to 1 decimal so that ties occur everywhere."""
    rng = np.random.default_rng(seed)
    caption_video = np.asarray(caption_video, dtype=np.int64)
    q, v = len(caption_video), int(caption_video.max()) + 1

    def draw(*shape):
        x = rng.random(shape).astype(np.float32)
        return np.round(x, 1) if quantise else x

    return CellScores(stage1=draw(q, v), t2v_rerank=draw(num_draws, q, v), v2t_rerank=draw(num_draws, v, q),
                      bank_t2v=draw(bank_rows, v), bank_t2v_rerank=draw(num_draws, bank_rows, v),
                      bank_v2t=draw(bank_rows, q), bank_v2t_rerank=draw(num_draws, bank_rows, q),
                      bank_captions=np.arange(bank_rows), bank_videos=np.arange(bank_rows),
                      caption_video=caption_video, seeds=tuple(range(num_draws)))


def qbnorm_restated(scores, bank, beta, k=1, min_count=1):
    """Dynamic inverted softmax written out with loops (log form; ties: lower index first)."""
    scores, bank = np.asarray(scores, dtype=np.float64), np.asarray(bank, dtype=np.float64)
    num_gallery = scores.shape[1]
    counts = [0] * num_gallery
    for row in bank:
        for j in sorted(range(num_gallery), key=lambda j: (-row[j], j))[:k]:
            counts[j] += 1
    out = scores.copy()
    for i, row in enumerate(scores):
        top1 = min(range(num_gallery), key=lambda j: (-row[j], j))
        if counts[top1] >= min_count:
            for j in range(num_gallery):
                normaliser = math.fsum(math.exp(beta * bank[b, j] - beta * bank[:, j].max()) for b in range(len(bank)))
                out[i, j] = beta * row[j] - (beta * bank[:, j].max() + math.log(normaliser))
    return out


def dsl_restated(scores, temperature):
    """scores * softmax(temperature * scores) down each column, with loops."""
    scores = np.asarray(scores, dtype=np.float64)
    out = np.empty_like(scores)
    for j in range(scores.shape[1]):
        column = [math.exp(temperature * s) for s in scores[:, j]]
        total = math.fsum(column)
        for i in range(scores.shape[0]):
            out[i, j] = scores[i, j] * column[i] / total
    return out


def brute_t2v_ranks(scores, caption_video):
    """Pessimistic 0-based rank of each caption's video among all videos."""
    return np.array([sum(1 for j in range(scores.shape[1]) if j != gt and scores[i, j] >= scores[i, gt])
                     for i, gt in enumerate(caption_video)])


def brute_v2t_ranks(video_rows, caption_video):
    """Pessimistic rank of each video's own caption group, groups scored by their best caption."""
    num_videos = video_rows.shape[0]
    ranks = []
    for v in range(num_videos):
        group = [max(video_rows[v, c] for c in range(len(caption_video)) if caption_video[c] == u)
                 for u in range(num_videos)]
        ranks.append(sum(1 for u in range(num_videos) if u != v and group[u] >= group[v]))
    return np.array(ranks)


def brute_metrics(ranks):
    ranks = np.asarray(ranks, dtype=np.float64)
    return {"R1": 100 * np.mean(ranks < 1), "R5": 100 * np.mean(ranks < 5), "R10": 100 * np.mean(ranks < 10),
            "R50": 100 * np.mean(ranks < 50), "MdR": np.median(ranks) + 1, "MnR": ranks.mean() + 1}


def test_draw_seeds_and_bank_subsample_are_deterministic():
    assert draw_seeds(7, 3) == (7, 8, 9)
    first, again = bank_subsample(100, 10, seed=3), bank_subsample(100, 10, seed=3)
    assert np.array_equal(first, again) and len(np.unique(first)) == 10
    assert np.all(np.diff(first) > 0) and first.min() >= 0 and first.max() < 100
    assert not np.array_equal(first, bank_subsample(100, 10, seed=4))
    assert np.array_equal(bank_subsample(6, 10, seed=0), np.arange(6))  # a bank larger than the split: all
    with pytest.raises(ValueError, match="training split is empty"):
        bank_subsample(0, 10, seed=0)


def test_rows_match_restated_postprocessing_and_v2t_uses_its_own_matrix():
    cell = make_cell([0, 0, 1, 2, 2, 2, 3], num_draws=2)
    before = {name: getattr(cell, name).copy() for name in ("stage1", "t2v_rerank", "v2t_rerank", "bank_t2v",
                                                              "bank_v2t", "bank_t2v_rerank", "bank_v2t_rerank")}
    rows = dict(row_matrices(cell, POST, chunk_size=2))
    assert set(rows) == {d + suffix for d in ("t2v", "v2t") for suffix in ROWS}
    np.testing.assert_allclose(rows["t2v"][0], cell.stage1)
    np.testing.assert_allclose(rows["v2t"][0], cell.stage1.T)
    np.testing.assert_allclose(rows["t2v_qbnorm"][0], qbnorm_restated(cell.stage1, cell.bank_t2v, 20.0), atol=1e-9)
    np.testing.assert_allclose(rows["v2t_qbnorm"][0], qbnorm_restated(cell.stage1.T, cell.bank_v2t, 20.0),
                               atol=1e-9)
    np.testing.assert_allclose(rows["t2v_dsl"][0], dsl_restated(cell.stage1, 10.0), atol=1e-12)
    np.testing.assert_allclose(rows["v2t_dsl"][0], dsl_restated(cell.stage1.T, 10.0), atol=1e-12)
    assert len(rows["t2v_rerank_qbnorm"]) == 2
    for i in range(2):  # every draw is normalised with the bank re-ranked by the SAME draw
        np.testing.assert_allclose(rows["t2v_rerank"][i], cell.t2v_rerank[i])
        np.testing.assert_allclose(rows["v2t_rerank"][i], cell.v2t_rerank[i])
        np.testing.assert_allclose(rows["t2v_rerank_qbnorm"][i],
                                   qbnorm_restated(cell.t2v_rerank[i], cell.bank_t2v_rerank[i], 20.0), atol=1e-9)
        np.testing.assert_allclose(rows["v2t_rerank_qbnorm"][i],
                                   qbnorm_restated(cell.v2t_rerank[i], cell.bank_v2t_rerank[i], 20.0), atol=1e-9)
        np.testing.assert_allclose(rows["v2t_rerank_dsl"][i], dsl_restated(cell.v2t_rerank[i], 10.0), atol=1e-12)
    for name, value in before.items():
        assert np.array_equal(getattr(cell, name), value), f"{name} was modified"


def test_aggregate_draws_mean_and_sample_std():
    got = aggregate_draws([{"R1": 10.0, "MnR": 3.0}, {"R1": 20.0, "MnR": 3.0}, {"R1": 30.0, "MnR": 6.0}])
    assert got["R1"] == pytest.approx(20.0) and got["R1_std"] == pytest.approx(10.0)  # sqrt(200 / 2)
    assert got["MnR"] == pytest.approx(4.0) and got["MnR_std"] == pytest.approx(math.sqrt(3.0))
    assert aggregate_draws([{"R1": 5.0}]) == {"R1": 5.0}  # one draw: no std to report


@pytest.mark.parametrize("quantise", [False, True])
def test_cell_metrics_match_brute_force_with_uneven_groups_and_ties(quantise):
    caption_video = [2, 0, 0, 1, 2, 2, 3, 0, 3]  # uneven groups, not contiguous
    cell = make_cell(caption_video, num_draws=3, quantise=quantise, seed=5)
    metrics, curves = cell_metrics(cell, POST, chunk_size=2, faithful_msvd_grouping=False)
    rows = dict(row_matrices(cell, POST, chunk_size=2))
    for prefix, matrices in rows.items():
        ranks = [brute_t2v_ranks(m, caption_video) if prefix.startswith("t2v") else brute_v2t_ranks(m, caption_video)
                 for m in matrices]
        per_draw = [brute_metrics(r) for r in ranks]
        for name in ("R1", "R5", "R10", "R50", "MdR", "MnR"):
            values = [d[name] for d in per_draw]
            assert metrics[f"{prefix}/{name}"] == pytest.approx(np.mean(values)), (prefix, name)
            if len(values) > 1:
                assert metrics[f"{prefix}/{name}_std"] == pytest.approx(np.std(values, ddof=1)), (prefix, name)
            else:
                assert f"{prefix}/{name}_std" not in metrics
        assert curves[prefix].shape == (len(matrices), 4)
        for draw, r in enumerate(ranks):
            np.testing.assert_allclose(curves[prefix][draw], [100 * np.mean(r < k) for k in range(1, 5)])
    assert metrics["chance/R1"] == pytest.approx(25.0) and metrics["chance/MnR"] == pytest.approx(2.5)
    assert not any("faithful" in key for key in metrics)


def test_faithful_grouping_adds_shifted_rows():
    caption_video = [0, 0, 0, 1, 1, 2, 2, 2]  # contiguous blocks, as MSVD's loader stores them
    cell = make_cell(caption_video, num_draws=2, seed=2)
    metrics, _ = cell_metrics(cell, POST, chunk_size=4, faithful_msvd_grouping=True)
    # released grouping: the last caption of each block takes the next video; the last caption is dropped
    shifted = np.array([0, 0, 1, 1, 2, 2, 2])
    kept = slice(0, 7)
    want = brute_metrics(brute_t2v_ranks(cell.stage1[kept], shifted))
    assert metrics["t2v_faithful/R1"] == pytest.approx(want["R1"])
    assert metrics["t2v_faithful/MnR"] == pytest.approx(want["MnR"])
    v2t_want = brute_metrics(brute_v2t_ranks(cell.stage1.T[:, kept], shifted))
    assert metrics["v2t_faithful/MnR"] == pytest.approx(v2t_want["MnR"])
    assert metrics["t2v/MnR"] == pytest.approx(brute_metrics(brute_t2v_ranks(cell.stage1, caption_video))["MnR"])
    assert "t2v_rerank_qbnorm_faithful/R1_std" in metrics

    single = make_cell([0, 1, 2, 3], num_draws=1)  # one caption per video: video 0 loses its only caption
    metrics, _ = cell_metrics(single, POST, chunk_size=4, faithful_msvd_grouping=True)
    assert "t2v_faithful/R1" in metrics and not any(key.startswith("v2t_faithful") for key in metrics)


def test_every_metric_goes_to_exactly_one_mlflow_run():
    cell = make_cell([0, 1, 1, 2], num_draws=2)
    metrics, _ = cell_metrics(cell, POST, chunk_size=4, faithful_msvd_grouping=True)
    metrics["protocol/selected_on_test"] = 0.0
    groups = {name: metrics_of_postprocess(metrics, name) for name in ("none", "qbnorm", "dsl")}
    seen = [key for group in groups.values() for key in group]
    assert sorted(seen) == sorted(metrics)
    assert "t2v_rerank/R1_std" in groups["none"] and "chance/R1" in groups["none"]
    assert "v2t_rerank_qbnorm/MnR" in groups["qbnorm"] and "t2v_qbnorm_faithful/R1" in groups["qbnorm"]
    assert all("dsl" in key for key in groups["dsl"])


def test_selection_mismatch_is_refused():
    val = {"selected": {"split": "val"}}
    check_selection("val", "msrvtt", {"disc": val, "gen": val})
    with pytest.raises(ValueError, match=r"models/msrvtt/gen was selected on split 'val'.*eval.selection=test"):
        check_selection("test", "msrvtt", {"disc": {"selected": {"split": "test"}}, "gen": val})
    with pytest.raises(ValueError, match="selected on split None"):
        check_selection("val", "msrvtt", {"disc": {}, "gen": val})


def test_report_rows_cover_every_evaluated_row():
    from diffusionret.report.tables import ROWS as REPORT_ROWS

    assert {suffix for suffix, _ in REPORT_ROWS} == set(ROWS)
