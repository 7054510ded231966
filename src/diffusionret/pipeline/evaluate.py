"""`evaluate` stage: a model trained on A scored on B's test set (one cell of the OOD grid).

Rows of the report, each under its own metric prefix (t2v/... text rows (Q, V); v2t/... video rows (V, Q)):
  t2v, v2t                          stage-1 similarities (reference §7 step 3)
  t2v_rerank, v2t_rerank            + diffusion re-ranking of each query's top-k (§7 steps 4-5)
  t2v_qbnorm, t2v_rerank_qbnorm     + QB-Norm (§11) of the stage-1 / re-ranked scores
  t2v_dsl, t2v_rerank_dsl           + dual softmax over the test queries (transductive)
v2t is always post-processed on its own (V, Q) matrix with its own bank (training videos as queries),
never derived from a t2v-post-processed matrix (QB-Norm mixes normalised and raw rows).

QB-Norm querybank: a deterministic subsample of A's TRAINING split (captions for t2v, videos for v2t),
scored by the frozen stage-1 model against B's test gallery; never test queries. For the re-ranked rows
the bank is re-ranked by the same generator with the same seed as the test queries of that draw, so bank
and test scores come from the same scoring function.

Stochastic sampling: `eval.num_samples` DDIM draws per query with seeds eval.seed + i. A metric of a
re-ranked row is the mean over draws; `<name>_std` is the sample standard deviation (ddof=1, only when
num_samples > 1). Stage-1 rows (and their post-processing) are deterministic and have no `_std`.
Ties: the pessimistic convention of `metrics` (DEFAULT_TIES) everywhere.

Outputs in eval/<A>__<B>/: metrics.json (flat names, identical in MLflow), scores.npz (stage-1, re-ranked
and bank matrices: every post-processed row can be recomputed from them), curves.npz (R@K for every K,
per row and draw, for the report's plots), cell.json (what was evaluated, how, and the MLflow run ids).
MLflow: one child run per (cell, postprocess) under A's stage-1 run, tagged eval_benchmark, ood,
postprocess (none | qbnorm | dsl), transductive, selection.

OOD query detection (only when A != B; `diffusionret.ood`): in-distribution queries are A's test captions
(t2v) / videos (v2t), OOD queries are B's, all scored by A's frozen head against A's test gallery (A's test
videos / captions) and re-ranked by A's generator with the same seeds as the cell's draws. That costs one
extra re-ranking per direction, side and draw (the cell's own draws run against B's gallery, so they cannot
be reused). Metrics: `ood_detect/<score>/{auroc,aupr,fpr95,aurc}` for t2v and
`ood_detect_v2t/<score>/{auroc,aupr,fpr95}` for v2t, plus `ood_detect/aurc_random` (= the pooled
full-coverage risk); AURC pools ID and OOD queries, an OOD query never being right (its video is not in A's
gallery), an ID query right for the share of draws whose re-ranked top-1 is its video. They go to
metrics.json and the postprocess=none child run; the per-query scores go to scores.npz
(`ood__<direction>__<id|ood>__<score>`, `ood__t2v__id_correct`) for the report's histograms.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from diffusionret import tracking
from diffusionret.config import Params, PostprocessParams, flatten
from diffusionret.diffusion import create_diffusion
from diffusionret.features import SplitFeatures, load_split_features
from diffusionret.metrics import (DEFAULT_KS, DEFAULT_TIES, chance_metrics, faithful_msvd_groups, t2v_metrics,
                                  v2t_metrics)
from diffusionret.model.checkpoint import load_extractor, load_generator
from diffusionret.model.extractor import TextFeatures, VideoFeatures
from diffusionret.ood import QueryEvidence, aurc, compute_scores, detection_metrics
from diffusionret.pipeline.paths import Paths
from diffusionret.postprocess import dual_softmax, qb_norm
from diffusionret.rerank import rerank_t2v, rerank_v2t

DIRECTIONS = ("t2v", "v2t")
# row suffix -> (post-processing, re-ranked?); the report's row order
ROWS = {"": ("none", False), "_rerank": ("none", True), "_qbnorm": ("qbnorm", False),
        "_rerank_qbnorm": ("qbnorm", True), "_dsl": ("dsl", False), "_rerank_dsl": ("dsl", True)}
POSTPROCESSES = ("none", "qbnorm", "dsl")
FAITHFUL_SUFFIX = "_faithful"
REPORTED_KS = DEFAULT_KS
# the eval.* keys this stage reads (dvc.yaml declares the same list; not benchmarks / batch_size)
OOD_PREFIXES = {"t2v": "ood_detect", "v2t": "ood_detect_v2t"}  # metric prefix of each direction's detection
OOD_SIDES = ("id", "ood")
EVAL_KEYS = ("rerank_k", "rerank_temperature", "rerank_alpha", "rerank_query_batch", "seed", "chunk_size",
             "num_samples", "faithful_msvd_grouping", "selection")


@dataclass
class OodEvidence:
    """ID (A's test queries) and OOD (B's test queries) evidence against A's test gallery, per direction."""

    evidence: dict[tuple[str, str], QueryEvidence]  # (direction, side) -> evidence; side in OOD_SIDES
    id_correct: np.ndarray  # (Q_A,) share of draws whose re-ranked t2v top-1 is the ID caption's video
    seconds: float  # wall time of the extra scoring and re-ranking


