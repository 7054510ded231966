"""Bootstrap CIs and paired differences (evaluation/uncertainty.py, rows.cell_rows, ranks.npz) against plain loops
over the same resampled indices, scipy's bootstrap and the normal approximation."""

import numpy as np
import pytest
from scipy import stats

from diffusionret.config import EvalParams
from diffusionret.evaluation.metrics import recall_metrics
from diffusionret.evaluation.names import DIRECTIONS, ROWS
from diffusionret.evaluation.rows import cell_rows, shift_metrics
from diffusionret.evaluation.uncertainty import (Bootstrap, interval, paired_difference, resample_indices,
                                                 row_intervals, stratified_paired_difference,
                                                 unpaired_difference)
from diffusionret.pipeline.evaluate import save_ranks

from test_evaluate_rows import POST, make_cell

NAMES = ("R1", "R5", "R10", "R50", "MdR", "MnR")
BOOT = Bootstrap(resamples=300, seed=7, level=0.9)


def loop_statistic(ranks, rows, name):
    """Mean over draws of the draw's metric on the resampled queries, one resample at a time."""
    ranks = np.atleast_2d(np.asarray(ranks, dtype=np.float64))
    return float(np.mean([recall_metrics(draw[rows])[name] for draw in ranks]))


def loop_interval(values, level):
    values = np.sort(np.asarray(values))
    return tuple(np.quantile(values, [(1 - level) / 2, (1 + level) / 2]))


def cluster_resamples(clusters, resamples, seed):
    """Query indices of each resample of a cluster bootstrap, by hand: the clusters drawn (as indices into the
    sorted distinct cluster labels), each contributing all of its queries."""
    labels = sorted(set(int(c) for c in clusters))
    members = {label: [q for q, c in enumerate(clusters) if c == label] for label in labels}
    return [np.array([q for c in row for q in members[labels[c]]])
            for row in resample_indices(len(labels), resamples, seed)]


def loop_ci(ranks, boot, name, indices=None):
    ranks = np.atleast_2d(ranks)
    indices = resample_indices(ranks.shape[1], boot.resamples, boot.seed) if indices is None else indices
    return loop_interval([loop_statistic(ranks, rows, name) for rows in indices], boot.level)


def random_ranks(draws, queries, candidates=20, seed=0):
    return np.random.default_rng(seed).integers(0, candidates, size=(draws, queries))


def test_row_ci_matches_a_loop_over_the_same_indices():
    ranks = random_ranks(3, 40)
    found = row_intervals(ranks, BOOT)
    for name in NAMES:
        low, high = loop_ci(ranks, BOOT, name)
        assert found[f"{name}_ci_low"] == pytest.approx(low, abs=1e-9), name
        assert found[f"{name}_ci_high"] == pytest.approx(high, abs=1e-9), name
        point = np.mean([recall_metrics(draw)[name] for draw in ranks])
        assert low - 1e-9 <= point <= high + 1e-9, name


def test_ci_agrees_with_scipy_and_the_normal_approximation_on_a_large_sample():
    rng = np.random.default_rng(3)
    ranks = rng.integers(0, 4, size=3000)  # R@1 = 25% in expectation
    boot = Bootstrap(resamples=2000, seed=1, level=0.95)
    found = row_intervals(ranks, boot)
    hits = (ranks < 1).astype(np.float64) * 100.0
    reference = stats.bootstrap((hits,), np.mean, n_resamples=2000, method="percentile", confidence_level=0.95,
                                random_state=np.random.default_rng(5)).confidence_interval
    p = hits.mean() / 100.0
    half = 1.959964 * np.sqrt(p * (1 - p) / len(ranks)) * 100.0
    width = found["R1_ci_high"] - found["R1_ci_low"]
    assert width == pytest.approx(2 * half, rel=0.1)
    assert found["R1_ci_low"] == pytest.approx(reference.low, abs=0.25 * half)
    assert found["R1_ci_high"] == pytest.approx(reference.high, abs=0.25 * half)


