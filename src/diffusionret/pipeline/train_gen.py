"""`train_gen` stage (stage 2, "generation"): train the two denoisers on cached frozen features.

The extractor is frozen (reference §6.1, issue #7 of the official repository), so the stage reads
data/features/<benchmark>/<benchmark>/ instead of running CLIP. Writes models/<benchmark>/gen/ and
plots/<benchmark>/gen_loss.csv; its MLflow run is a child of the stage-1 run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffusionret import tracking
from diffusionret.config import Params, TrainGenParams, flatten
from diffusionret.data.batches import global_batch_indices, local_slice
from diffusionret.diffusion import GaussianDiffusion, create_diffusion
from diffusionret.features import SplitFeatures, load_split_features, video_keys
from diffusionret.generation import stage2_loss
from diffusionret.losses import contrastive_loss, gather_with_grad
from diffusionret.metrics import retrieval_metrics
from diffusionret.model.checkpoint import load_extractor, save_module
from diffusionret.model.denoiser import Generator
from diffusionret.model.extractor import FeatureExtractor, TextFeatures, VideoFeatures
from diffusionret.pipeline.paths import Paths
from diffusionret.pipeline.runs import RunLogger, make_accelerator, make_optimizer, seed_everything
from diffusionret.rerank import rerank_t2v
from diffusionret.train import LoopSettings, Progress, TrainingState, run_training


class GenerationObjective(nn.Module):
    """Stage-2 loss of a global batch of cached features (only `generator` has trainable weights).

    Every process computes the loss of the whole global batch with the same noise, so the gradient,
    and hence training, does not depend on the number of processes.
    """

    def __init__(self, generator: Generator, diffusion: GaussianDiffusion, extractor: FeatureExtractor,
                 settings: TrainGenParams, noise: torch.Generator):
        super().__init__()
        self.generator, self.diffusion, self.settings, self.noise = generator, diffusion, settings, noise
        self._frozen = [extractor]  # a plain list: the frozen extractor is not a submodule (not wrapped by DDP)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        extractor = self._frozen[0]
        gathered = {key: gather_with_grad(value) for key, value in batch.items()}  # global batch B
        text = TextFeatures(tokens=gathered["text_tokens"], mask=gathered["text_mask"],
                            sentence=gathered["sentence"])
        video = VideoFeatures(frames=gathered["video_frames"], mask=gathered["video_mask"])
        with torch.no_grad():
            similarity = extractor.similarity(text, video)  # (B, B) stage-1 WTI scores
            contrastive = contrastive_loss(similarity, extractor.logit_scale)  # L_dis: nothing trainable
        loss, parts = stage2_loss(
            self.generator, self.diffusion, sentence=text.sentence, frames=video.frames,
            frame_mask=video.mask, similarity=similarity, video_keys=gathered["video_key"],
            num_negatives=self.settings.num_negatives, temperature_inv=self.settings.loss_temperature_inv,
            generator_rng=self.noise, negative_value=self.settings.negative_value,
        )
        return loss, {"loss/generative": loss.detach(), "loss/generative_t2v": parts["t2v"].detach(),
                      "loss/generative_v2t": parts["v2t"].detach(), "loss/contrastive": contrastive}


def feature_batch(features: SplitFeatures, keys: torch.Tensor, indices: np.ndarray) -> dict[str, torch.Tensor]:
    """Cached features of the captions at `indices` and of their videos."""
    index = torch.as_tensor(indices, dtype=torch.long)
    videos = keys[index]
    return {"text_tokens": features.text.tokens[index], "text_mask": features.text.mask[index],
            "sentence": features.text.sentence[index], "video_frames": features.video.frames[videos],
            "video_mask": features.video.mask[videos], "video_key": videos}


def rerank_val_r1(generator: Generator, diffusion: GaussianDiffusion, extractor: FeatureExtractor,
                  features: SplitFeatures, k: int, temperature: float, alpha: float, seed: int,
                  chunk_size: int) -> float:
    """t2v R@1 on the validation split after diffusion re-ranking (the stage-2 selection metric)."""
    with torch.no_grad():
        scores = extractor.similarity(features.text, features.video)  # (C, V)
        result = rerank_t2v(scores, features.text.sentence, features.video.frames, features.video.mask,
                            generator.t2v, diffusion, k=min(k, scores.shape[1]), temperature=temperature,
                            alpha=alpha, seed=seed)
    metrics = retrieval_metrics(result.scores.float().numpy(), np.asarray(features.annotations.caption_video),
                                chunk_size=chunk_size)
    return float(metrics["t2v"]["R1"])


def train_gen(name: str, params: Params, paths: Paths, repo_root: Path) -> dict:
    """Run stage 2 on benchmark `name`; resumable (state under data.partial_root)."""
    settings = params.train_gen
    accelerator = make_accelerator(params.train.precision)
    features_dir = paths.features(name, name)
    train_features = load_split_features(features_dir, "train")
    val_features = load_split_features(features_dir, "val")
    extractor, _ = load_extractor(paths.disc_model(name))
    extractor.requires_grad_(False)
    extractor.to(accelerator.device)
    keys = video_keys(train_features.annotations)
    width = int(train_features.text.sentence.shape[-1])

    seed_everything(params.train.seed)  # identical initial denoiser weights on every process
    generator = Generator(width, frame_temperature=settings.frame_temperature, seed=params.train.seed)
    diffusion = create_diffusion(params.diffusion.steps, params.diffusion.schedule)
    noise = torch.Generator().manual_seed(params.train.seed)  # same on every process (see GenerationObjective)
    objective = GenerationObjective(generator, diffusion, extractor, settings, noise)
    optimizer, scheduler = make_optimizer(settings, generator, None)
    num_items = train_features.annotations.num_captions

    def batches(start_step: int):
        for step in range(start_step, settings.steps):
            indices = global_batch_indices(num_items, settings.batch_size, params.train.seed, step)
            local = local_slice(indices, accelerator.process_index, accelerator.num_processes)
            yield {key: value.to(accelerator.device) for key, value in feature_batch(train_features, keys, local).items()}

    def validate(module: Generator) -> float:
        return rerank_val_r1(module, diffusion, extractor, val_features, params.eval.rerank_k,
                             params.eval.rerank_temperature, params.eval.rerank_alpha, params.eval.seed,
                             params.eval.chunk_size)

    def restore_noise(progress: Progress) -> None:
        if "noise_rng" in progress.extra:
            noise.set_state(torch.tensor(progress.extra["noise_rng"], dtype=torch.uint8))

    state = TrainingState(paths.partial("train_gen", name))
    parent = tracking.read_run_reference(paths.disc_model(name) / "mlflow_run.json")["run_id"]
    logger = RunLogger(accelerator, params, repo_root, experiment=name, run_name=f"{name}/gen",
                       tags={"stage": "gen", "benchmark": name, "seed": params.train.seed,
                             "world_size": accelerator.num_processes, "global_batch": settings.batch_size,
                             "diffusion_steps": params.diffusion.steps,
                             "git_commit": tracking.git_commit(repo_root)},
                       state=state, curve="loss/generative", parent_run_id=parent)
    with logger:
        logger.log_params(flatten(params))
        result = run_training(
            accelerator=accelerator, objective=objective, trainable=generator, optimizer=optimizer,
            scheduler=scheduler, batches=batches, validate=validate,
            settings=LoopSettings(total_steps=settings.steps, log_every=settings.log_every,
                                  val_every=settings.val_every, grad_clip=settings.grad_clip,
                                  checkpoint_every=min(settings.val_every, 500), ema_decay=settings.ema_decay),
            state=state, log_metrics=logger.log_metrics, on_resume=restore_noise,
            extra_state=lambda: {**logger.extra_state(), "noise_rng": noise.get_state().tolist()},
        )
        if accelerator.is_main_process:
            out_dir = paths.gen_model(name)
            save_module(result.best_state, out_dir, {
                "stage": "gen", "benchmark": name, "width": width,
                "frame_temperature": settings.frame_temperature,
                "diffusion": {"steps": params.diffusion.steps, "schedule": params.diffusion.schedule},
                "selected": {"source": result.best_source, "step": result.best_step,
                             "val_t2v_rerank_R1": result.best_value, "split": "val"},
                "steps_per_second": result.steps_per_second,
            })
            logger.finish(out_dir / "mlflow_run.json", summary={
                "selected/val_t2v_rerank_R1": result.best_value, "selected/step": result.best_step,
                "perf/final_steps_per_second": result.steps_per_second},
                tags={"selected_source": result.best_source})
            paths.plots(name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(state.log_csv, paths.plots(name) / "gen_loss.csv")
    accelerator.wait_for_everyone()
    return {"best_source": result.best_source, "best_value": result.best_value}