@dataclass
class CellScores:
    """Every score matrix of one cell; rerank/bank stacks hold one matrix per DDIM draw."""

    stage1: np.ndarray  # (Q, V) stage-1 similarity, text rows
    t2v_rerank: np.ndarray  # (n, Q, V) after t2v re-ranking
    v2t_rerank: np.ndarray  # (n, V, Q) after v2t re-ranking, video rows
    bank_t2v: np.ndarray  # (Nb, V) A's training captions x B's test videos, stage 1
    bank_t2v_rerank: np.ndarray  # (n, Nb, V) the same bank re-ranked with each draw's seed
    bank_v2t: np.ndarray  # (Nv, Q) A's training videos x B's test captions, stage 1
    bank_v2t_rerank: np.ndarray  # (n, Nv, Q)
    bank_captions: np.ndarray  # (Nb,) rows of A's training captions in the t2v bank
    bank_videos: np.ndarray  # (Nv,) rows of A's training videos in the v2t bank
    caption_video: np.ndarray  # (Q,) gallery index of each test caption's video
    seeds: tuple[int, ...]  # DDIM seed of each draw
    ood: OodEvidence | None = None  # OOD-detection evidence, only when trained != evaluated

    @property
    def num_videos(self) -> int:
        return self.stage1.shape[1]


# ---------------------------------------------------------------------------------------------------
# Scoring (torch): stage 1, re-ranking, banks
# ---------------------------------------------------------------------------------------------------


def draw_seeds(seed: int, num_samples: int) -> tuple[int, ...]:
    """DDIM seed of each draw: seed, seed + 1, ..."""
    return tuple(seed + i for i in range(num_samples))


def bank_subsample(num_items: int, size: int, seed: int) -> np.ndarray:
    """Sorted rows of a deterministic subsample of `size` of `num_items` training queries (all if fewer)."""
    if num_items < 1:
        raise ValueError("the querybank needs training queries, but the trained benchmark's training split is "
                         "empty; QB-Norm can only be evaluated for a model trained on a split with queries")
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(num_items)[:size])


def check_selection(selection: str, trained: str, metadata: dict[str, dict]) -> None:
    """Refuse to label results with a selection protocol the checkpoints were not selected with."""
    for stage, meta in metadata.items():
        used = meta.get("selected", {}).get("split")
        if used != selection:
            raise ValueError(
                f"models/{trained}/{stage} was selected on split {used!r} but eval.selection is {selection!r}; "
                f"re-run train_disc@{trained} and train_gen@{trained} with eval.selection={selection} "
                f"(or set eval.selection back to {used!r})")


