"""`train_gen` stage (stage 2, "generation"): train the two denoisers on cached frozen features.

The extractor is frozen (as in the official code; issue #7 of the official repository), so the stage reads
data/features/<benchmark>/<benchmark>/ instead of running CLIP. Writes models/<benchmark>/gen/ and
plots/<benchmark>/gen_loss.csv; its MLflow run is a child of the stage-1 run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from diffusionret import tracking
from diffusionret.config import Params, batches_per_epoch, resolve_schedule
from diffusionret.data.batches import global_batch_indices, local_slice
from diffusionret.evaluation.metrics import recall_metrics, retrieval_ranks
from diffusionret.evaluation.within_topk import direction_targets, generator_top1_hits
from diffusionret.evaluation.scoring import RerankSettings, score_queries
from diffusionret.features.cache import SplitFeatures, load_split_features, video_keys
from diffusionret.method.diffusion import GaussianDiffusion, create_diffusion
from diffusionret.method.mining import sample_negatives, stage1_top_k
from diffusionret.method.objectives import GenerationObjective
from diffusionret.model.checkpoint import load_extractor, save_module
from diffusionret.model.denoiser import Generator
from diffusionret.model.extractor import FeatureExtractor
from diffusionret.pipeline.paths import Paths
from diffusionret.pipeline.runs import (NOT_AFFECTING_WEIGHTS, RunLogger, fingerprint, loop_settings, make_accelerator,
                                        make_optimizer, partition, seed_everything, stage_params)
from diffusionret.training.loop import run_training
from diffusionret.training.state import Progress, TrainingState


def feature_batch(features: SplitFeatures, keys: torch.Tensor, indices: np.ndarray) -> dict[str, torch.Tensor]:
    """Cached features (float32) of the captions at `indices` and of their videos; with
    `data.features_loading: disk` only these captions' token rows are read from disk (`TokenRows`)."""
    index = torch.as_tensor(indices, dtype=torch.long)
    videos = keys[index]
    text, video = features.text[index], features.video[videos]
    return {"text_tokens": text.tokens, "text_mask": text.mask, "sentence": text.sentence,
            "video_frames": video.frames, "video_mask": video.mask, "video_key": videos}


def mined_lists(extractor: FeatureExtractor, features: SplitFeatures, keys: torch.Tensor, settings,
                chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each training caption's stage-1 top-k videos (C, k) and each video's top-k captions (V, k), own video
    excluded (`method.mining.stage1_top_k`), computed once from the cached features in blocks. k is
    train_gen.mined_top_k, lowered to what a small training gallery holds (its videos - 1, and the captions of the
    other videos); num_negatives must stay below it."""
    per_video = int(torch.bincount(keys).max())
    k = min(settings.mined_top_k, len(features.video) - 1, len(keys) - per_video)
    if settings.num_negatives >= k:
        raise ValueError(f"train_gen.num_negatives={settings.num_negatives} needs a mined top-k above it, but the "
                         f"training split holds only {len(features.video)} videos (top-k at most {k}); lower "
                         f"train_gen.num_negatives or use train_gen.negatives: batch")
    with torch.no_grad():
        return stage1_top_k(extractor.similarity, features.text, features.video, keys, k, query_block=chunk_size)


def mined_batch(features: SplitFeatures, keys: torch.Tensor, indices: np.ndarray, local: np.ndarray,
                top_k: tuple[torch.Tensor, torch.Tensor], num_negatives: int, seed: int, step: int
                ) -> dict[str, torch.Tensor]:
    """The candidate lists of this process's captions `local` (a slice of the global batch `indices`): column 0
    the pair's own video (t2v) / caption (v2t), then negatives drawn from the stage-1 top-k (`sample_negatives`,
    drawn for the global batch so the lists do not depend on the number of processes)."""
    t2v_top, v2t_top = top_k
    position = np.flatnonzero(np.isin(indices, local))  # local is a contiguous slice of indices
    captions = torch.as_tensor(indices, dtype=torch.long)  # (B,)
    videos = keys[captions]  # (B,)
    t2v = torch.cat([videos[:, None], sample_negatives(t2v_top, indices, num_negatives, seed, step)], dim=1)
    v2t = torch.cat([captions[:, None], sample_negatives(v2t_top, videos.numpy(), num_negatives, seed + 1, step)],
                    dim=1)  # (B, 1+K) each
    t2v, v2t = t2v[position], v2t[position]  # this process's rows, (b, 1+K)
    candidates = features.video[t2v.reshape(-1)]
    frames = candidates.frames.reshape(*t2v.shape, *candidates.frames.shape[1:])  # (b, N, T, D)
    return {"candidate_frames": frames, "candidate_mask": candidates.mask.reshape(*t2v.shape, -1),  # (b, N, T)
            "candidate_sentences": features.text.sentence[v2t]}  # (b, N, D)


def validation_scores(generator: Generator, diffusion: GaussianDiffusion, extractor: FeatureExtractor,
                      features: SplitFeatures, rerank: RerankSettings, chunk_size: int, direction: str = "t2v"):
    """One direction's stage-1 and re-ranked scores on the validation split (first seed) and its targets."""
    scores = score_queries(extractor.similarity, features.text, features.video, direction=direction,
                           query_block=chunk_size, generator=generator, diffusion=diffusion, rerank=rerank)
    return scores, direction_targets(np.asarray(features.annotations.caption_video), len(features.video), direction)


