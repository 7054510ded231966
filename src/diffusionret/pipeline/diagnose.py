"""`diagnose` stage: the diagnostics of one evaluation cell (model trained on A, B's test set), synthetic B only.

Reads B's meanings.json (raw folder), the cell's cached features and both checkpoints; scores the test set once
through `evaluation.scoring.score_queries` with the evaluation's re-ranking settings and seeds (the same matrices as
`evaluate`), then computes (percentages; every order breaks ties at random):
- `<dir>/...`, `<dir>_rerank/...`: top-1 attribute accuracy (colour, shape, motion, colour+shape, whole meaning)
  with chance levels, and the composition of each query's top-k (same colour, same colour+shape, the true item's
  rank among its colour+shape group against a random order of the group), stage 1 and re-ranked (mean over draws);
- `<dir>_generator/...`: generator-only R@1 within the top-k (rank by p alone) beside stage 1's R@1 in the same
  lists, the true item's mean rank under each, and how flat p is (mean over draws, with min / max);
- `<dir>_noise/...`: the denoiser's top-1 accuracy on the top-k lists from x0 noised to t, with the own and a
  shuffled query, and argmax x_t itself;
- `probe/<feature>/<attribute>/<split>`: linear probes fitted on A's training split.
A benchmark without meanings.json (a real one) is skipped: diagnostics.json then says so and nothing is computed.
Writes eval/<A>__<B>/diagnostics.json and logs the metrics, prefixed `diagnostics/`, to the cell's evaluation run
(postprocess=none, from cell.json).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from diffusionret import tracking
from diffusionret.config import Params
from diffusionret.data.frames import load_frame_cache
from diffusionret.diagnostics.attributes import top1_attribute_accuracy, topk_composition
from diffusionret.diagnostics.generator_rank import generator_minus_stage1, generator_vs_stage1, mean_over_draws
from diffusionret.diagnostics.meanings import ATTRIBUTES, MEANINGS_FILE, caption_labels, load_meanings, video_labels
from diffusionret.diagnostics.noise_levels import noise_level_accuracy, noise_steps
from diffusionret.diagnostics.probes import concatenated, masked_mean, probe_accuracy
from diffusionret.diagnostics.ranking import positive_matrix
from diffusionret.evaluation.cell import draw_seeds
from diffusionret.evaluation.scoring import RerankSettings, Scores, score_queries
from diffusionret.evaluation.uncertainty import Bootstrap
from diffusionret.features.cache import SplitFeatures, load_split_features
from diffusionret.features.encode import split_rows
from diffusionret.method.diffusion import create_diffusion
from diffusionret.method.rerank import t2v_block_denoiser, v2t_block_denoiser
from diffusionret.model.checkpoint import load_extractor, load_generator
from diffusionret.pipeline.paths import Paths

OUTPUT = "diagnostics.json"
FEATURES = {  # probed feature -> (side, how it is made into one vector per item)
    "frames_backbone": "video: per-frame image features before the temporal module, concatenated over frames",
    "frames": "video: cached frame features after the temporal module, concatenated over frames",
    "sentence": "caption: cached sentence vector",
    "tokens_mean": "caption: cached token features, mean over the caption's tokens",
    "tokens_concat": "caption: cached token features, concatenated over positions (max_words x width)",
}


def _rng(seed: int, stream: int) -> np.random.Generator:
    """An independent generator per diagnostic, so adding one never changes another's draws."""
    return np.random.default_rng([seed, stream])


def _prefixed(prefix: str, values: dict) -> dict:
    return {f"{prefix}/{key}": value for key, value in values.items()}