def _similarity(extractor, text: TextFeatures, video: VideoFeatures, chunk_size: int) -> torch.Tensor:
    """Stage-1 similarity (C, V) computed `chunk_size` text rows at a time."""
    rows = []
    for start in range(0, text.sentence.shape[0], chunk_size):
        part = slice(start, start + chunk_size)
        rows.append(extractor.similarity(TextFeatures(tokens=text.tokens[part], mask=text.mask[part],
                                                      sentence=text.sentence[part]), video).float())
    return torch.cat(rows)


def _query_evidence(extractor, generator, diffusion, direction: str, queries: SplitFeatures,
                    gallery: SplitFeatures, settings, seeds: tuple[int, ...]) -> tuple[QueryEvidence, list[torch.Tensor]]:
    """Stage-1 scores of `queries` against `gallery` (t2v: captions x videos, v2t: videos x captions), re-ranked
    with every seed; returns the evidence and the re-ranked matrices (one per draw)."""
    common = dict(temperature=settings.rerank_temperature, alpha=settings.rerank_alpha,
                  query_batch=settings.rerank_query_batch)
    if direction == "t2v":
        similarity = _similarity(extractor, queries.text, gallery.video, settings.chunk_size)  # (Q, V)
        k = min(settings.rerank_k, similarity.shape[1])
        results = [rerank_t2v(similarity, queries.text.sentence, gallery.video.frames, gallery.video.mask,
                              generator.t2v, diffusion, k=k, seed=seed, **common) for seed in seeds]
    else:
        similarity = _similarity(extractor, gallery.text, queries.video, settings.chunk_size).T.contiguous()  # (V, C)
        k = min(settings.rerank_k, similarity.shape[1])
        results = [rerank_v2t(similarity, queries.video.frames, queries.video.mask, gallery.text.sentence,
                              generator.v2t, diffusion, k=k, seed=seed, **common) for seed in seeds]
    topk = results[0].topk_indices  # (Q, k): set by stage 1 alone, identical in every draw
    evidence = QueryEvidence(
        similarity=similarity.numpy(), logit_scale=float(extractor.logit_scale.detach()),
        stage1_topk=similarity.gather(1, topk).numpy(),
        reranked_topk=torch.stack([result.scores.gather(1, topk) for result in results]).float().numpy(),
        probabilities=torch.stack([result.probabilities for result in results]).float().numpy())
    return evidence, [result.scores for result in results]


def top1_correct(draws: list[torch.Tensor], caption_video: np.ndarray) -> np.ndarray:
    """(Q,) share of draws whose top-1 of a (Q, V) row is the caption's video (ties pessimistic: a tie misses)."""
    target = torch.as_tensor(caption_video, dtype=torch.long)[:, None]  # (Q, 1)
    hits = []
    for scores in draws:
        truth = scores.gather(1, target)  # (Q, 1)
        beaten = (scores >= truth).sum(dim=1) > 1  # another candidate scores at least as high
        hits.append((~beaten).double())
    return torch.stack(hits).mean(dim=0).numpy()


def score_ood(extractor, generator, diffusion, in_dist: SplitFeatures, shifted: SplitFeatures, settings,
              seeds: tuple[int, ...]) -> OodEvidence:
    """OOD-detection evidence: A's and B's test queries against A's test gallery, both directions."""
    import time

    start = time.perf_counter()
    evidence, id_correct = {}, None
    with torch.no_grad():
        for direction in DIRECTIONS:
            for side, queries in zip(OOD_SIDES, (in_dist, shifted)):
                found, draws = _query_evidence(extractor, generator, diffusion, direction, queries, in_dist,
                                               settings, seeds)
                evidence[(direction, side)] = found
                if (direction, side) == ("t2v", "id"):
                    id_correct = top1_correct(draws, np.asarray(in_dist.annotations.caption_video))
    return OodEvidence(evidence=evidence, id_correct=id_correct, seconds=time.perf_counter() - start)


