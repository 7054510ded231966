"""Rows and metrics of one evaluation cell (numpy, pure): post-processing, R@K / MdR / MnR, OOD detection.

v2t is always post-processed on its own (V, Q) matrix with its own bank (training videos as queries), never
derived from a t2v-post-processed matrix (QB-Norm mixes normalised and raw rows). A metric of a re-ranked row is
the mean over DDIM draws; `<name>_std` is the sample standard deviation (ddof=1, only with several draws).
Stage-1 rows (and their post-processing) are deterministic and have no `_std`. Ties: the pessimistic convention
of `metrics` (DEFAULT_TIES) everywhere. Key names: `evaluation.names`.

OOD detection: `ood_detect/<score>/{auroc,aupr,fpr95,aurc}` for t2v and `ood_detect_v2t/<score>/{auroc,aupr,fpr95}`
for v2t, plus `ood_detect/aurc_random` (= the pooled full-coverage risk); AURC pools ID and OOD queries, an OOD
query never being right (its video is not in A's gallery), an ID query right for the share of draws whose
re-ranked top-1 is its video.

Uncertainty (`uncertainty`): with a bootstrap, every row gets `<name>_ci_low/_ci_high` (percentile bootstrap over
queries), every comparison row (re-ranked, QB-Norm, DSL, ...) its difference to the stage-1 row of the same
direction, `<name>_delta` with the paired `<name>_delta_ci_low/_ci_high`, and an OOD cell's stage-1 and re-ranked
rows their difference to the in-distribution cell's, `<name>_shift[_ci_low|_ci_high]`.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from diffusionret.config import PostprocessParams
from diffusionret.evaluation.cell import CellScores, OodEvidence
from diffusionret.evaluation.metrics import (DEFAULT_TIES, chance_metrics, faithful_msvd_groups, recall_metrics,
                                             t2v_metrics, t2v_ranks, v2t_metrics, v2t_ranks)
from diffusionret.evaluation.names import (DIRECTIONS, FAITHFUL_SUFFIX, HEADLINE_METRICS, OOD_PREFIXES, OOD_SIDES,
                                           RANK_METRICS, REPORTED_KS, ROWS, headline_keys, headline_rows,
                                           postprocess_of)
from diffusionret.evaluation.ood import aurc, compute_scores, detection_metrics
from diffusionret.evaluation.postprocess import dual_softmax, qb_norm
from diffusionret.evaluation.uncertainty import (DELTA, SHIFT, Bootstrap, compare_rows, paired_difference,
                                                 unpaired_difference)


def row_matrices(cell: CellScores, post: PostprocessParams, chunk_size: int
                 ) -> Iterator[tuple[str, list[np.ndarray]]]:
    """(prefix, one matrix per draw) for every row; t2v matrices are (Q, V), v2t matrices (V, Q).

    A generator, so a caller holds one row's matrices at a time (a 30k x 1k cell stays affordable).
    """
    sources = {  # direction -> (stage-1 matrix, bank, re-ranked draws, re-ranked banks)
        "t2v": (cell.stage1, cell.bank_t2v, cell.t2v_rerank, cell.bank_t2v_rerank),
        "v2t": (cell.stage1.T, cell.bank_v2t, cell.v2t_rerank, cell.bank_v2t_rerank),
    }
    for direction in DIRECTIONS:
        raw, bank, reranked, reranked_bank = sources[direction]
        qbnorm = dict(post.qbnorm_settings(direction), chunk_size=chunk_size)  # per-direction beta / theta
        for suffix, (postprocess, is_reranked) in ROWS.items():
            pairs = list(zip(reranked, reranked_bank)) if is_reranked else [(raw, bank)]
            if postprocess == "none":
                matrices = [scores for scores, _ in pairs]
            elif postprocess == "qbnorm":
                matrices = [qb_norm(scores, bank_scores, **qbnorm) for scores, bank_scores in pairs]
            else:
                matrices = [dual_softmax(scores, temperature=post.dsl_temperature) for scores, _ in pairs]
            yield direction + suffix, matrices


def curve_ks(num_candidates: int) -> tuple[int, ...]:
    """Every K from 1 to the number of candidates, plus the reported ones (R@50 on a 32-video gallery)."""
    return tuple(sorted(set(range(1, num_candidates + 1)) | set(REPORTED_KS)))


def matrix_metrics(prefix: str, scores: np.ndarray, caption_video: np.ndarray, *, chunk_size: int,
                   faithful_msvd_grouping: bool = False, ks: tuple[int, ...] = REPORTED_KS) -> dict[str, float]:
    """R@K (K in ks), MdR, MnR of one row's matrix; the direction is the prefix's first three letters."""
    common = dict(faithful_msvd_grouping=faithful_msvd_grouping, chunk_size=chunk_size, ties=DEFAULT_TIES, ks=ks)
    if prefix.startswith("t2v"):
        return t2v_metrics(scores, caption_video, **common)
    return v2t_metrics(scores, caption_video, orientation="video_rows", **common)


def aggregate_draws(per_draw: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over draws; `<name>_std` (sample std, ddof=1) when there are several draws."""
    if not per_draw:
        raise ValueError("aggregate_draws needs at least one draw")
    out = {}
    for name in per_draw[0]:
        values = np.array([draw[name] for draw in per_draw], dtype=np.float64)
        out[name] = float(values.mean())
        if len(values) > 1:
            out[f"{name}_std"] = float(values.std(ddof=1))
    return out