def test_paired_delta_uses_the_same_indices_for_both_rows():
    base = random_ranks(1, 50, seed=1)
    row = np.clip(np.concatenate([base, base]) - random_ranks(2, 50, candidates=3, seed=2), 0, None)
    found = paired_difference(row, base, BOOT)
    indices = resample_indices(50, BOOT.resamples, BOOT.seed)
    for name in NAMES:
        diffs = [loop_statistic(row, rows, name) - loop_statistic(base, rows, name) for rows in indices]
        low, high = loop_interval(diffs, BOOT.level)
        assert found[f"{name}_delta"] == pytest.approx(loop_statistic(row, np.arange(50), name)
                                                      - loop_statistic(base, np.arange(50), name))
        assert found[f"{name}_delta_ci_low"] == pytest.approx(low, abs=1e-9), name
        assert found[f"{name}_delta_ci_high"] == pytest.approx(high, abs=1e-9), name
    # a row identical to its baseline differs by exactly 0 in every resample
    same = paired_difference(base, base, BOOT)
    assert all(same[f"{name}_delta{part}"] == 0.0 for name in NAMES for part in ("", "_ci_low", "_ci_high"))


def test_unpaired_difference_resamples_each_sample_on_its_own():
    first, second = random_ranks(2, 30, seed=4), random_ranks(1, 45, seed=5)
    found = unpaired_difference(first, second, BOOT)
    a = resample_indices(30, BOOT.resamples, BOOT.seed)
    b = resample_indices(45, BOOT.resamples, BOOT.seed + 1)
    diffs = [loop_statistic(first, i, "R5") - loop_statistic(second, j, "R5") for i, j in zip(a, b)]
    low, high = loop_interval(diffs, BOOT.level)
    assert (found["R5_shift_ci_low"], found["R5_shift_ci_high"]) == pytest.approx((low, high), abs=1e-9)


def test_pooled_difference_is_stratified_by_run():
    rows = [random_ranks(2, 30, seed=10), random_ranks(2, 20, seed=11)]
    bases = [random_ranks(1, 30, seed=12), random_ranks(1, 20, seed=13)]
    found = stratified_paired_difference(rows, bases, BOOT)
    per_run = []
    for stratum, (row, base) in enumerate(zip(rows, bases)):
        indices = resample_indices(row.shape[1], BOOT.resamples, BOOT.seed + stratum)
        per_run.append([loop_statistic(row, i, "R1") - loop_statistic(base, i, "R1") for i in indices])
    pooled = (30 * np.array(per_run[0]) + 20 * np.array(per_run[1])) / 50
    assert (found["R1_delta_ci_low"], found["R1_delta_ci_high"]) == pytest.approx(
        loop_interval(pooled, BOOT.level), abs=1e-9)
    # R@1 pooled over runs = R@1 over the union of the runs' queries
    union_row = np.concatenate([(r < 1).mean(axis=0) for r in rows])
    union_base = np.concatenate([(b < 1).mean(axis=0) for b in bases])
    assert found["R1_delta"] == pytest.approx(100 * (union_row.mean() - union_base.mean()))


@pytest.mark.parametrize("caption_video", [list(range(8)), [0, 0, 1, 1, 1, 2, 3, 3, 4, 5, 5, 5]])
def test_cell_rows_give_every_row_a_ci_and_every_comparison_a_paired_delta(caption_video):
    cell = make_cell(caption_video, num_draws=2)
    metrics, _, ranks = cell_rows(cell, POST, chunk_size=3, faithful_msvd_grouping=False, bootstrap=BOOT)
    num_videos = max(caption_video) + 1
    for direction in DIRECTIONS:
        units = len(caption_video) if direction == "t2v" else num_videos  # caption or video is the query
        # t2v resamples videos with all their captions (cluster bootstrap); v2t resamples videos
        clusters = np.array(caption_video) if direction == "t2v" else None
        indices = (cluster_resamples(caption_video, BOOT.resamples, BOOT.seed) if direction == "t2v"
                   else resample_indices(num_videos, BOOT.resamples, BOOT.seed))
        for suffix, (_, reranked) in ROWS.items():
            prefix = direction + suffix
            assert ranks[prefix].shape == ((2 if reranked else 1), units)
            for name in NAMES:
                assert metrics[f"{prefix}/{name}_ci_low"] == pytest.approx(
                    loop_ci(ranks[prefix], BOOT, name, indices)[0])
                if suffix:
                    assert metrics[f"{prefix}/{name}_delta"] == pytest.approx(
                        metrics[f"{prefix}/{name}"] - metrics[f"{direction}/{name}"])
                    assert metrics[f"{prefix}/{name}_delta_ci_low"] <= metrics[f"{prefix}/{name}_delta_ci_high"]
                    separate = paired_difference(ranks[prefix], ranks[direction], BOOT, clusters=clusters)
                    assert metrics[f"{prefix}/{name}_delta_ci_high"] == separate[f"{name}_delta_ci_high"]
                else:
                    assert f"{prefix}/{name}_delta" not in metrics


