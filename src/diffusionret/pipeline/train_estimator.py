"""`train_estimator` stage: pre-train HBI's Banzhaf estimator (the teacher `train_disc` distils from).

For `model.head: hbi`: a frozen trunk (the configured backbone as built, the seqTransf initialisation, random WTI
weight MLPs: the released recipe's zero-shot model; with the from-scratch `tiny` backbone its weights are random)
encodes random training pairs; the teacher learns the Monte-Carlo Banzhaf labels of the positive pairs' maps
(MSE), with BertAdam and the released warm-up cosine schedule. Writes models/<benchmark>/estimator/
(estimator.safetensors, estimator.json, loss.csv). For any other head it writes only a record saying no estimator
is needed, in a second.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from diffusionret.config import EstimatorParams, Params
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
    from diffusionret.model.estimator import positive_maps, save_estimator
    from diffusionret.model.extractor import build_feature_extractor
    from diffusionret.model.tokenizer import load_tokenizer, tokenize, train_bpe_tokenizer

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

    def step_inputs(step: int):
        """The frozen trunk's maps and weights of step `step`'s batch (a pure function of the seed and the step)."""
        batch = np.random.default_rng([settings.seed, step]).choice(
            len(caption_rows), size=min(settings.global_batch, len(caption_rows)), replace=False)
        with torch.no_grad():
            text = trunk.encode_text(ids[batch].to(device), mask[batch].to(device))
            frames = torch.from_numpy(np.asarray(cache.frames[caption_rows[batch]])).to(device)  # (B, T, S, S, 3)
            frame_mask = torch.from_numpy(np.asarray(cache.mask[caption_rows[batch]])).long().to(device)  # (B, T)
            video = trunk.encode_video(frames, frame_mask)
            maps, text_weights, video_weights = positive_maps(trunk, text.tokens, text.mask, video.frames, video.mask)
        return maps, text.mask, video.mask, text_weights, video_weights

    weights_settings = {key: value for key, value in dataclasses.asdict(settings).items()
                        if key not in ("log_every", "checkpoint_every", "draw_chunk")}  # no effect on the weights
    fingerprint = {"estimator": weights_settings, "model": dataclasses.asdict(model),
                   "benchmark": dataclasses.asdict(bench), "steps": steps, "schedule_steps": schedule_steps}
    started = time.perf_counter()
    loss, rows = fit_teacher(teacher, step_inputs, settings, steps=steps, schedule_steps=schedule_steps,
                             state_dir=paths.partial("train_estimator", name), fingerprint=fingerprint, label=name)
    record = {"trained_steps": steps, "final_loss": loss, "label_semantics": settings.label_semantics,
              "mc_draws": settings.mc_draws, "logit_multiplier": settings.logit_multiplier,
              "banzhaf_planes": model.hbi.banzhaf_planes, "backbone": model.backbone,
              "max_words": bench.max_words, "max_frames": bench.max_frames,
              "seconds": round(time.perf_counter() - started, 1)}
    save_estimator(teacher, out_dir, record)
    (out_dir / "loss.csv").write_text("\n".join(rows) + "\n")
    clear_progress(paths.partial("train_estimator", name), fingerprint)  # outputs written: a rerun starts fresh
    return {"needed": True, **record}


def _state_dir(root: Path, fingerprint: dict) -> Path:
    from diffusionret.training.state import fingerprint_key

    return root / fingerprint_key(fingerprint)


def clear_progress(root: Path, fingerprint: dict) -> None:
    """Remove this configuration's resumable state (other configurations' states stay)."""
    import shutil

    shutil.rmtree(_state_dir(root, fingerprint), ignore_errors=True)


def fit_teacher(teacher, step_inputs, settings: EstimatorParams, *, steps: int, schedule_steps: int, state_dir: Path,
                fingerprint: dict, label: str) -> tuple[float, list[str]]:
    """Train `teacher` for `steps` steps on `step_inputs(step)` -> (maps, text mask, video mask, text weights,
    video weights); BertAdam at lr x the released warm-up cosine of step / schedule_steps (not clamped: it climbs
    back after schedule_steps), labels drawn from a generator seeded by (seed, step). Every
    settings.checkpoint_every steps the state is saved under state_dir/<fingerprint key>, and a run with the
    same fingerprint continues from there. Returns the last loss and the loss-curve rows."""
    import numpy as np
    import torch

    from diffusionret.model.estimator import estimator_loss, load_progress, save_progress
    from diffusionret.training.optim import BertAdam, faithful_warmup_cosine_lambda

    directory = _state_dir(state_dir, fingerprint)
    optimizer = BertAdam(teacher.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = faithful_warmup_cosine_lambda(schedule_steps, settings.warmup_proportion)
    done, rows = load_progress(directory, teacher, optimizer, fingerprint)
    if done:
        print(f"train_estimator@{label}: resuming after step {done} ({directory})", flush=True)
    rows = rows or ["step,loss,lr"]
    loss_value = float("nan")
    for step in range(done + 1, steps + 1):
        maps, text_mask, video_mask, text_weights, video_weights = step_inputs(step)
        seed = int(np.random.SeedSequence([settings.seed, step]).generate_state(1)[0])
        loss = estimator_loss(teacher, maps, text_mask, video_mask, text_weights, video_weights,
                              draws=settings.mc_draws, generator=torch.Generator().manual_seed(seed),
                              semantics=settings.label_semantics, multiplier=settings.logit_multiplier,
                              draw_chunk=settings.draw_chunk)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * schedule(step - 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.item())
        if step % settings.log_every == 0 or step in (1, steps):
            rows.append(f"{step},{loss_value:.6g},{settings.lr * schedule(step - 1):.6g}")
            print(f"train_estimator@{label}: step {step}/{steps} loss {loss_value:.4g}", flush=True)
        if step % settings.checkpoint_every == 0 and step < steps:
            save_progress(directory, teacher, optimizer, step, fingerprint, rows)
    return loss_value, rows