def rerank_val_r1(generator: Generator, diffusion: GaussianDiffusion, extractor: FeatureExtractor,
                  features: SplitFeatures, rerank: RerankSettings, chunk_size: int) -> float:
    """t2v R@1 on the validation split after diffusion re-ranking with one seed (the stage-2 selection metric)."""
    scores, targets = validation_scores(generator, diffusion, extractor, features, rerank, chunk_size)
    ranks = scores.ranks(targets, draw=0, chunk_size=chunk_size)
    return float(recall_metrics(ranks)["R1"])


def generator_val_r1(generator: Generator, diffusion: GaussianDiffusion, extractor: FeatureExtractor,
                     features: SplitFeatures, rerank: RerankSettings, chunk_size: int) -> float:
    """t2v generator-only R@1 within the top-k on the validation split (x0_hat alone, ties broken at random,
    counted in expectation; `generator_top1_hits`): the tie-free selection metric."""
    scores, targets = validation_scores(generator, diffusion, extractor, features, rerank, chunk_size)
    draw = scores.draws[0]
    return 100.0 * float(generator_top1_hits(draw.x0_hat, draw.topk_indices, targets).mean())


def choose_rerank_on_val(generator: Generator, diffusion: GaussianDiffusion, extractor: FeatureExtractor,
                         features: SplitFeatures, rerank: RerankSettings, chunk_size: int,
                         temperatures: tuple[float, ...], alphas: tuple[float, ...]) -> dict:
    """The (temperature, alpha) of the grid with the best val re-ranked R@1, t2v + v2t summed (more queries than
    one direction: less selection noise; t2v alone when a val video has several captions), ties by the summed mean
    reciprocal rank, then the grid order.
    One DDIM draw per direction; each pair only re-weights its x0_hat, so the grid costs no extra sampling."""
    results = []
    counts = np.bincount(np.asarray(features.annotations.caption_video), minlength=len(features.video))
    directions = ("t2v", "v2t") if (counts == 1).all() else ("t2v",)  # v2t needs one caption per val video
    for direction in directions:
        scores, targets = validation_scores(generator, diffusion, extractor, features, rerank, chunk_size, direction)
        results.append((scores.stage1, scores.draws[0], targets))
    best = None
    for temperature in temperatures:
        for alpha in alphas:
            r1 = mrr = 0.0
            for stage1, draw, targets in results:
                probabilities = (draw.x0_hat * temperature).softmax(dim=1)  # (Q, k)
                reranked = stage1.clone().scatter_add_(1, draw.topk_indices, alpha * probabilities)
                ranks = retrieval_ranks(reranked.numpy(), targets, chunk_size=chunk_size)
                r1 += 100.0 * float(np.mean(ranks == 0))
                mrr += float(np.mean(1.0 / (ranks + 1)))
            if best is None or (r1, mrr) > (best["val_R1_sum"], best["val_MRR_sum"]):
                best = {"temperature": temperature, "alpha": alpha, "val_R1_sum": r1, "val_MRR_sum": mrr}
    return best


