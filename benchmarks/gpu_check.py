"""What a lent GPU machine measures in a few minutes, with no network and no dataset.

Builds the ViT-B/32-shaped DiffusionRet from its config (random weights) and prints one table:
stage-1 training throughput (bf16 autocast, fp32 master weights), stage-2 training throughput on cached
features, peak GPU memory of each, and the evaluation time of a synthetic 1000 x 1000 benchmark with
stage-1 WTI similarity and diffusion re-ranking (50 DDIM steps, top-32, both directions) plus metrics.

    bash benchmarks/gpu_check.sh              # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --smoke    # a seconds-long CPU run that checks the script works
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from diffusionret.config import TrainGenParams
from diffusionret.evaluation.metrics import retrieval_metrics
from diffusionret.method.diffusion import create_diffusion
from diffusionret.method.objectives import ContrastiveObjective, GenerationObjective
from diffusionret.method.rerank import rerank_t2v, rerank_v2t
from diffusionret.model.denoiser import Generator
from diffusionret.model.extractor import TextFeatures, VideoFeatures, build_feature_extractor


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, function, repeats: int) -> float:
    """Seconds per call after one warm-up call."""
    function()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    sync(device)
    return (time.perf_counter() - start) / repeats


def peak_memory_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny config and sizes on any device")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else nullcontext
    if args.smoke:
        backbone, layers, batch1, batch2, frames, words, size, steps, repeats = "tiny", 2, 8, 16, 4, 8, 64, 5, 1
        vocab = dict(vocab_size=300, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    else:
        backbone, layers, batch1, batch2, frames, words, size, steps, repeats = "vit-b-32", 4, 32, 128, 12, 32, 1000, 50, 5
        vocab = {}
    torch.manual_seed(0)
    extractor = build_feature_extractor(backbone, temporal="seqTransf", temporal_layers=layers, head="wti",
                                        **vocab).to(device)
    config = extractor.backbone.clip.config
    image, vocab_size, width = config.vision_config.image_size, config.text_config.vocab_size, extractor.backbone.width
    rows = []

    # stage 1: a full training step of the extractor
    batch = {"input_ids": torch.randint(3, vocab_size - 2, (batch1, words), device=device),
             "attention_mask": torch.ones(batch1, words, dtype=torch.long, device=device),
             "frames": torch.randint(0, 256, (batch1, frames, image, image, 3), dtype=torch.uint8, device=device),
             "frame_mask": torch.ones(batch1, frames, dtype=torch.bool, device=device)}
    objective = ContrastiveObjective(extractor)
    optimizer = torch.optim.AdamW([p for p in extractor.parameters() if p.requires_grad], lr=1e-5)

    def stage1_step() -> None:
        with autocast():
            objective.backward_step(batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(device, stage1_step, repeats)
    rows.append(("stage 1 train step", f"batch {batch1} x {frames} frames", 1 / seconds, batch1 / seconds,
                 peak_memory_gib(device)))

    # stage 2: denoisers on cached features
    extractor.requires_grad_(False).eval()
    generator = Generator(width, seed=0).to(device)
    cached = {"text_tokens": torch.randn(batch2, words, width, device=device),
              "text_mask": torch.ones(batch2, words, dtype=torch.long, device=device),
              "sentence": torch.randn(batch2, width, device=device),
              "video_frames": torch.randn(batch2, frames, width, device=device),
              "video_mask": torch.ones(batch2, frames, dtype=torch.bool, device=device),
              "video_key": torch.arange(batch2, device=device)}
    settings = TrainGenParams(global_batch=batch2, num_negatives=batch2 - 1)
    noise = torch.Generator(device=device).manual_seed(0)
    gen_objective = GenerationObjective(generator, create_diffusion(steps), extractor, settings, noise)
    gen_optimizer = torch.optim.AdamW(generator.parameters(), lr=1e-4)

    def stage2_step() -> None:
        with autocast():
            gen_objective.backward_step(cached)
        gen_optimizer.step()
        gen_optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(device, stage2_step, repeats)
    rows.append(("stage 2 train step", f"batch {batch2}, {batch2} candidates", 1 / seconds, batch2 / seconds,
                 peak_memory_gib(device)))

    # evaluation: size x size synthetic benchmark with re-ranking in both directions
    generator.eval()
    text = TextFeatures(tokens=torch.randn(size, words, width, device=device),
                        mask=torch.ones(size, words, dtype=torch.long, device=device),
                        sentence=torch.randn(size, width, device=device))
    video = VideoFeatures(frames=torch.randn(size, frames, width, device=device),
                          mask=torch.ones(size, frames, dtype=torch.bool, device=device))
    diffusion = create_diffusion(steps)

    def evaluate() -> None:
        with torch.no_grad(), autocast():
            scores = extractor.similarity(text, video).float()  # (Q, V)
            t2v = rerank_t2v(scores, text.sentence, video.frames, video.mask, generator.t2v, diffusion, k=32, seed=0)
            v2t = rerank_v2t(scores.T.contiguous(), video.frames, video.mask, text.sentence, generator.v2t,
                             diffusion, k=32, seed=0)
        retrieval_metrics(t2v.scores.float().cpu().numpy(), torch.arange(size).numpy(),
                          scores_v2t=v2t.scores.float().cpu().numpy())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(device, evaluate, 1)
    rows.append((f"evaluate {size}x{size}", f"top-32 re-rank, {steps} DDIM steps", 1 / seconds, size / seconds,
                 peak_memory_gib(device)))

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"\n{backbone} on {name}, {'bf16 autocast' if bf16 else 'fp32'}, torch {torch.__version__}")
    print(f"| {'what':<22} | {'shape':<30} | {'calls/s':>8} | {'items/s':>9} | {'peak GiB':>8} |")
    print(f"|{'-' * 24}|{'-' * 32}|{'-' * 10}|{'-' * 11}|{'-' * 10}|")
    for what, shape, calls, items, memory in rows:
        print(f"| {what:<22} | {shape:<30} | {calls:>8.2f} | {items:>9.1f} | {memory:>8.2f} |")


if __name__ == "__main__":
    main()
