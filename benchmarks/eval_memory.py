"""Evaluation peak memory as the number of queries and videos grows.

Each size runs in a fresh process: WTI similarity of Q cached captions against V cached videos (chunked),
both re-ranking directions and the metrics, on random features of the given width. Printed: peak RSS above
the process's baseline, the bytes of the Q x V score matrices the evaluation keeps (stage 1, t2v and v2t
re-ranked), and the remainder, which should grow linearly in Q + V (features), not in Q x V.

    .venv/bin/python benchmarks/eval_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch
from diffusionret.evaluation.metrics import retrieval_metrics
from diffusionret.method.diffusion import create_diffusion
from diffusionret.method.rerank import rerank_t2v, rerank_v2t
from diffusionret.model.denoiser import Generator
from diffusionret.model.extractor import TextFeatures, VideoFeatures
from diffusionret.model.heads import build_head
size, width, words, frames = (int(value) for value in sys.argv[1:5])
torch.set_grad_enabled(False)
head, generator, diffusion = build_head("wti", width, 128), Generator(width, seed=0), create_diffusion(10)
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
g = torch.Generator().manual_seed(0)
text = TextFeatures(tokens=torch.randn(size, words, width, generator=g), mask=torch.ones(size, words, dtype=torch.long),
                    sentence=torch.randn(size, width, generator=g))
video = VideoFeatures(frames=torch.randn(size, frames, width, generator=g), mask=torch.ones(size, frames, dtype=torch.bool))
scores = head(text.tokens, text.mask, text.sentence, video.frames, video.mask)  # (Q, V)
t2v = rerank_t2v(scores, text.sentence, video.frames, video.mask, generator.t2v, diffusion, k=32, seed=0)
v2t = rerank_v2t(scores.T.contiguous(), video.frames, video.mask, text.sentence, generator.v2t, diffusion, k=32, seed=0)
retrieval_metrics(t2v.scores.numpy(), torch.arange(size).numpy(), scores_v2t=v2t.scores.numpy(), chunk_size=256)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kib": peak - baseline}))
"""


def main(sizes=(500, 1000, 2000, 4000), width: int = 64, words: int = 16, frames: int = 4) -> None:
    print(f"width {width}, {words} words, {frames} frames (Q = V = size)")
    print(f"{'size':>6} {'peak MiB':>9} {'QxV MiB':>8} {'rest MiB':>9} {'rest / (Q+V) KiB':>17}")
    for size in sizes:
        out = subprocess.run([sys.executable, "-c", CHILD, str(size), str(width), str(words), str(frames)],
                             capture_output=True, text=True, check=True).stdout
        peak_mib = json.loads(out.strip().splitlines()[-1])["peak_kib"] / 1024
        matrices_mib = 3 * size * size * 4 / 2**20  # stage-1, t2v and v2t re-ranked float32 matrices
        rest = peak_mib - matrices_mib
        print(f"{size:>6} {peak_mib:>9.1f} {matrices_mib:>8.1f} {rest:>9.1f} {rest * 1024 / (2 * size):>17.1f}")


if __name__ == "__main__":
    main()
