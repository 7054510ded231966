"""Batched diffusion re-ranking of all queries at once vs the official loop over 32-query blocks.

Both variants call the same `rerank_t2v` with the same seeded start noise; the official evaluation runs
DDIM separately for each block of 32 queries (reference §7), ours denoises `--query-batch` queries per
DDIM run. Outputs are asserted equal; the ratio of wall times is printed (measured in one run).

    .venv/bin/python benchmarks/rerank_batched_vs_blocks.py                      # ViT-B/32 width, 256 queries
    .venv/bin/python benchmarks/rerank_batched_vs_blocks.py --queries 1000 --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

from diffusionret.diffusion import create_diffusion
from diffusionret.model.denoiser import Generator
from diffusionret.rerank import rerank_t2v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--videos", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--query-batch", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    Q, V, T, D = args.queries, args.videos, args.frames, args.width
    scores = torch.randn(Q, V, generator=generator).to(device)  # (Q, V)
    sentence = torch.randn(Q, D, generator=generator).to(device)  # (Q, D)
    frames = torch.randn(V, T, D, generator=generator).to(device)  # (V, T, D)
    mask = torch.ones(V, T, dtype=torch.bool, device=device)
    denoiser = Generator(D, seed=0).t2v.to(device).eval()
    diffusion = create_diffusion(args.steps)

    def run(query_batch: int) -> tuple[torch.Tensor, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = rerank_t2v(scores, sentence, frames, mask, denoiser, diffusion, k=args.k, seed=0,
                            query_batch=query_batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result.scores, time.perf_counter() - start

    run(min(32, Q))  # warm-up
    blocks, blocks_s = run(32)
    batched, batched_s = run(args.query_batch)
    torch.testing.assert_close(batched, blocks, rtol=1e-5, atol=1e-5)
    print(f"{Q} queries x top-{args.k} of {V} videos, width {D}, {T} frames, {args.steps} DDIM steps, "
          f"{args.device}, {torch.get_num_threads()} threads")
    print(f"  official 32-query blocks: {blocks_s:8.2f} s")
    print(f"  batched ({min(args.query_batch, Q)} per run):   {batched_s:8.2f} s")
    print(f"  ratio (blocks / batched): {blocks_s / batched_s:.1f}x   outputs equal: yes")


if __name__ == "__main__":
    main()
