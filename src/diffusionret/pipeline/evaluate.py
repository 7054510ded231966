"""`evaluate` stage: a model trained on A scored on B's test set, stage 1 and after diffusion re-ranking.

Reads the cached features (never runs CLIP), writes eval/<A>__<B>/metrics.json (DVC metrics) and
scores.npz (stage-1 matrix, both re-ranked matrices, ids), and logs an MLflow child run under A's stage-1
run tagged `eval_benchmark`, `ood` and `postprocess`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diffusionret import tracking
from diffusionret.config import Params
from diffusionret.diffusion import create_diffusion
from diffusionret.features import load_split_features
from diffusionret.metrics import chance_metrics, flatten_metrics, retrieval_metrics
from diffusionret.model.checkpoint import load_extractor, load_generator
from diffusionret.pipeline.paths import Paths
from diffusionret.rerank import rerank_t2v, rerank_v2t


def score_test_set(trained: str, evaluated: str, params: Params, paths: Paths) -> dict:
    """All score matrices of one (trained, evaluated) cell, plus ids."""
    features = load_split_features(paths.features(trained, evaluated), "test")
    extractor, _ = load_extractor(paths.disc_model(trained))
    generator, gen_meta = load_generator(paths.gen_model(trained))
    trained_with = gen_meta["diffusion"]
    if (trained_with["steps"], trained_with["schedule"]) != (params.diffusion.steps, params.diffusion.schedule):
        raise ValueError(f"the generator of `{trained}` was trained with diffusion {trained_with} but params ask "
                         f"for steps={params.diffusion.steps}, schedule={params.diffusion.schedule}; evaluate "
                         f"with the training values or re-run train_gen")
    diffusion = create_diffusion(params.diffusion.steps, params.diffusion.schedule)
    settings = params.eval
    with torch.no_grad():
        stage1 = extractor.similarity(features.text, features.video)  # (Q, V)
        k_t2v, k_v2t = min(settings.rerank_k, stage1.shape[1]), min(settings.rerank_k, stage1.shape[0])
        t2v = rerank_t2v(stage1, features.text.sentence, features.video.frames, features.video.mask,
                         generator.t2v, diffusion, k=k_t2v, temperature=settings.rerank_temperature,
                         alpha=settings.rerank_alpha, seed=settings.seed, query_batch=settings.rerank_query_batch)
        v2t = rerank_v2t(stage1.T.contiguous(), features.video.frames, features.video.mask,
                         features.text.sentence, generator.v2t, diffusion, k=k_v2t,
                         temperature=settings.rerank_temperature, alpha=settings.rerank_alpha,
                         seed=settings.seed, query_batch=settings.rerank_query_batch)
    return {"stage1": stage1.float().numpy(), "t2v_rerank": t2v.scores.float().numpy(),
            "v2t_rerank": v2t.scores.float().numpy(),  # (V, Q): rows are video queries
            "caption_video": np.asarray(features.annotations.caption_video),
            "video_ids": np.asarray(features.annotations.video_ids),
            "captions": np.asarray(features.annotations.captions)}


def cell_metrics(scores: dict, chunk_size: int) -> dict[str, float]:
    """Flat metric names: t2v/..., v2t/... (stage 1) and t2v_rerank/..., v2t_rerank/..., chance/..."""
    caption_video = scores["caption_video"]
    stage1 = retrieval_metrics(scores["stage1"], caption_video, chunk_size=chunk_size)
    # each direction has its own re-ranked matrix: t2v (Q, V) with text rows, v2t (V, Q) with video rows
    reranked = retrieval_metrics(scores["t2v_rerank"], caption_video, scores_v2t=scores["v2t_rerank"],
                                 chunk_size=chunk_size)
    num_videos = scores["stage1"].shape[1]
    return {
        **flatten_metrics(stage1),
        **flatten_metrics(reranked, {"t2v": "t2v_rerank", "v2t": "v2t_rerank"}),
        **{f"chance/{key}": value for key, value in chance_metrics(num_videos).items()},
    }


def evaluate_cell(trained: str, evaluated: str, params: Params, paths: Paths, repo_root: Path) -> dict:
    """Score, write metrics.json + scores.npz, and log the MLflow child run of one cell."""
    scores = score_test_set(trained, evaluated, params, paths)
    metrics = cell_metrics(scores, params.eval.chunk_size)
    out_dir = paths.evaluation(trained, evaluated)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / "scores.npz", **scores)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    parent = tracking.read_run_reference(paths.disc_model(trained) / "mlflow_run.json")
    tracking.configure(params.tracking.tracking_uri, params.tracking.artifact_root, repo_root)
    tags = {"stage": "evaluate", "train_benchmark": trained, "eval_benchmark": evaluated,
            "ood": str(trained != evaluated).lower(), "postprocess": "none", "split": "test",
            "git_commit": tracking.git_commit(repo_root)}
    with tracking.start_run(experiment=parent["experiment"], run_name=f"eval {trained} -> {evaluated}",
                            tags=tags, parent_run_id=parent["run_id"]):
        tracking.log_params({"eval." + key: value for key, value in vars(params.eval).items()})
        tracking.log_metrics(metrics)
        tracking.log_artifacts([out_dir / "metrics.json"])
    return metrics