def direction_diagnostics(direction: str, scores: Scores, query_labels: dict, candidate_labels: dict,
                          positives: np.ndarray, block_denoiser, diffusion, *, k: int, steps: list[int],
                          negative_value: float, noise_draws: int, seed: int, bootstrap: Bootstrap,
                          clusters: np.ndarray | None) -> dict:
    """Every diagnostic of one direction from its stage-1 and re-ranked scores (rows = queries)."""
    stage1 = scores.stage1.float().numpy()  # (Q, C)
    metrics = _prefixed(direction, {**top1_attribute_accuracy(stage1, query_labels, candidate_labels, _rng(seed, 0)),
                                    **topk_composition(stage1, query_labels, candidate_labels, positives, k,
                                                       _rng(seed, 1))})
    reranked = [draw.scores.float().numpy() for draw in scores.draws]
    metrics.update(_prefixed(f"{direction}_rerank", mean_over_draws([
        {**top1_attribute_accuracy(matrix, query_labels, candidate_labels, _rng(seed, 2)),
         **topk_composition(matrix, query_labels, candidate_labels, positives, k, _rng(seed, 3))}
        for matrix in reranked])))
    per_draw, ranks = [], []
    for draw in scores.draws:
        topk = draw.topk_indices.numpy()  # (Q, k) by stage 1 (stable ties), the same in every draw
        per_draw.append(generator_vs_stage1(draw.probabilities.float().numpy(), np.take_along_axis(stage1, topk, 1),
                                            np.take_along_axis(positives, topk, 1), _rng(seed, 4), ranks))
    metrics.update(_prefixed(f"{direction}_generator", {**mean_over_draws(per_draw),
                                                        **generator_minus_stage1(ranks, bootstrap, clusters)}))
    topk = scores.draws[0].topk_indices
    metrics.update(_prefixed(f"{direction}_noise", noise_level_accuracy(
        block_denoiser, diffusion, topk, np.take_along_axis(positives, topk.numpy(), 1), steps=steps,
        negative_value=negative_value, draws=noise_draws, seed=seed)))
    return metrics


