"""HBI's Banzhaf labels: our vectorised generator vs a released-style Python loop over (i, j, draw).

The loop is timed on a few cells and extrapolated to all L x T cells (it costs the same per cell); the labels of
those cells are asserted equal to the vectorised ones (same coalitions). Run on an otherwise idle machine:
    .venv/bin/python benchmarks/banzhaf_labels.py                       # embedded default: B 64, L 24, T 4, 100 draws
    .venv/bin/python benchmarks/banzhaf_labels.py --batch 128 --words 24 --frames 12 --device cuda   # MSRVTT
"""

from __future__ import annotations

import argparse
import time

import torch

from diffusionret.model.banzhaf import INVALID_WEIGHT_LOGIT, banzhaf_labels, coalition_wti, draw_coalitions


def loop_cell(maps, text_mask, video_mask, text_weights, video_weights, coalitions, i, j):
    """The released loop for one cell: per draw, four whole-batch single-pair WTIs (official labels, f3 fixed)."""
    text_draws, video_draws = coalitions
    total = torch.zeros(maps.shape[0], dtype=maps.dtype, device=maps.device)
    for n in range(text_draws.shape[0]):
        s_t = text_draws[n, i, j][None] * text_mask
        s_t[:, i] = 0
        s_v = video_draws[n, i, j][None] * video_mask
        s_v[:, j] = 0
        grid = s_t[:, :, None] * s_v[:, None, :]
        text4 = text_weights.masked_fill(s_t == 0, INVALID_WEIGHT_LOGIT)
        video_all = video_weights.masked_fill(video_mask == 0, INVALID_WEIGHT_LOGIT)
        f4 = coalition_wti(maps, grid, text4, video_all)
        text1 = torch.softmax(text4, -1).masked_fill(s_t == 0, INVALID_WEIGHT_LOGIT)
        text1[:, i] = text_weights[:, i]
        video1 = torch.softmax(video_all, -1).masked_fill(video_mask == 0, INVALID_WEIGHT_LOGIT)
        video1[:, j] = video_weights[:, j]
        grid1 = grid.clone()
        grid1[:, i, j] = 1
        f1 = coalition_wti(maps, grid1, text1, video1)
        with_i = s_t.clone()
        with_i[:, i] = 1
        f2 = coalition_wti(maps, with_i[:, :, None] * s_v[:, None, :],
                           text_weights.masked_fill(with_i == 0, INVALID_WEIGHT_LOGIT), video_all)
        with_j = s_v.clone()
        with_j[:, j] = 1
        f3 = coalition_wti(maps, s_t[:, :, None] * with_j[:, None, :], text4, video_all)
        total += f1 - f2 - f3 + f4
    return total / text_draws.shape[0] * text_mask[:, i] * video_mask[:, j]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--words", type=int, default=24)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--draw-chunk", type=int, default=10)
    parser.add_argument("--loop-cells", type=int, default=4, help="cells timed with the loop (then extrapolated)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    b, length, frames = args.batch, args.words, args.frames
    text_mask = (torch.arange(length)[None] < torch.randint(4, length + 1, (b, 1), generator=generator)).float()
    video_mask = (torch.arange(frames)[None] < torch.randint(1, frames + 1, (b, 1), generator=generator)).float()
    maps = torch.rand(b, length, frames, generator=generator) * text_mask[:, :, None] * video_mask[:, None, :] * 1000
    text_weights = torch.softmax(torch.randn(b, length, generator=generator).masked_fill(text_mask == 0, -9e15), -1)
    video_weights = torch.softmax(torch.randn(b, frames, generator=generator).masked_fill(video_mask == 0, -9e15), -1)
    coalitions = draw_coalitions(args.draws, length, frames, generator)
    tensors = [t.to(device) for t in (maps, text_mask, video_mask, text_weights, video_weights)]
    coalitions = tuple(c.to(device) for c in coalitions)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    labels = banzhaf_labels(*tensors, coalitions, multiplier=1.0, draw_chunk=args.draw_chunk)
    sync()
    vectorised = time.perf_counter() - start
    cells = [(i % length, (i * 7) % frames) for i in range(args.loop_cells)]
    start = time.perf_counter()
    for i, j in cells:
        got = loop_cell(*tensors, coalitions, i, j)
        torch.testing.assert_close(got, labels[:, i, j], rtol=1e-4, atol=1e-3)
    sync()
    per_cell = (time.perf_counter() - start) / len(cells)
    loop = per_cell * length * frames
    print(f"B {b}, L {length}, T {frames}, {args.draws} draws on {device}: vectorised {vectorised:.3f} s per step; "
          f"released-style loop {loop:.1f} s per step ({length * frames * args.draws} sub-evaluations, "
          f"extrapolated from {len(cells)} cells); ratio {loop / vectorised:.0f}x; labels equal on the timed cells")


if __name__ == "__main__":
    main()