def test_saved_ranks_round_trip_and_reproduce_the_intervals(tmp_path):
    cell = make_cell([0, 0, 1, 2, 2, 2, 3, 4, 5, 6], num_draws=3)
    metrics, _, ranks = cell_rows(cell, POST, chunk_size=4, faithful_msvd_grouping=False, bootstrap=BOOT)
    save_ranks(tmp_path / "ranks.npz", ranks, cell)
    with np.load(tmp_path / "ranks.npz") as stored:
        loaded = {key: stored[key] for key in stored.files}
    assert loaded["caption_video"].tolist() == cell.caption_video.tolist()
    for prefix, value in ranks.items():
        np.testing.assert_array_equal(loaded[prefix], value)
    # recompute a CI and a paired delta CI from the file alone, with loops
    row, base = loaded["t2v_rerank"], loaded["t2v"]
    indices = cluster_resamples(loaded["caption_video"], BOOT.resamples, BOOT.seed)  # videos with their captions
    assert metrics["t2v_rerank/MdR_ci_high"] == pytest.approx(loop_ci(row, BOOT, "MdR", indices)[1])
    diffs = [loop_statistic(row, i, "R1") - loop_statistic(base, i, "R1") for i in indices]
    assert metrics["t2v_rerank/R1_delta_ci_low"] == pytest.approx(loop_interval(diffs, BOOT.level)[0])
    assert metrics["t2v_rerank/R1"] == pytest.approx(np.mean([recall_metrics(d)["R1"] for d in row]))


def test_shift_metrics_label_paired_and_unpaired():
    ood = {"t2v": random_ranks(1, 12), "t2v_rerank": random_ranks(2, 12), "v2t": random_ranks(1, 6),
           "v2t_rerank": random_ranks(2, 6)}
    ind = {key: value[:, ::-1].copy() for key, value in ood.items()}
    one_each = np.arange(12)  # one caption per video: the cluster bootstrap is the plain one
    paired = shift_metrics(ood, ind, {"t2v": True, "v2t": True}, BOOT, one_each, one_each)
    unpaired = shift_metrics(ood, ind, {"t2v": False, "v2t": False}, BOOT, one_each, one_each)
    assert paired["bootstrap/shift_paired_t2v"] == 1.0 and unpaired["bootstrap/shift_paired_t2v"] == 0.0
    assert paired["t2v/R1_shift"] == pytest.approx(unpaired["t2v/R1_shift"])
    expected = paired_difference(ood["v2t_rerank"], ind["v2t_rerank"], BOOT)["MnR_delta_ci_low"]
    assert paired["v2t_rerank/MnR_shift_ci_low"] == expected
    assert unpaired["v2t_rerank/MnR_shift_ci_low"] == unpaired_difference(ood["v2t_rerank"], ind["v2t_rerank"],
                                                                          BOOT)["MnR_shift_ci_low"]


def test_interval_is_the_percentile_interval():
    samples = np.arange(101, dtype=np.float64)
    assert interval(samples, 0.9) == pytest.approx((5.0, 95.0))


@pytest.mark.parametrize("field, value", [("bootstrap_resamples", 1), ("ci_level", 1.0), ("ci_level", 0.0)])
def test_bad_bootstrap_params_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        EvalParams(**{field: value}).validate("eval")


def test_cluster_bootstrap_is_wider_than_the_query_bootstrap_when_captions_of_a_video_agree():
    """Five captions per video whose hits agree within a video: resampling captions alone would treat 5 x V
    correlated queries as independent; resampling videos gives the interval of V independent items."""
    rng = np.random.default_rng(0)
    video_hit = rng.random(200) < 0.3  # (V,) each video found by all or none of its captions
    caption_video = np.repeat(np.arange(200), 5)
    ranks = np.where(video_hit[caption_video], 0, 10)[None]  # (1, 1000)
    boot = Bootstrap(resamples=2000, seed=0, level=0.95)
    by_query = row_intervals(ranks, boot)
    by_video = row_intervals(ranks, boot, clusters=caption_video)
    width = lambda found: found["R1_ci_high"] - found["R1_ci_low"]
    p = video_hit.mean()
    normal = 2 * 1.96 * 100 * np.sqrt(p * (1 - p) / 200)  # V = 200 independent items
    assert width(by_video) == pytest.approx(normal, rel=0.12)
    assert width(by_query) == pytest.approx(normal / np.sqrt(5), rel=0.12)
