"""Counted FLOPs of the training steps and the GPU hours they imply.

Counts come from `torch.utils.flop_counter.FlopCounterMode` on real (random-weight) modules: it counts the
matrix products, convolutions and attention of a forward + backward pass (element-wise work is not counted,
so these are lower bounds of the arithmetic, and time projections from them assume the products dominate).

Stage 1 step at global batch B: B x (forward + backward of one clip's text and video encoders) + the
contrastive head and loss on the (B, B) similarity, counted separately at B because it grows as B^2
(the sum equals a direct count of the step at B; tested).
Stage 2 step: the generation objective (frozen WTI scores for the hard negatives, both denoisers on B queries
x B candidates, backward through the denoisers), counted directly at B.
Extraction: the forward pass of every caption and every video once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusionret.config import TrainGenParams
from diffusionret.method.diffusion import create_diffusion
from diffusionret.method.losses import contrastive_loss
from diffusionret.method.objectives import ContrastiveObjective, GenerationObjective
from diffusionret.model.denoiser import Generator
from diffusionret.model.extractor import TextFeatures, VideoFeatures

# Dense (no sparsity) tensor-core peaks from the vendors' data sheets, in TFLOP/s.
GPU_PEAK_TFLOPS = {
    "H200 (bf16)": 989.0,  # H200 SXM: 1,979 with 2:4 sparsity
    "RTX 3090 (fp16, fp32 accumulate)": 35.6,  # GA102 GeForce: half rate with fp32 accumulate (71 with fp16)
}


def count_flops(function: Callable[[], object]) -> int:
    """FLOPs of the matrix products, convolutions and attention that `function()` runs (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class StepFlops:
    clip_train: int  # forward + backward of one caption + one video (T frames) through the encoders
    text_forward: int  # forward of one caption (what `extract` runs per caption)
    video_forward: int  # forward of one video of T frames (what `extract` runs per video)
    head_train: int  # contrastive head + loss at the global batch (forward + backward)
    step: int  # one stage-1 step at the global batch
    batch: int


def stage1_flops(extractor, *, batch: int, frames: int, words: int) -> StepFlops:
    """Counted FLOPs of one stage-1 step of `extractor` at global batch `batch` (frames, words per clip)."""
    config = extractor.backbone.clip.config
    image, vocab = config.vision_config.image_size, config.text_config.vocab_size
    width = extractor.backbone.width
    device = next(extractor.parameters()).device
    one = {"input_ids": torch.randint(3, vocab - 2, (1, words), device=device),
           "attention_mask": torch.ones(1, words, dtype=torch.long, device=device),
           "frames": torch.randint(0, 256, (1, frames, image, image, 3), dtype=torch.uint8, device=device),
           "frame_mask": torch.ones(1, frames, dtype=torch.bool, device=device)}
    objective = ContrastiveObjective(extractor)
    clip_train = count_flops(lambda: objective.backward_step(one))
    with torch.no_grad():
        text_forward = count_flops(lambda: extractor.encode_text(one["input_ids"], one["attention_mask"]))
        video_forward = count_flops(lambda: extractor.encode_video(one["frames"], one["frame_mask"]))
    extractor.zero_grad(set_to_none=True)

    def head_step(batch: int) -> None:
        text = TextFeatures(tokens=torch.randn(batch, words, width, device=device, requires_grad=True),
                            mask=torch.ones(batch, words, dtype=torch.long, device=device),
                            sentence=torch.randn(batch, width, device=device, requires_grad=True))  # (B, L, D), (B, D)
        video = VideoFeatures(frames=torch.randn(batch, frames, width, device=device, requires_grad=True),
                              mask=torch.ones(batch, frames, dtype=torch.bool, device=device))  # (B, T, D)
        contrastive_loss(extractor.similarity(text, video), extractor.logit_scale).backward()

    head_train, head_one = count_flops(lambda: head_step(batch)), count_flops(lambda: head_step(1))
    extractor.zero_grad(set_to_none=True)
    # clip_train already holds the head at batch 1 (its token/frame weight MLPs grow with B, the WTI with B^2)
    return StepFlops(clip_train=clip_train, text_forward=text_forward, video_forward=video_forward,
                     head_train=head_train, step=batch * (clip_train - head_one) + head_train, batch=batch)


def stage2_flops(extractor, *, batch: int, frames: int, words: int, diffusion_steps: int,
                 frame_temperature: float = 1.0) -> int:
    """Counted FLOPs of one stage-2 step at global batch `batch` (B - 1 negatives per query)."""
    width = extractor.backbone.width
    device = next(extractor.parameters()).device
    generator = Generator(width, frame_temperature=frame_temperature, seed=0).to(device)
    settings = TrainGenParams(global_batch=batch, num_negatives=batch - 1, frame_temperature=frame_temperature)
    noise = torch.Generator(device=device).manual_seed(0)
    objective = GenerationObjective(generator, create_diffusion(diffusion_steps), extractor, settings, noise)
    cached = {"text_tokens": torch.randn(batch, words, width, device=device),  # (B, L, D)
              "text_mask": torch.ones(batch, words, dtype=torch.long, device=device),
              "sentence": torch.randn(batch, width, device=device),  # (B, D)
              "video_frames": torch.randn(batch, frames, width, device=device),  # (B, T, D)
              "video_mask": torch.ones(batch, frames, dtype=torch.bool, device=device),
              "video_key": torch.arange(batch, device=device)}
    return count_flops(lambda: objective.backward_step(cached))


def hours(total_flops: float, peak_tflops: float, utilisation: float, devices: int = 1) -> float:
    """Wall hours of `total_flops` on `devices` GPUs sustaining `utilisation` of their peak."""
    return total_flops / (peak_tflops * 1e12 * utilisation * devices) / 3600.0


@dataclass(frozen=True)
class Workload:
    """What one benchmark's stages compute (defaults: MSRVTT-9k with the official recipe)."""

    train_captions: int = 180_000  # every caption is one training sample
    train_videos: int = 9_000
    test_pairs: int = 1_000
    epochs: int = 5  # per stage

    def steps(self, batch: int) -> int:
        """Optimiser steps of `epochs` epochs at global batch `batch` (the last partial batch dropped)."""
        return self.epochs * (self.train_captions // batch)


def projection(stage1: StepFlops, stage2_step: int, stage2_batch: int, workload: Workload,
               utilisation: float) -> list[dict]:
    """Projected compute hours of stage 1, extraction and stage 2 on one H200 and on 2 x RTX 3090."""
    extract = ((workload.train_captions + workload.test_pairs) * stage1.text_forward
               + (workload.train_videos + workload.test_pairs) * stage1.video_forward)
    rows = []
    for what, total in (("stage 1 (train_disc)", stage1.step * workload.steps(stage1.batch)),
                        ("extract", extract),
                        ("stage 2 (train_gen)", stage2_step * workload.steps(stage2_batch))):
        row = {"stage": what, "pflop": total / 1e15}
        for gpu, peak in GPU_PEAK_TFLOPS.items():
            devices = 2 if gpu.startswith("RTX 3090") else 1
            row[f"{devices} x {gpu}" if devices > 1 else gpu] = hours(total, peak, utilisation, devices)
        rows.append(row)
    return rows
