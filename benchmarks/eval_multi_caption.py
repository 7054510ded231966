"""Evaluation cost of the multi-caption synthetic test set: `score_cell` (t2v + v2t + QB-Norm banks, every DDIM
draw) on the 1,000-caption test set and on its 200-caption subset (first caption of each video), and the stage-2
validation metric (`rerank_val_r1`) on val 1,000 vs 200 captions; in one process, one after the other.

Needs the outputs of a default `make repro` (models/synthetic, data/features/synthetic/synthetic). The in-distribution
cell only (an OOD cell adds the OOD-detection re-ranking of both test sets, which grows the same way).
"""
import time
from pathlib import Path
import numpy as np, torch
from diffusionret.config import load_params
from diffusionret.pipeline.paths import Paths
from diffusionret.pipeline.evaluate import rerank_settings
from diffusionret.features.cache import load_split_features, SplitFeatures
from diffusionret.model.checkpoint import load_extractor, load_generator
from diffusionret.method.diffusion import create_diffusion
from diffusionret.evaluation.cell import score_cell
from diffusionret.pipeline.train_gen import rerank_val_r1
from diffusionret.data.records import SplitAnnotations
from diffusionret.model.extractor import TextFeatures

params = load_params("params.yaml"); paths = Paths(Path(".").resolve(), params.data)
ex, _ = load_extractor(paths.disc_model("synthetic")); gen, _ = load_generator(paths.gen_model("synthetic"))
diff = create_diffusion(params.diffusion.steps, params.diffusion.schedule)
rr = rerank_settings(params)
feat = paths.features("synthetic", "synthetic")
train = load_split_features(feat, "train", "disk")

def first_caption_subset(f: SplitFeatures) -> SplitFeatures:
    cv = np.asarray(f.annotations.caption_video)
    keep = np.array([np.flatnonzero(cv == v)[0] for v in range(f.annotations.num_videos)])
    idx = torch.as_tensor(keep)
    text = f.text[idx]
    ann = SplitAnnotations(f.annotations.benchmark, f.annotations.split, f.annotations.video_ids,
                           tuple(f.annotations.captions[i] for i in keep), tuple(int(cv[i]) for i in keep))
    return SplitFeatures(text=text, video=f.video, annotations=ann)

for split in ("test", "val"):
    full = load_split_features(feat, split, "memory")
    for name, f in (("200 (1 caption/video)", first_caption_subset(full)), ("1000 (5 captions/video)", full)):
        t = time.perf_counter()
        if split == "test":
            score_cell(ex, gen, diff, f, train, rerank=rr, chunk_size=params.eval.chunk_size,
                       bank_size=params.postprocess.qbnorm_bank_size, bank_seed=0)
        else:
            r1 = rerank_val_r1(gen, diff, ex, f, rr, params.eval.chunk_size)
        print(f"{split} {name}: {time.perf_counter() - t:.1f} s" + ("" if split == "test" else f" (R1 {r1:.1f})"),
              flush=True)
