"""Training lists that look like test lists: negatives mined from each query's stage-1 top-k over the training gallery.

At test time the generator re-ranks a query's top-k under stage 1: candidates that already share most of what the
query says. With the official in-batch pick (`losses.select_candidates`) a training list is the whole random batch,
far easier than a test list. `train_gen.negatives: mined` instead scores every training caption against every
training video once with the frozen stage-1 head (`stage1_top_k`, in blocks: memory bounded by a block of rows, never
the whole caption x video matrix), keeps each caption's top-k videos and each video's top-k captions (items of the
query's own video excluded: they are positives, never negatives), and at every step draws each list's
`num_negatives` < k negatives at random from that top-k (`sample_negatives`), so lists vary between epochs.
"""

from __future__ import annotations

import numpy as np
import torch

from diffusionret.evaluation.scoring import ScoreFn, block_similarity
from diffusionret.model.extractor import TextFeatures, VideoFeatures


def stage1_top_k(score_fn: ScoreFn, text: TextFeatures, video: VideoFeatures, caption_video: torch.Tensor, k: int, *,
                 query_block: int = 256, video_block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each caption's top-k other videos (C, k) and each video's top-k captions of other videos (V, k).

    Sorted by descending stage-1 score, ties by the lower index. caption_video (C,) is each caption's video index.
    Scores are computed `query_block` captions x `video_block` videos at a time; the video side keeps a running
    top-k, so memory is O(query_block x V + V x k), never C x V.
    """
    num_captions, num_videos = len(text), len(video)
    caption_video = torch.as_tensor(caption_video, dtype=torch.long)
    per_video = torch.bincount(caption_video, minlength=num_videos)  # captions of each video
    if not 1 <= k <= num_videos - 1 or k > num_captions - int(per_video.max()):
        raise ValueError(f"mined negatives: top-k {k} needs at least k + 1 training videos ({num_videos}) and k "
                         f"captions of other videos per video; lower train_gen.mined_top_k")
    t2v = torch.empty(num_captions, k, dtype=torch.long)  # (C, k) video indices
    best_scores = torch.full((num_videos, k), float("-inf"))  # (V, k) running top-k of the video rows
    best_captions = torch.full((num_videos, k), -1, dtype=torch.long)  # (V, k) caption indices
    for start in range(0, num_captions, query_block):
        stop = min(start + query_block, num_captions)
        block = block_similarity(score_fn, text[start:stop], video, query_block=stop - start,
                                 video_block=video_block)  # (b, V)
        own = caption_video[start:stop]  # (b,)
        block[torch.arange(stop - start), own] = float("-inf")  # the caption's own video is no negative
        t2v[start:stop] = block.argsort(dim=1, descending=True, stable=True)[:, :k]
        merged_scores = torch.cat([best_scores, block.T], dim=1)  # (V, k + b), earlier captions first
        merged_captions = torch.cat([best_captions, torch.arange(start, stop).expand(num_videos, -1)], dim=1)
        order = merged_scores.argsort(dim=1, descending=True, stable=True)[:, :k]  # ties: the lower caption index
        best_scores, best_captions = merged_scores.gather(1, order), merged_captions.gather(1, order)
    return t2v, best_captions


def sample_negatives(top_k: torch.Tensor, rows: np.ndarray, num_negatives: int, seed: int, step: int) -> torch.Tensor:
    """num_negatives distinct items per row of top_k[rows] (b, k) -> (b, num_negatives), uniformly without
    replacement; a pure function of (seed, step, rows), so a resumed run draws the same lists."""
    k = top_k.shape[1]
    if not 1 <= num_negatives <= k:
        raise ValueError(f"sample_negatives: num_negatives={num_negatives} must be in [1, {k}]")
    keys = np.random.default_rng([seed, step, 7]).random((len(rows), k))  # (b, k) random order per row
    picks = torch.from_numpy(np.argsort(keys, axis=1)[:, :num_negatives])  # (b, K) positions in the top-k
    return top_k[torch.as_tensor(rows, dtype=torch.long)].gather(1, picks)