def score_cell(trained: str, evaluated: str, params: Params, paths: Paths) -> CellScores:
    """Stage-1, re-ranked (every draw) and querybank matrices of one (trained, evaluated) cell."""
    test = load_split_features(paths.features(trained, evaluated), "test")
    train = load_split_features(paths.features(trained, trained), "train")  # the querybank's source
    extractor, disc_meta = load_extractor(paths.disc_model(trained))
    generator, gen_meta = load_generator(paths.gen_model(trained))
    settings, post = params.eval, params.postprocess
    check_selection(settings.selection, trained, {"disc": disc_meta, "gen": gen_meta})
    trained_with = gen_meta["diffusion"]
    if (trained_with["steps"], trained_with["schedule"]) != (params.diffusion.steps, params.diffusion.schedule):
        raise ValueError(f"the generator of `{trained}` was trained with diffusion {trained_with} but params ask "
                         f"for steps={params.diffusion.steps}, schedule={params.diffusion.schedule}; evaluate "
                         f"with the training values or re-run train_gen")
    diffusion = create_diffusion(params.diffusion.steps, params.diffusion.schedule)
    bank_captions = bank_subsample(train.annotations.num_captions, post.qbnorm_bank_size, post.qbnorm_bank_seed)
    bank_videos = bank_subsample(train.annotations.num_videos, post.qbnorm_bank_size, post.qbnorm_bank_seed)
    bank_text = TextFeatures(tokens=train.text.tokens[bank_captions], mask=train.text.mask[bank_captions],
                             sentence=train.text.sentence[bank_captions])  # (Nb, L_A, D)
    bank_video = VideoFeatures(frames=train.video.frames[bank_videos], mask=train.video.mask[bank_videos])
    seeds = draw_seeds(settings.seed, settings.num_samples)
    common = dict(temperature=settings.rerank_temperature, alpha=settings.rerank_alpha,
                  query_batch=settings.rerank_query_batch)
    with torch.no_grad():
        stage1 = _similarity(extractor, test.text, test.video, settings.chunk_size)  # (Q, V)
        bank_t2v = _similarity(extractor, bank_text, test.video, settings.chunk_size)  # (Nb, V)
        bank_v2t = _similarity(extractor, test.text, bank_video, settings.chunk_size).T.contiguous()  # (Nv, Q)
        k_t2v, k_v2t = min(settings.rerank_k, stage1.shape[1]), min(settings.rerank_k, stage1.shape[0])
        t2v, v2t, bank_t2v_rr, bank_v2t_rr = [], [], [], []
        for seed in seeds:
            t2v.append(rerank_t2v(stage1, test.text.sentence, test.video.frames, test.video.mask, generator.t2v,
                                  diffusion, k=k_t2v, seed=seed, **common).scores)
            v2t.append(rerank_v2t(stage1.T.contiguous(), test.video.frames, test.video.mask, test.text.sentence,
                                  generator.v2t, diffusion, k=k_v2t, seed=seed, **common).scores)
            bank_t2v_rr.append(rerank_t2v(bank_t2v, bank_text.sentence, test.video.frames, test.video.mask,
                                          generator.t2v, diffusion, k=k_t2v, seed=seed, **common).scores)
            bank_v2t_rr.append(rerank_v2t(bank_v2t, bank_video.frames, bank_video.mask, test.text.sentence,
                                          generator.v2t, diffusion, k=k_v2t, seed=seed, **common).scores)

    ood = None
    if trained != evaluated:  # A's own test split is the in-distribution side and the gallery
        in_dist = load_split_features(paths.features(trained, trained), "test")
        ood = score_ood(extractor, generator, diffusion, in_dist, test, settings, seeds)

    def stack(matrices: list[torch.Tensor]) -> np.ndarray:
        return torch.stack(matrices).float().numpy()

    return CellScores(ood=ood, stage1=stage1.numpy(), t2v_rerank=stack(t2v), v2t_rerank=stack(v2t),
                      bank_t2v=bank_t2v.numpy(), bank_t2v_rerank=stack(bank_t2v_rr), bank_v2t=bank_v2t.numpy(),
                      bank_v2t_rerank=stack(bank_v2t_rr), bank_captions=bank_captions, bank_videos=bank_videos,
                      caption_video=np.asarray(test.annotations.caption_video, dtype=np.int64), seeds=seeds)


