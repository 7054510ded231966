"""Stage-1 step time of the frame features (`model.frame_feature` cls vs cls+grid at grid 2 and 4), side by side.

One training step = forward, backward and AdamW on a batch of the default tiny shapes (64 captions of 16 tokens,
64 videos of 4 frames of 32 px, seqTransf with 2 layers, WTI). The variants are timed in interleaved rounds and
the medians printed with their ratio to `cls`.

    .venv/bin/python benchmarks/frame_feature_step_time.py [--rounds 7 --steps 5 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffusionret.method.losses import contrastive_loss
from diffusionret.model.extractor import build_feature_extractor

VARIANTS = (("cls", "cls", 2), ("cls+grid, grid 2", "cls+grid", 2), ("cls+grid, grid 4", "cls+grid", 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch, words, frames_per_video = args.batch, 16, 4
    ids = torch.randint(3, 400, (batch, words))  # (B, L)
    text_mask = torch.ones(batch, words, dtype=torch.long)
    frames = torch.randint(0, 256, (batch, frames_per_video, 32, 32, 3), dtype=torch.uint8)  # (B, T, S, S, 3)
    frame_mask = torch.ones(batch, frames_per_video, dtype=torch.long)
    models = {}
    for name, feature, grid in VARIANTS:
        torch.manual_seed(0)
        extractor = build_feature_extractor("tiny", temporal="seqTransf", temporal_layers=2, head="wti",
                                            vocab_size=400, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                                            frame_feature=feature, frame_grid=grid)
        optimizer = torch.optim.AdamW([p for p in extractor.parameters() if p.requires_grad], lr=1e-3)
        models[name] = (extractor, optimizer)

    def step(extractor, optimizer) -> None:
        optimizer.zero_grad()
        contrastive_loss(extractor(ids, text_mask, frames, frame_mask), extractor.logit_scale).backward()
        optimizer.step()

    seconds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (extractor, optimizer) in models.items():
            step(extractor, optimizer)  # warm-up
            start = time.perf_counter()
            for _ in range(args.steps):
                step(extractor, optimizer)
            seconds[name].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(seconds["cls"])
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name}: {1000 * median:.0f} ms/step ({1 / median:.1f} steps/s), ratio to cls {median / base:.2f}")


if __name__ == "__main__":
    main()
