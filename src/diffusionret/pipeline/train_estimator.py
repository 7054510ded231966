"""`train_estimator` stage: pre-train HBI's Banzhaf estimator (the teacher `train_disc` distils from).

For `model.head: hbi`: a frozen trunk (the configured backbone as built, the seqTransf initialisation, random WTI
weight MLPs: the released recipe's zero-shot model; with the from-scratch `tiny` backbone its weights are random)
encodes random training pairs; the teacher learns the Monte-Carlo Banzhaf labels of the positive pairs' maps
(MSE), with BertAdam and the released warm-up cosine schedule. Writes models/<benchmark>/estimator/
(estimator.safetensors, estimator.json, loss.csv). For any other head it writes only a record saying no estimator
is needed, in a second.
"""

from __future__ import annotations

import time
from pathlib import Path

from diffusionret.config import Params
from diffusionret.pipeline.paths import Paths


def train_estimator(name: str, params: Params, paths: Paths) -> dict:
    """Run the stage for benchmark `name`; returns a short summary."""
    from diffusionret.model.estimator import write_not_needed

    out_dir = paths.estimator(name)
    if params.model.head != "hbi":
        write_not_needed(out_dir, params.model.head)
        return {"needed": False, "head": params.model.head}
    return _train(name, params, paths, out_dir)


def _train(name: str, params: Params, paths: Paths, out_dir: Path) -> dict:
    # lazy: torch and the model stack only when an estimator is trained (the other heads pay seconds)
    import numpy as np
    import torch

    from diffusionret.data.frames import load_frame_cache
    from diffusionret.data.records import load_annotations
    from diffusionret.model.backbone import NAMED_CLIP_CONFIGS, resolve_backbone
    from diffusionret.model.banzhaf import BanzhafModule
    from diffusionret.model.estimator import estimator_loss, positive_maps, save_estimator
    from diffusionret.model.extractor import build_feature_extractor
    from diffusionret.model.tokenizer import load_tokenizer, tokenize, train_bpe_tokenizer
    from diffusionret.training.optim import BertAdam, faithful_warmup_cosine_lambda

    bench, settings, model = params.benchmark(name), params.estimator, params.model
    annotations = load_annotations(paths.annotations(name, "train"))
    cache = load_frame_cache(paths.frames(name))
    if model.backbone in NAMED_CLIP_CONFIGS:  # the same BPE train_disc trains (deterministic in the captions)
        tokenizer = train_bpe_tokenizer(annotations.captions, out_dir / "tokenizer", model.tokenizer_vocab_size)
    else:
        tokenizer = load_tokenizer(resolve_backbone(model.backbone))
    ids, mask = tokenize(tokenizer, annotations.captions, bench.max_words)  # (C, L) each
    caption_rows = np.array([cache.row_of[annotations.video_ids[v]] for v in annotations.caption_video])  # (C,)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(settings.seed)
    vocabulary = (dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
                  if model.backbone in NAMED_CLIP_CONFIGS else {})
    trunk = build_feature_extractor(model.backbone, temporal=model.temporal, temporal_layers=model.temporal_layers,
                                    head="wti", frame_feature=model.frame_feature, frame_grid=model.frame_grid,
                                    **vocabulary).eval().requires_grad_(False).to(device)
    teacher = BanzhafModule(model.hbi.banzhaf_planes).to(device)
    per_epoch = max(len(caption_rows) // settings.global_batch, 1)
    steps = settings.steps if settings.steps is not None else settings.epochs * per_epoch
    schedule_steps = settings.schedule_epochs * per_epoch if settings.schedule_epochs else steps
    optimizer = BertAdam(teacher.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, faithful_warmup_cosine_lambda(schedule_steps, settings.warmup_proportion))
    draws = np.random.default_rng(settings.seed)
    labels_rng = torch.Generator().manual_seed(settings.seed)
    rows, started = ["step,loss,lr,seconds"], time.perf_counter()
    for step in range(1, steps + 1):
        batch = draws.choice(len(caption_rows), size=min(settings.global_batch, len(caption_rows)), replace=False)
        with torch.no_grad():
            text = trunk.encode_text(ids[batch].to(device), mask[batch].to(device))
            frames = torch.from_numpy(np.asarray(cache.frames[caption_rows[batch]])).to(device)  # (B, T, S, S, 3) uint8
            frame_mask = torch.from_numpy(np.asarray(cache.mask[caption_rows[batch]])).long().to(device)  # (B, T)
            video = trunk.encode_video(frames, frame_mask)
            maps, text_weights, video_weights = positive_maps(trunk, text.tokens, text.mask, video.frames, video.mask)
        loss = estimator_loss(teacher, maps, text.mask, video.mask, text_weights, video_weights,
                              draws=settings.mc_draws, generator=labels_rng, semantics=settings.label_semantics,
                              multiplier=settings.logit_multiplier, draw_chunk=settings.draw_chunk)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % settings.log_every == 0 or step in (1, steps):
            rows.append(f"{step},{loss.item():.6g},{scheduler.get_last_lr()[0]:.6g},"
                        f"{time.perf_counter() - started:.1f}")
            print(f"train_estimator@{name}: step {step}/{steps} loss {loss.item():.4g}", flush=True)
    record = {"trained_steps": steps, "final_loss": float(loss.item()), "label_semantics": settings.label_semantics,
              "mc_draws": settings.mc_draws, "logit_multiplier": settings.logit_multiplier,
              "banzhaf_planes": model.hbi.banzhaf_planes, "backbone": model.backbone,
              "max_words": bench.max_words, "max_frames": bench.max_frames, "seconds": time.perf_counter() - started}
    save_estimator(teacher, out_dir, record)
    (out_dir / "loss.csv").write_text("\n".join(rows) + "\n")
    return {"needed": True, **record}