@torch.no_grad()
def backbone_frames(extractor, frames_dir: Path, video_ids: tuple[str, ...],
                    batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame image features before the temporal module (V, T, D) and the frame mask (V, T) of `video_ids`."""
    cache = load_frame_cache(frames_dir)
    missing = [video for video in video_ids if video not in cache.row_of]
    if missing:
        raise ValueError(f"{frames_dir}: the frame cache lacks videos {missing[:5]}; re-run `dvc repro preprocess`")
    rows = np.array([cache.row_of[video] for video in video_ids], dtype=np.int64)
    parts = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        parts.append(extractor.backbone.encode_frames(torch.from_numpy(np.array(cache.frames[batch])),
                                                      torch.from_numpy(np.asarray(cache.mask[batch], bool))))
    return torch.cat(parts).float().numpy(), np.asarray(cache.mask[rows], bool)


def probe_inputs(split: SplitFeatures, backbone: tuple[np.ndarray, np.ndarray] | None,
                 lengths: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """feature name -> (N, F) matrix of one split (videos for frame features, captions for text features)."""
    lengths = lengths or {}
    tokens = split.text.tokens[:].numpy()  # (C, L, D)
    text_mask, frame_mask = split.text.mask.numpy(), split.video.mask.numpy()
    inputs = {"frames": concatenated(split.video.frames.numpy(), frame_mask, lengths.get("frames")),
              "sentence": split.text.sentence.numpy(),
              "tokens_mean": masked_mean(tokens, text_mask),
              "tokens_concat": concatenated(tokens, text_mask, lengths.get("tokens"))}
    if backbone is not None:
        inputs["frames_backbone"] = concatenated(*backbone, lengths.get("frames"))
    return inputs


def probe_metrics(params: Params, paths: Paths, trained: str, evaluated: str, extractor,
                  train_meanings: dict, eval_meanings: dict) -> dict:
    """Probes fitted on A's training split, scored on B's val (when cached) and test splits."""
    settings, loading = params.diagnostics, params.data.features_loading
    train = load_split_features(paths.features(trained, trained), "train", loading)
    splits = {}
    for split in ("val", "test"):
        if (paths.features(trained, evaluated) / f"{split}.safetensors").is_file():
            splits[split] = load_split_features(paths.features(trained, evaluated), split, loading)

    def backbone(benchmark: str, features: SplitFeatures):
        if not settings.probe_backbone_frames:
            return None
        return backbone_frames(extractor, paths.frames(benchmark), features.annotations.video_ids,
                               params.eval.batch_size)

    train_inputs = probe_inputs(train, backbone(trained, train))
    lengths = {"frames": train.video.frames.shape[1], "tokens": train.text.tokens.shape[1]}
    eval_inputs = {split: probe_inputs(features, backbone(evaluated, features), lengths)
                   for split, features in splits.items()}

    def labels(meanings: dict, features: SplitFeatures, where: str) -> tuple[dict, dict]:
        videos = video_labels(meanings, features.annotations.video_ids, where)
        return videos, caption_labels(videos, features.annotations.caption_video)

    train_labels = labels(train_meanings, train, str(paths.raw(trained) / MEANINGS_FILE))
    eval_labels = {split: labels(eval_meanings, features, str(paths.raw(evaluated) / MEANINGS_FILE))
                   for split, features in splits.items()}
    metrics = {}
    for feature, matrix in train_inputs.items():
        side = 0 if feature.startswith("frames") else 1  # videos or captions
        for attribute in ATTRIBUTES:
            found = probe_accuracy(matrix, train_labels[side][attribute],
                                   {split: (eval_inputs[split][feature], eval_labels[split][side][attribute])
                                    for split in splits}, c=settings.probe_c, max_iter=settings.probe_max_iter)
            metrics.update(_prefixed(f"probe/{feature}/{attribute}", found))
    return metrics


def skipped(trained: str, evaluated: str, reason: str) -> dict:
    return {"trained": trained, "evaluated": evaluated, "skipped": reason, "metrics": {}}


def diagnose_cell(trained: str, evaluated: str, params: Params, paths: Paths) -> dict:
    """Every diagnostic of one cell, or a `skipped` reason when B has no meanings.json (a real benchmark)."""
    meanings_path = paths.raw(evaluated) / MEANINGS_FILE
    eval_meanings = load_meanings(meanings_path)
    if eval_meanings is None:
        return skipped(trained, evaluated, f"{meanings_path} does not exist: `{evaluated}` is not a synthetic "
                                           f"benchmark, so no video's meaning is known")
    settings, diag = params.eval, params.diagnostics
    timings: dict[str, dict[str, float]] = {"seconds": {}, "cpu_seconds": {}}  # wall and CPU (all threads)
    clock = [time.perf_counter(), time.process_time()]

    def lap(part: str) -> None:
        timings["seconds"][part] = round(time.perf_counter() - clock[0], 2)
        timings["cpu_seconds"][part] = round(time.process_time() - clock[1], 2)
        clock[:] = [time.perf_counter(), time.process_time()]

    extractor, _ = load_extractor(paths.disc_model(trained))
    generator, gen_meta = load_generator(paths.gen_model(trained))
    trained_with = gen_meta["diffusion"]
    if (trained_with["steps"], trained_with["schedule"]) != (params.diffusion.steps, params.diffusion.schedule):
        raise ValueError(f"the generator of `{trained}` was trained with diffusion {trained_with} but params ask "
                         f"for steps={params.diffusion.steps}, schedule={params.diffusion.schedule}")
    diffusion = create_diffusion(params.diffusion.steps, params.diffusion.schedule)
    test = load_split_features(paths.features(trained, evaluated), "test", params.data.features_loading)
    rerank = RerankSettings(k=settings.rerank_k, temperature=settings.rerank_temperature,  # as `evaluate` does
                            alpha=settings.rerank_alpha, seeds=draw_seeds(settings.seed, settings.num_samples),
                            query_batch=settings.rerank_query_batch)
    score = dict(query_block=settings.chunk_size, generator=generator, diffusion=diffusion, rerank=rerank)
    t2v = score_queries(extractor.similarity, test.text, test.video, direction="t2v", **score)  # (C, V)
    v2t = score_queries(extractor.similarity, test.text, test.video, direction="v2t",
                        stage1=t2v.stage1.T.contiguous(), **score)  # (V, C)
    lap("load_and_score")

    videos = video_labels(eval_meanings, test.annotations.video_ids, str(meanings_path))
    captions = caption_labels(videos, test.annotations.caption_video)
    caption_video = np.asarray(test.annotations.caption_video, dtype=np.int64)
    common = dict(k=rerank.k, steps=noise_steps(diag.noise_fractions, diffusion.num_timesteps),
                  negative_value=gen_meta.get("negative_value", params.train_gen.negative_value),
                  noise_draws=diag.noise_draws, seed=diag.seed,
                  bootstrap=Bootstrap(settings.bootstrap_resamples, settings.bootstrap_seed, settings.ci_level))
    metrics = direction_diagnostics(
        "t2v", t2v, captions, videos, positive_matrix(caption_video, test.annotations.num_videos, "t2v"),
        t2v_block_denoiser(test.text.sentence, test.video.frames, test.video.mask, generator.t2v), diffusion,
        clusters=caption_video, **common)
    metrics.update(direction_diagnostics(
        "v2t", v2t, videos, captions, positive_matrix(caption_video, test.annotations.num_videos, "v2t"),
        v2t_block_denoiser(test.video.frames, test.video.mask, test.text.sentence, generator.v2t), diffusion,
        clusters=None, **common))
    lap("ranking_and_noise")

    train_meanings = load_meanings(paths.raw(trained) / MEANINGS_FILE)
    probes_note = None
    if train_meanings is None:
        probes_note = f"no probes: {paths.raw(trained) / MEANINGS_FILE} does not exist (the trained benchmark is real)"
    else:
        metrics.update(probe_metrics(params, paths, trained, evaluated, extractor, train_meanings, eval_meanings))
    lap("probes")
    return {"trained": trained, "evaluated": evaluated, "skipped": None, "probes_note": probes_note,
            "queries": {"t2v": test.annotations.num_captions, "v2t": test.annotations.num_videos},
            "k": rerank.k, "draws": len(rerank.seeds), "noise_steps": common["steps"],
            "bootstrap": {"resamples": settings.bootstrap_resamples, "seed": settings.bootstrap_seed,
                          "level": settings.ci_level},
            "features": FEATURES, **timings,
            "metrics": metrics}


def log_to_evaluation_run(result: dict, params: Params, out_dir: Path, repo_root: Path) -> str | None:
    """Log the metrics as `diagnostics/<key>` to the cell's postprocess=none evaluation run; its id or None."""
    cell_file = out_dir / "cell.json"
    run_id = json.loads(cell_file.read_text()).get("mlflow_runs", {}).get("none") if cell_file.is_file() else None
    if run_id is None or not result["metrics"]:
        return None
    tracking.configure(params.tracking.tracking_uri, params.tracking.artifact_root, repo_root)
    with tracking.start_run(experiment="", run_name="", tags={}, resume_run_id=run_id):
        tracking.log_metrics({f"diagnostics/{key}": value for key, value in result["metrics"].items()
                              if math.isfinite(value)})
        tracking.log_artifacts([out_dir / OUTPUT])
    return run_id


def run_diagnose(trained: str, evaluated: str, params: Params, paths: Paths, repo_root: Path, *,
                 log: bool = True) -> dict:
    """The stage: diagnose one cell, write eval/<A>__<B>/diagnostics.json, log it to MLflow."""
    start = time.perf_counter()
    # one thread for torch and BLAS: every tensor here is small, and on the shared 2-core machine two threads
    # cost 5x the CPU time (threads waiting for each other) for no gain in wall time
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            result = diagnose_cell(trained, evaluated, params, paths)
    finally:
        torch.set_num_threads(threads)
    result["seconds_total"] = round(time.perf_counter() - start, 2)
    out_dir = paths.evaluation(trained, evaluated)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / OUTPUT).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    result["mlflow_run"] = log_to_evaluation_run(result, params, out_dir, repo_root) if log else None
    return result


