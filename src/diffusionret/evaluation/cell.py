"""Scoring of one evaluation cell (torch): a model trained on A, B's test set, every DDIM draw, the QB-Norm banks.

Matrices: stage-1 similarities, each query's top-k re-ranked once per draw (as the official evaluation,
seeds eval.seed + i), in both directions; t2v matrices are text rows (Q, V), v2t matrices video rows (V, Q).

QB-Norm querybank: a deterministic subsample of A's TRAINING split (captions for t2v, videos for v2t),
scored by the frozen stage-1 model against B's test gallery; never test queries. For the re-ranked rows
the bank is re-ranked by the same generator with the same seed as the test queries of that draw, so bank
and test scores come from the same scoring function.

OOD query detection (only when A != B): in-distribution queries are A's test captions (t2v) / videos (v2t),
OOD queries are B's, all scored by A's frozen head against A's test gallery (A's test videos / captions) and
re-ranked by A's generator with the same seeds as the cell's draws. That costs one extra re-ranking per
direction, side and draw (the cell's own draws run against B's gallery, so they cannot be reused).

Every score goes through `evaluation.scoring.score_queries`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from diffusionret.data.records import SplitAnnotations
from diffusionret.evaluation.names import DIRECTIONS, OOD_SIDES
from diffusionret.evaluation.ood import QueryEvidence
from diffusionret.evaluation.scoring import RerankSettings, Scores, score_queries
from diffusionret.features.cache import SplitFeatures
from diffusionret.method.diffusion import GaussianDiffusion
from diffusionret.model.denoiser import Generator
from diffusionret.model.extractor import FeatureExtractor


@dataclass
class OodEvidence:
    """ID (A's test queries) and OOD (B's test queries) evidence against A's test gallery, per direction."""

    evidence: dict[tuple[str, str], QueryEvidence]  # (direction, side) -> evidence; side in OOD_SIDES
    id_correct: np.ndarray  # (Q_A,) share of draws whose re-ranked t2v top-1 is the ID caption's video
    seconds: float  # wall time of the extra scoring and re-ranking
    # direction -> (stage-1 (rows, columns), re-ranked (n, rows, columns)) of A's test queries against A's test
    # gallery: the in-distribution cell's stage-1 and re-ranked rows, for the OOD-minus-ID differences
    id_scores: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    id_caption_video: np.ndarray | None = None  # (Q_A,) video of each of A's test captions
    same_queries: dict[str, bool] = field(default_factory=dict)  # direction -> A's and B's queries are the same items


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
    sentence: np.ndarray | None = None  # (Q, D) the test captions' sentence vectors (exact-tie counts)
    captions: tuple[str, ...] = ()  # (Q,) the test captions' texts

    @property
    def num_videos(self) -> int:
        return self.stage1.shape[1]


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


def _query_evidence(extractor: FeatureExtractor, generator: Generator, diffusion: GaussianDiffusion,
                    direction: str, queries: SplitFeatures, gallery: SplitFeatures, rerank: RerankSettings,
                    chunk_size: int) -> tuple[QueryEvidence, Scores]:
    """Stage-1 scores of `queries` against `gallery` (t2v: captions x videos, v2t: videos x captions), re-ranked
    with every seed; returns the evidence and the scores (one re-ranked matrix per draw)."""
    text, video = (queries.text, gallery.video) if direction == "t2v" else (gallery.text, queries.video)
    scores = score_queries(extractor.similarity, text, video, direction=direction, query_block=chunk_size,
                           generator=generator, diffusion=diffusion, rerank=rerank)
    similarity, results = scores.stage1, scores.draws
    topk = results[0].topk_indices  # (Q, k): set by stage 1 alone, identical in every draw
    evidence = QueryEvidence(
        similarity=similarity.numpy(), logit_scale=float(extractor.logit_scale.detach()),
        stage1_topk=similarity.gather(1, topk).numpy(),
        reranked_topk=torch.stack([result.scores.gather(1, topk) for result in results]).float().numpy(),
        probabilities=torch.stack([result.probabilities for result in results]).float().numpy())
    return evidence, scores


def top1_correct(draws: list[torch.Tensor], caption_video: np.ndarray) -> np.ndarray:
    """(Q,) share of draws whose top-1 of a (Q, V) row is the caption's video (ties pessimistic: a tie misses)."""
    target = torch.as_tensor(caption_video, dtype=torch.long)[:, None]  # (Q, 1)
    hits = []
    for scores in draws:
        truth = scores.gather(1, target)  # (Q, 1)
        beaten = (scores >= truth).sum(dim=1) > 1  # another candidate scores at least as high
        hits.append((~beaten).double())
    return torch.stack(hits).mean(dim=0).numpy()