# ---------------------------------------------------------------------------------------------------
# Rows and metrics (numpy, pure)
# ---------------------------------------------------------------------------------------------------


def row_matrices(cell: CellScores, post: PostprocessParams, chunk_size: int
                 ) -> Iterator[tuple[str, list[np.ndarray]]]:
    """(prefix, one matrix per draw) for every row; t2v matrices are (Q, V), v2t matrices (V, Q).

    A generator, so a caller holds one row's matrices at a time (a 30k x 1k cell stays affordable).
    """
    qbnorm = dict(beta=post.qbnorm_beta, k=post.qbnorm_k, min_count=post.qbnorm_min_count, chunk_size=chunk_size)
    sources = {  # direction -> (stage-1 matrix, bank, re-ranked draws, re-ranked banks)
        "t2v": (cell.stage1, cell.bank_t2v, cell.t2v_rerank, cell.bank_t2v_rerank),
        "v2t": (cell.stage1.T, cell.bank_v2t, cell.v2t_rerank, cell.bank_v2t_rerank),
    }
    for direction in DIRECTIONS:
        raw, bank, reranked, reranked_bank = sources[direction]
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


def cell_metrics(cell: CellScores, post: PostprocessParams, *, chunk_size: int, faithful_msvd_grouping: bool
                 ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Flat metrics (`<prefix>/<name>`, `_std` over draws, `chance/...`) and R@K curves (n, K) per prefix.

    With `faithful_msvd_grouping`, every row is also scored under the released off-by-one grouping as
    `<prefix>_faithful/...` (v2t only where that grouping leaves each video a caption).
    """
    metrics: dict[str, float] = {}
    curves: dict[str, np.ndarray] = {}
    ks = curve_ks(cell.num_videos)
    faithful_v2t = faithful_msvd_grouping and faithful_v2t_defined(cell.caption_video, cell.num_videos)
    for prefix, matrices in row_matrices(cell, post, chunk_size):
        per_draw, curve = [], []
        for scores in matrices:
            full = matrix_metrics(prefix, scores, cell.caption_video, chunk_size=chunk_size, ks=ks)
            per_draw.append({name: full[name] for name in [f"R{k}" for k in REPORTED_KS] + ["MdR", "MnR"]})
            curve.append([full[f"R{k}"] for k in range(1, cell.num_videos + 1)])
        metrics.update({f"{prefix}/{name}": value for name, value in aggregate_draws(per_draw).items()})
        curves[prefix] = np.asarray(curve, dtype=np.float64)  # (n, V): R@1 .. R@V
        if faithful_msvd_grouping and (prefix.startswith("t2v") or faithful_v2t):
            faithful = [matrix_metrics(prefix, scores, cell.caption_video, chunk_size=chunk_size,
                                       faithful_msvd_grouping=True) for scores in matrices]
            metrics.update({f"{prefix}{FAITHFUL_SUFFIX}/{name}": value
                            for name, value in aggregate_draws(faithful).items()})
    metrics.update({f"chance/{name}": value for name, value in chance_metrics(cell.num_videos).items()})
    return metrics, curves


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
    """The metrics one MLflow child run holds: those whose prefix has this post-processing."""
    wanted = {direction + suffix for direction in DIRECTIONS for suffix, (name, _) in ROWS.items()
              if name == postprocess}
    out = {}
    for key, value in metrics.items():
        prefix = key.split("/", 1)[0].removesuffix(FAITHFUL_SUFFIX)
        if prefix in wanted or (postprocess == "none" and prefix in ("chance", "protocol", *OOD_PREFIXES.values())):
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------------


def evaluate_cell(trained: str, evaluated: str, params: Params, paths: Paths, repo_root: Path) -> dict:
    """Score, write metrics.json / scores.npz / curves.npz / cell.json, and log the MLflow child runs."""
    settings, post = params.eval, params.postprocess
    cell = score_cell(trained, evaluated, params, paths)
    metrics, curves = cell_metrics(cell, post, chunk_size=settings.chunk_size,
                                   faithful_msvd_grouping=settings.faithful_msvd_grouping)
    metrics["protocol/selected_on_test"] = float(settings.selection == "test")
    ood_stored: dict[str, np.ndarray] = {}
    if cell.ood is not None:
        found, ood_stored = ood_metrics(cell.ood)
        metrics.update(found)
    out_dir = paths.evaluation(trained, evaluated)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / "scores.npz", stage1=cell.stage1, t2v_rerank=cell.t2v_rerank,
                        v2t_rerank=cell.v2t_rerank, bank_t2v=cell.bank_t2v, bank_t2v_rerank=cell.bank_t2v_rerank,
                        bank_v2t=cell.bank_v2t, bank_v2t_rerank=cell.bank_v2t_rerank,
                        bank_captions=cell.bank_captions, bank_videos=cell.bank_videos,
                        caption_video=cell.caption_video, seeds=np.asarray(cell.seeds), **ood_stored)
    np.savez_compressed(out_dir / "curves.npz", **curves)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    parent = tracking.read_run_reference(paths.disc_model(trained) / "mlflow_run.json")
    ood = trained != evaluated
    description = {
        "trained": trained, "evaluated": evaluated, "ood": ood, "source": params.benchmark(evaluated).source,
        "selection": settings.selection, "num_samples": settings.num_samples, "seeds": list(cell.seeds),
        "ties": DEFAULT_TIES, "faithful_msvd_grouping": settings.faithful_msvd_grouping,
        "faithful_v2t": settings.faithful_msvd_grouping and faithful_v2t_defined(cell.caption_video, cell.num_videos),
        "num_queries": int(cell.stage1.shape[0]), "num_videos": cell.num_videos,
        "bank": {"captions": int(len(cell.bank_captions)), "videos": int(len(cell.bank_videos)),
                 "source": f"{trained}/train"},
        "postprocess": flatten(post), "rerank": {"k": settings.rerank_k, "temperature": settings.rerank_temperature,
                                                 "alpha": settings.rerank_alpha},
        "diffusion": flatten(params.diffusion), "parent_run": parent, "mlflow_runs": {},
        "ood_detect": None if cell.ood is None else {
            "seconds": round(cell.ood.seconds, 2), "gallery": f"{trained}/test",
            "id_queries": f"{trained}/test", "ood_queries": f"{evaluated}/test",
            "draws": len(cell.seeds), "scores": sorted({key.split("/")[1] for key in metrics
                                                        if key.startswith("ood_detect/") and key.count("/") == 2})},
    }
    tracking.configure(params.tracking.tracking_uri, params.tracking.artifact_root, repo_root)
    description["mlflow_parent"] = nest_under = tracking.evaluation_parent(parent)  # own group if evaluation-only
    for postprocess in POSTPROCESSES:
        tags = {"stage": "evaluate", "train_benchmark": trained, "eval_benchmark": evaluated,
                "ood": str(ood).lower(), "postprocess": postprocess,
                "transductive": str(postprocess == "dsl").lower(), "selection": settings.selection,
                "protocol": "official: checkpoints selected on test" if settings.selection == "test"
                else "checkpoints selected on val", "num_samples": settings.num_samples,
                "faithful_msvd_grouping": str(settings.faithful_msvd_grouping).lower(), "split": "test",
                "dvc_stage": f"evaluate@{trained}-{evaluated}", "git_commit": tracking.git_commit(repo_root)}
        with tracking.start_run(experiment=parent["experiment"], tags=tags, parent_run_id=nest_under,
                                run_name=f"eval {trained} -> {evaluated} [{postprocess}]"):
            tracking.log_params({**{f"eval.{key}": value for key, value in flatten(settings).items()
                                    if key in EVAL_KEYS},
                                 **{f"postprocess.{key}": value for key, value in flatten(post).items()},
                                 "bank.captions": len(cell.bank_captions), "bank.videos": len(cell.bank_videos)})
            tracking.log_metrics(metrics_of_postprocess(metrics, postprocess))
            description["mlflow_runs"][postprocess] = tracking.active_run_id()
            if postprocess == "none":
                tracking.log_artifacts([out_dir / "metrics.json"])
    (out_dir / "cell.json").write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    return metrics