SUMMARY_KEYS = ("t2v/top1_colour", "t2v/top1_shape", "t2v/top1_motion", "t2v/topk_same_colour_shape",
                "t2v/group_rank", "t2v/group_rank_random", "t2v_generator/generator_R1", "t2v_generator/stage1_R1",
                "t2v_generator/generator_mean_rank", "t2v_generator/stage1_mean_rank", "t2v_noise/chance")


def print_summary(result: dict) -> None:
    """A few lines for the terminal: the skip reason, or the headline diagnostics and where the rest went."""
    cell = f"{result['trained']} → {result['evaluated']}"
    if result["skipped"]:
        print(f"diagnose {cell}: skipped, {result['skipped']}")
        return
    metrics = result["metrics"]
    shown = {key: round(metrics[key], 2) for key in SUMMARY_KEYS if key in metrics}
    shown.update({key: round(value, 2) for key, value in metrics.items()
                  if key.startswith("t2v_noise/t") or (key.startswith("probe/") and key.endswith(("/val", "/test"))
                                                       and "/motion/" in key)})
    print(f"diagnose {cell} ({result['seconds_total']} s wall: {result['seconds']}; CPU s: {result['cpu_seconds']}):")
    for key, value in shown.items():
        print(f"  {key}: {value}")
    where = f"; MLflow run {result['mlflow_run']}" if result.get("mlflow_run") else ""
    print(f"  every value in eval/{result['trained']}__{result['evaluated']}/{OUTPUT}{where}")