def faithful_v2t_defined(caption_video: np.ndarray, num_videos: int) -> bool:
    """The released grouping leaves every video a caption (false for one caption per video: group 0 empties)."""
    try:
        grouped = faithful_msvd_groups(caption_video).caption_video
    except ValueError:  # captions not contiguous per video: t2v under this grouping reports the error
        return False
    return bool((np.bincount(grouped[grouped >= 0], minlength=num_videos) > 0).all())


def matrix_ranks(prefix: str, scores: np.ndarray, caption_video: np.ndarray, *, chunk_size: int,
                 faithful_msvd_grouping: bool = False) -> np.ndarray:
    """Per-query 0-based ranks of one row's matrix: (Q captions,) for t2v, (V videos,) for v2t."""
    common = dict(faithful_msvd_grouping=faithful_msvd_grouping, chunk_size=chunk_size, ties=DEFAULT_TIES)
    if prefix.startswith("t2v"):
        return t2v_ranks(scores, caption_video, **common)
    return v2t_ranks(scores, caption_video, orientation="video_rows", **common)


def cell_metrics(cell: CellScores, post: PostprocessParams, *, chunk_size: int, faithful_msvd_grouping: bool
                 ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Flat metrics (`<prefix>/<name>`, `_std` over draws, `chance/...`) and R@K curves (n, K) per prefix.

    With `faithful_msvd_grouping`, every row is also scored under the released off-by-one grouping as
    `<prefix>_faithful/...` (v2t only where that grouping leaves each video a caption).
    """
    metrics, curves, _ = cell_rows(cell, post, chunk_size=chunk_size, faithful_msvd_grouping=faithful_msvd_grouping)
    return metrics, curves


def cell_rows(cell: CellScores, post: PostprocessParams, *, chunk_size: int, faithful_msvd_grouping: bool,
              bootstrap: Bootstrap | None = None
              ) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`cell_metrics` plus the per-query ranks of every row, prefix -> (draws, queries) int/float array; with
    `bootstrap`, every row's `<name>_ci_low/high` and every comparison row's paired `<name>_delta[_ci_low|_high]`
    against the stage-1 row of its direction (`uncertainty`)."""
    metrics: dict[str, float] = {}
    curves: dict[str, np.ndarray] = {}
    ranks: dict[str, np.ndarray] = {}
    ks = curve_ks(cell.num_videos)
    faithful_v2t = faithful_msvd_grouping and faithful_v2t_defined(cell.caption_video, cell.num_videos)
    for prefix, matrices in row_matrices(cell, post, chunk_size):
        per_draw, curve, row_ranks = [], [], []
        for scores in matrices:
            found = matrix_ranks(prefix, scores, cell.caption_video, chunk_size=chunk_size)
            full = recall_metrics(found, ks)
            row_ranks.append(found)
            per_draw.append({name: full[name] for name in RANK_METRICS})
            curve.append([full[f"R{k}"] for k in range(1, cell.num_videos + 1)])
        metrics.update({f"{prefix}/{name}": value for name, value in aggregate_draws(per_draw).items()})
        curves[prefix] = np.asarray(curve, dtype=np.float64)  # (n, V): R@1 .. R@V
        ranks[prefix] = np.stack(row_ranks)  # (n, Q) queries of the direction, one line per draw
        if faithful_msvd_grouping and (prefix.startswith("t2v") or faithful_v2t):
            faithful = [matrix_ranks(prefix, scores, cell.caption_video, chunk_size=chunk_size,
                                     faithful_msvd_grouping=True) for scores in matrices]
            metrics.update({f"{prefix}{FAITHFUL_SUFFIX}/{name}": value
                            for name, value in aggregate_draws([recall_metrics(r) for r in faithful]).items()})
            ranks[prefix + FAITHFUL_SUFFIX] = np.stack(faithful)
    metrics.update({f"chance/{name}": value for name, value in chance_metrics(cell.num_videos).items()})
    if bootstrap is not None:
        metrics.update(uncertainty_metrics(ranks, bootstrap, cell.caption_video))
    return metrics, curves, ranks


def baseline_prefix(prefix: str) -> str:
    """The stage-1 row a row is compared with: same direction and grouping (`t2v_rerank_qbnorm` -> `t2v`)."""
    return prefix[:3] + (FAITHFUL_SUFFIX if prefix.endswith(FAITHFUL_SUFFIX) else "")


def query_clusters(prefix: str, caption_video: np.ndarray) -> np.ndarray | None:
    """What a bootstrap resamples whole for a row: t2v captions by their video (`uncertainty`), v2t videos alone."""
    return np.asarray(caption_video) if prefix.startswith("t2v") else None


def uncertainty_metrics(ranks: dict[str, np.ndarray], bootstrap: Bootstrap, caption_video: np.ndarray
                        ) -> dict[str, float]:
    """Every row's CIs and every comparison row's paired delta to its stage-1 row, plus `bootstrap/...` settings;
    t2v rows resample videos with all their captions (a cluster bootstrap), v2t rows videos."""
    out = {"bootstrap/resamples": float(bootstrap.resamples), "bootstrap/seed": float(bootstrap.seed),
           "bootstrap/level": float(bootstrap.level), "bootstrap/clustered_by_video": 1.0}
    baselines = {prefix: baseline_prefix(prefix) for prefix in ranks if baseline_prefix(prefix) != prefix}
    clusters = {prefix: found for prefix in ranks if (found := query_clusters(prefix, caption_video)) is not None}
    for prefix, found in compare_rows(ranks, baselines, bootstrap, clusters=clusters).items():
        out.update({f"{prefix}/{name}": value for name, value in found.items()})
    return out


def id_ranks(ood: OodEvidence, chunk_size: int) -> dict[str, np.ndarray]:
    """Per-query ranks of the in-distribution cell's stage-1 and re-ranked rows, from the OOD evidence (A's test
    queries against A's test gallery, the same seeds): prefix -> (draws, queries)."""
    out = {}
    for direction in DIRECTIONS:
        stage1, reranked = ood.id_scores[direction]
        out[direction] = matrix_ranks(direction, stage1, ood.id_caption_video, chunk_size=chunk_size)[None]
        out[direction + "_rerank"] = np.stack([matrix_ranks(direction, scores, ood.id_caption_video,
                                                            chunk_size=chunk_size) for scores in reranked])
    return out


def shift_metrics(ranks: dict[str, np.ndarray], in_dist: dict[str, np.ndarray], same_queries: dict[str, bool],
                  bootstrap: Bootstrap, caption_video: np.ndarray, id_caption_video: np.ndarray
                  ) -> dict[str, float]:
    """An OOD cell's stage-1 and re-ranked rows minus the in-distribution cell's same rows: `<prefix>/<name>_shift`
    with its CI, paired when both cells' queries of a direction are the same items (`bootstrap/shift_paired_<dir>`
    = 1), else an independent two-sample bootstrap (= 0)."""
    out = {}
    for direction in DIRECTIONS:
        paired = same_queries[direction]
        out[f"bootstrap/shift_paired_{direction}"] = float(paired)
        for prefix in (direction, direction + "_rerank"):
            clusters = query_clusters(prefix, caption_video)
            if paired:
                found = {name.replace(DELTA, SHIFT): value for name, value in paired_difference(
                    ranks[prefix], in_dist[prefix], bootstrap, clusters=clusters).items()}
            else:
                found = unpaired_difference(ranks[prefix], in_dist[prefix], bootstrap, clusters=clusters,
                                            baseline_clusters=query_clusters(prefix, id_caption_video))
            out.update({f"{prefix}/{name}": value for name, value in found.items()})
    return out


def ood_metrics(ood: OodEvidence) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Detection metrics of every score (both directions) and t2v AURC; plus the per-query scores to store."""
    metrics: dict[str, float] = {}
    stored: dict[str, np.ndarray] = {}
    for direction, prefix in OOD_PREFIXES.items():
        sides = {side: compute_scores(ood.evidence[(direction, side)]) for side in OOD_SIDES}
        for name in sides["id"]:
            for metric, value in detection_metrics(sides["id"][name], sides["ood"][name]).items():
                metrics[f"{prefix}/{name}/{metric}"] = value
            for side in OOD_SIDES:
                stored[f"ood__{direction}__{side}__{name}"] = sides[side][name]
        if direction == "t2v":  # selective retrieval: pooled queries, an OOD query is never right
            correct = np.concatenate([ood.id_correct, np.zeros(len(next(iter(sides["ood"].values()))))])
            for name in sides["id"]:
                metrics[f"{prefix}/{name}/aurc"] = aurc(np.concatenate([sides["id"][name], sides["ood"][name]]),
                                                        correct)
            metrics[f"{prefix}/aurc_random"] = float(1.0 - correct.mean())
    stored["ood__t2v__id_correct"] = ood.id_correct
    return metrics, stored


def metrics_of_postprocess(metrics: dict[str, float], postprocess: str) -> dict[str, float]:
    """The metrics.json entries one MLflow child run holds: rows of this post-processing (cell-wide and OOD-detection
    keys go with "none"). Still keyed as in metrics.json; `names.run_metric_name` gives the run's names."""
    return {key: value for key, value in metrics.items() if postprocess_of(key) == postprocess}


def headline_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The headline subset: R@1/5/10, MdR, MnR of stage 1 and re-ranked rows, both directions (flat keys)."""
    return {key: metrics[key] for key in headline_keys()}


def headline_files(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """The headline as the DVC metric files hold it: row (t2v, t2v_rerank, v2t, v2t_rerank) -> {R1: ..., MnR: ...}."""
    return {row: {name: metrics[f"{row}/{name}"] for name in HEADLINE_METRICS} for row in headline_rows()}