def score_ood(extractor: FeatureExtractor, generator: Generator, diffusion: GaussianDiffusion,
              in_dist: SplitFeatures, shifted: SplitFeatures, rerank: RerankSettings, chunk_size: int) -> OodEvidence:
    """OOD-detection evidence: A's and B's test queries against A's test gallery, both directions."""
    start = time.perf_counter()
    evidence, id_correct, id_scores = {}, None, {}
    for direction in DIRECTIONS:
        for side, queries in zip(OOD_SIDES, (in_dist, shifted)):
            found, scores = _query_evidence(extractor, generator, diffusion, direction, queries, in_dist, rerank,
                                            chunk_size)
            evidence[(direction, side)] = found
            if side == "id":
                id_scores[direction] = (scores.stage1.numpy(), torch.stack(scores.reranked).float().numpy())
            if (direction, side) == ("t2v", "id"):
                id_correct = top1_correct(scores.reranked, np.asarray(in_dist.annotations.caption_video))
    return OodEvidence(evidence=evidence, id_correct=id_correct, seconds=time.perf_counter() - start,
                       id_scores=id_scores, id_caption_video=np.asarray(in_dist.annotations.caption_video),
                       same_queries=same_queries(in_dist.annotations, shifted.annotations))


def same_queries(first: SplitAnnotations, second: SplitAnnotations) -> dict[str, bool]:
    """Whether two test splits hold the same query items per direction (t2v: the same captions of the same videos;
    v2t: the same videos with the same captions), so that their rows can be compared paired."""
    identical = (first.video_ids == second.video_ids and first.captions == second.captions
                 and first.caption_video == second.caption_video)
    return {"t2v": identical, "v2t": identical}


def score_cell(extractor: FeatureExtractor, generator: Generator, diffusion: GaussianDiffusion,
               test: SplitFeatures, train: SplitFeatures, *, rerank: RerankSettings, chunk_size: int,
               bank_size: int, bank_seed: int, in_dist: SplitFeatures | None = None) -> CellScores:
    """Stage-1, re-ranked (every draw) and querybank matrices of one cell.

    test: B's test features (queries and gallery); train: A's training features (the querybank's source);
    in_dist: A's test features when A != B (OOD detection), else None.
    """
    bank_captions = bank_subsample(train.annotations.num_captions, bank_size, bank_seed)
    bank_videos = bank_subsample(train.annotations.num_videos, bank_size, bank_seed)
    bank_text = train.text[torch.as_tensor(bank_captions)]  # (Nb, L_A, D)
    bank_video = train.video[torch.as_tensor(bank_videos)]  # (Nv, T, D)
    score = dict(query_block=chunk_size, generator=generator, diffusion=diffusion, rerank=rerank)
    t2v = score_queries(extractor.similarity, test.text, test.video, direction="t2v", **score)  # (Q, V)
    v2t = score_queries(extractor.similarity, test.text, test.video, direction="v2t",
                        stage1=t2v.stage1.T.contiguous(), **score)  # (V, Q)
    bank_t2v = score_queries(extractor.similarity, bank_text, test.video, direction="t2v", **score)  # (Nb, V)
    bank_v2t = score_queries(extractor.similarity, test.text, bank_video, direction="v2t", **score)  # (Nv, Q)
    ood = None
    if in_dist is not None:  # A's own test split is the in-distribution side and the gallery
        ood = score_ood(extractor, generator, diffusion, in_dist, test, rerank, chunk_size)

    def stack(matrices: list[torch.Tensor]) -> np.ndarray:
        return torch.stack(matrices).float().numpy()

    return CellScores(ood=ood, stage1=t2v.stage1.numpy(), t2v_rerank=stack(t2v.reranked),
                      v2t_rerank=stack(v2t.reranked), bank_t2v=bank_t2v.stage1.numpy(),
                      bank_t2v_rerank=stack(bank_t2v.reranked), bank_v2t=bank_v2t.stage1.numpy(),
                      bank_v2t_rerank=stack(bank_v2t.reranked), bank_captions=bank_captions, bank_videos=bank_videos,
                      caption_video=np.asarray(test.annotations.caption_video, dtype=np.int64), seeds=rerank.seeds,
                      sentence=test.text.sentence.numpy(), captions=tuple(test.annotations.captions))