def train_gen(name: str, params: Params, paths: Paths, repo_root: Path) -> dict:
    """Run stage 2 on benchmark `name`; resumable (state under data.partial_root)."""
    settings = params.train_gen
    accelerator = make_accelerator(params.train.precision)
    split = partition(accelerator, settings, "train_gen")
    features_dir = paths.features(name, name)
    train_features = load_split_features(features_dir, "train", params.data.features_loading)
    val_features = load_split_features(features_dir, params.eval.selection,  # "test" only for the official protocol
                                       params.data.features_loading)
    extractor, disc_meta = load_extractor(paths.disc_model(name))
    extractor.requires_grad_(False)
    extractor.to(accelerator.device)
    keys = video_keys(train_features.annotations)
    num_items = train_features.annotations.num_captions
    settings = resolve_schedule(settings, num_items, "train_gen")  # epochs -> steps
    per_epoch = batches_per_epoch(num_items, settings.global_batch, "train_gen")
    width = int(train_features.text.sentence.shape[-1])

    seed_everything(params.train.seed)
    generator = Generator(width, frame_temperature=settings.frame_temperature, seed=params.train.seed)
    generator.to(accelerator.device)
    diffusion = create_diffusion(params.diffusion.steps, params.diffusion.schedule)
    noise = torch.Generator().manual_seed(params.train.seed)  # the same draws on every process
    objective = GenerationObjective(generator, diffusion, extractor, settings, noise, split)
    optimizer, scheduler = make_optimizer(settings, generator, None)

    top_k = None
    if settings.negatives == "mined":
        top_k = mined_lists(extractor, train_features, keys, settings, params.eval.chunk_size)

    def batches(start_step: int):
        for step in range(start_step, settings.steps):
            indices = global_batch_indices(num_items, settings.global_batch, params.train.seed, step)
            local = local_slice(indices, accelerator.process_index, accelerator.num_processes)
            batch = feature_batch(train_features, keys, local)
            if top_k is not None:
                batch.update(mined_batch(train_features, keys, indices, local, top_k, settings.num_negatives,
                                         params.train.seed, step))
            yield {key: value.to(accelerator.device) for key, value in batch.items()}

    # during training: eval.rerank_from `val` is not chosen yet, so it validates with the matched temperature
    temperature = (params.eval.rerank_temperature if params.eval.rerank_from == "params"
                   else settings.loss_temperature_inv)
    rerank = RerankSettings(k=params.eval.rerank_k, temperature=temperature,
                            alpha=params.eval.rerank_alpha, seeds=(params.eval.seed,),
                            query_batch=params.eval.rerank_query_batch, clamp_final=params.eval.rerank_clamp_final,
                            stop_step=settings.min_timestep)
    select = {"rerank_r1": rerank_val_r1, "generator_r1": generator_val_r1}[settings.select_by]
    metric_name = {"rerank_r1": "t2v_rerank_R1", "generator_r1": "t2v_generator_R1_topk"}[settings.select_by]

    def validate(module: Generator) -> float:
        return select(module, diffusion, extractor, val_features, rerank, params.eval.chunk_size)

    def restore_noise(progress: Progress) -> None:
        if "noise_rng" in progress.extra:
            noise.set_state(torch.tensor(progress.extra["noise_rng"], dtype=torch.uint8))

    rerank_settings = {key: getattr(params.eval, key)
                       for key in ("rerank_k", "rerank_temperature", "rerank_alpha", "seed", "selection",
                                   "rerank_from", "rerank_clamp_final")}
    state = TrainingState(paths.partial("train_gen", name),
                          fingerprint(settings, params.diffusion, rerank_settings, {"seed": params.train.seed},
                                      exclude=NOT_AFFECTING_WEIGHTS))
    parent = tracking.read_run_reference(paths.disc_model(name) / "mlflow_run.json")
    logger = RunLogger(accelerator, params, repo_root, experiment=name, run_name=f"{name}/gen",
                       tags={"stage": "gen", "benchmark": name, "seed": params.train.seed,
                             "head": disc_meta["model"]["head"],  # runs group by the stage-1 head
                             "world_size": accelerator.num_processes, "global_batch": settings.global_batch,
                             "per_device_batch": settings.global_batch // accelerator.num_processes,
                             "micro_batches": split.micro_batches, "diffusion_steps": params.diffusion.steps,
                             "selection": params.eval.selection, "steps": settings.steps,
                             "steps_per_epoch": per_epoch, "git_commit": tracking.git_commit(repo_root)},
                       state=state, curve="loss/generative", parent_reference=parent)
    with logger:
        logger.log_params(stage_params(params, ("train.seed", "train.precision", "train_gen", "diffusion",
                                                "eval.rerank_k", "eval.rerank_temperature", "eval.rerank_alpha",
                                                "eval.seed", "eval.chunk_size", "eval.selection",
                                                "eval.rerank_from", "eval.rerank_clamp_final")))
        result = run_training(
            accelerator=accelerator, objective=objective, trainable=generator, optimizer=optimizer,
            scheduler=scheduler, batches=batches, validate=validate, settings=loop_settings(settings, per_epoch),
            state=state, log_metrics=logger.log_metrics, on_resume=restore_noise,
            extra_state=lambda: {**logger.extra_state(), "noise_rng": noise.get_state().tolist()},
            validation_metric=metric_name,
        )
        if accelerator.is_main_process:
            selected = {"source": result.best_source, "step": result.best_step,
                        f"val_{metric_name}": result.best_value, "split": params.eval.selection}
            chosen = {}
            if params.eval.rerank_from == "val":
                if not (settings.rerank_temperatures and settings.rerank_alphas):
                    raise ValueError("eval.rerank_from=val needs train_gen.rerank_temperatures and "
                                     "train_gen.rerank_alphas (the grid tried on val)")
                generator.load_state_dict(result.best_state)
                generator.eval()
                selected["rerank"] = choose_rerank_on_val(
                    generator, diffusion, extractor, val_features, rerank, params.eval.chunk_size,
                    settings.rerank_temperatures, settings.rerank_alphas)
                chosen = {f"selected/rerank_{key}": value for key, value in selected["rerank"].items()}
            out_dir = paths.gen_model(name)
            save_module(result.best_state, out_dir, {
                "stage": "gen", "benchmark": name, "width": width,
                "frame_temperature": settings.frame_temperature,
                "loss_temperature_inv": settings.loss_temperature_inv, "min_timestep": settings.min_timestep,
                "diffusion": {"steps": params.diffusion.steps, "schedule": params.diffusion.schedule},
                "selected": selected,
                "steps_per_second": result.steps_per_second,
            })
            logger.finish(out_dir / "mlflow_run.json", summary={
                f"selected/val_{metric_name}": result.best_value, "selected/step": result.best_step,
                "perf/final_steps_per_second": result.steps_per_second, **chosen},
                tags={"selected_source": result.best_source})
            paths.plots(name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(state.log_csv, paths.plots(name) / "gen_loss.csv")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state.clear()
    return {"best_source": result.best_source, "best_value": result.best_value}
