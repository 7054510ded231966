"""Typed, validated parameters: `params.yaml` -> `Params`, once, at a stage's entry point.

Every section of params.yaml is mirrored by a dataclass below. Loading checks every key: an unknown key,
a wrong type or an out-of-range value raises `ConfigError` naming the key path, the value and what is
allowed. Library code never reads params.yaml; stages pass plain values from these objects.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diffusionret.data.readers import READERS as READER_FUNCTIONS
from diffusionret.data.readers import SPANNED_READERS, SPLIT_NAMES
from diffusionret.data.sources import SOURCES as BENCHMARK_SOURCES

SYNTHETIC_SHIFTS = ("none", "visual_text", "text")
REAL_BENCHMARKS = tuple(BENCHMARK_SOURCES)  # the download registry (data/sources.py)
SOURCES = ("synthetic",) + REAL_BENCHMARKS
READERS = tuple(READER_FUNCTIONS)  # the annotation-reader registry (data/readers/__init__.py)
CLIP_SPANS = ("video", "annotation", "fixed")
TEMPORAL_MODULES = ("seqTransf", "none")
SIMILARITY_HEADS = ("wti", "meanP", "emcl", "dicosa", "hbi")
AUGMENTATIONS = ("none", "rand-m7-n4-mstd0.5-inc1")
DECORRELATION_NORMALISERS = ("width_minus_1", "max_words")
HEADS_WITH_PARAMS = ("emcl", "dicosa", "hbi")  # heads with their own block under `model.<head>`
BANZHAF_LABELS = ("official", "textbook")  # estimator.label_semantics (model/banzhaf.py)
FRAME_FEATURES = ("cls", "cls+grid")  # model/backbone.py
OPTIMIZERS = ("adamw", "bertadam")
SCHEDULES = ("cosine", "linear")
PRECISIONS = ("fp32", "bf16")
NEGATIVE_SOURCES = ("batch", "mined")
GEN_SELECTION_METRICS = ("rerank_r1", "generator_r1")
RERANK_SOURCES = ("params", "training", "val")
BATCH_SAMPLERS = ("random", "neighbours")  # train.batch_sampler


class ConfigError(ValueError):
    """A parameter is unknown, of the wrong type, or out of range."""


def split_override(override: str) -> tuple[list[str], Any]:
    """A `dvc exp run -S`-style `section.key=value` string -> (["section", "key"], value read as YAML)."""
    if "=" not in override:
        raise ConfigError(f"override `{override}` must look like `section.key=value`")
    dotted, text = override.split("=", 1)
    return dotted.split("."), yaml.safe_load(text)


def _fail(path: str, value: Any, allowed: str) -> typing.NoReturn:
    raise ConfigError(f"params: `{path}` = {value!r} is not allowed; expected {allowed}")


def _check(condition: bool, path: str, value: Any, allowed: str) -> None:
    if not condition:
        _fail(path, value, allowed)


def _in(path: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, path, value, f"one of {', '.join(choices)}")


# ---------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticParams:
    """How the embedded benchmark is generated (only for `source: synthetic`)."""

    seed: int = 0
    shift: str = "none"  # none | visual_text (the OOD sibling) | text (unseen caption templates only)
    num_train: int = 2000
    num_val: int = 200
    num_test: int = 200
    captions_per_train_video: int = 2
    image_size: int = 64  # pixels of the generated videos
    fps: int = 8  # frame rate of the generated videos
    captions_per_eval_video: int = 5  # val/test captions per video, each from a different template (multi-caption)
    amplitude: tuple[float, ...] = (0.7, 0.7)  # [low, high]: path leg / frame side, uniform per video
    # (the original benchmark: [0.25, 0.35]; at 0.7 a path crosses the frame and motion survives the encoder)
    shape_size: tuple[float, ...] = ()  # [low, high]: shape side / frame side; [] = side // 6 to side // 4 (original)

    def validate(self, path: str) -> None:
        _in(f"{path}.shift", self.shift, SYNTHETIC_SHIFTS)
        _check(1 <= self.captions_per_eval_video <= 5, f"{path}.captions_per_eval_video",
               self.captions_per_eval_video, "an integer from 1 to 5 (each from a different caption template)")
        for name in ("num_train", "num_val", "captions_per_train_video"):
            _check(getattr(self, name) >= 0, f"{path}.{name}", getattr(self, name), "an integer >= 0")
        _check(self.num_test >= 2, f"{path}.num_test", self.num_test, "an integer >= 2")
        _check(self.image_size >= 16, f"{path}.image_size", self.image_size, "an integer >= 16")
        _check(self.fps >= 1, f"{path}.fps", self.fps, "an integer >= 1")
        _check(len(self.amplitude) == 2 and 0 < self.amplitude[0] <= self.amplitude[1] <= 0.7, f"{path}.amplitude",
               list(self.amplitude), "[low, high] with 0 < low <= high <= 0.7 (fractions of the frame side)")
        _check(len(self.shape_size) == 0 or (len(self.shape_size) == 2 and 0.05 <= self.shape_size[0]
                                             <= self.shape_size[1] <= 0.5), f"{path}.shape_size",
               list(self.shape_size), "[] (the original sizes) or [low, high] with 0.05 <= low <= high <= 0.5")


@dataclass(frozen=True)
class BenchmarkParams:
    """Per-benchmark settings (DVC `foreach` iterates over them)."""

    source: str  # what `download` does: generate (synthetic) or fetch/check a real benchmark
    reader: str = "msrvtt"  # annotation format
    max_words: int = 32  # tokens per caption incl. start/end tokens
    max_frames: int = 12  # frames per video after uniform subsampling
    fps: float = 1.0  # frames sampled per second of video before subsampling
    val_videos_from_train: int = 0  # carve a validation split from train when the benchmark has none
    # role (train / val / test) -> the benchmark's own split name (readers/<reader>.py SPLIT_FILES); val "" = carved
    splits: dict[str, str] = field(default_factory=lambda: {"train": "9k", "val": "", "test": "1k-A"})
    clip_span: str = "video"  # video (whole file) | annotation (the reader's span) | fixed (clip_span_s)
    clip_span_s: tuple[float, ...] = ()  # [start, end] seconds read from every video when clip_span is fixed
    synthetic: SyntheticParams | None = None  # generator settings (source: synthetic only; null otherwise)

    def validate(self, path: str) -> None:
        _in(f"{path}.source", self.source, SOURCES)
        _in(f"{path}.reader", self.reader, READERS)
        expected_reader = "msrvtt" if self.source == "synthetic" else self.source
        _check(self.reader == expected_reader, f"{path}.reader", self.reader,
               f"`{expected_reader}`, the annotation format of source `{self.source}`")
        _check(self.max_words >= 3, f"{path}.max_words", self.max_words, "an integer >= 3")
        _check(self.max_frames >= 1, f"{path}.max_frames", self.max_frames, "an integer >= 1")
        _check(self.fps > 0, f"{path}.fps", self.fps, "a number > 0")
        _check(self.val_videos_from_train >= 0, f"{path}.val_videos_from_train", self.val_videos_from_train, ">= 0")
        _check(set(self.splits) == {"train", "val", "test"}, f"{path}.splits", self.splits,
               "a mapping with exactly the keys train, val, test")
        names = SPLIT_NAMES[self.reader]
        for role, name in self.splits.items():
            allowed = names + ("",) if role == "val" else names
            _check(name in allowed, f"{path}.splits.{role}", name,
                   f"one of {', '.join(allowed)}" + (" ('' = carved from train)" if role == "val" else ""))
        if self.splits["val"] == "":
            _check(self.val_videos_from_train >= 1, f"{path}.val_videos_from_train", self.val_videos_from_train,
                   "an integer >= 1: splits.val is '' (the validation split is carved from train)")
        _in(f"{path}.clip_span", self.clip_span, CLIP_SPANS)
        if self.clip_span == "annotation":
            _check(self.reader in SPANNED_READERS, f"{path}.clip_span", self.clip_span,
                   f"video or fixed: only {', '.join(SPANNED_READERS)} annotations carry spans")
        if self.clip_span == "fixed":
            _check(len(self.clip_span_s) == 2 and 0 <= self.clip_span_s[0] < self.clip_span_s[1],
                   f"{path}.clip_span_s", list(self.clip_span_s), "[start, end] seconds with 0 <= start < end")
        else:
            _check(not self.clip_span_s, f"{path}.clip_span_s", list(self.clip_span_s),
                   "[] unless clip_span is fixed")
        if self.source == "synthetic":
            _check(self.synthetic is not None, f"{path}.synthetic", self.synthetic,
                   "a mapping of generator settings (required for source: synthetic)")
            self.synthetic.validate(f"{path}.synthetic")
        else:
            _check(self.synthetic is None, f"{path}.synthetic", "...", "null for a real benchmark")


@dataclass(frozen=True)
class DataParams:
    raw_root: str = "data/raw"  # where benchmark files live (may point at an existing copy anywhere)
    frames_root: str = "data/frames"
    features_root: str = "data/features"
    partial_root: str = "data/partial"  # resumable work in progress, outside DVC outputs
    manifests_root: str = "data/manifests"  # download's small DVC output per benchmark (files found, digests)
    allow_missing: bool = False  # skip annotated videos without a file (counted, logged to MLflow) instead of failing
    features_dtype: str = "float16"  # storage of the feature cache (computation is always float32)
    features_loading: str = "disk"  # token features read per batch from disk (disk), held whole (memory), or auto

    def validate(self, path: str) -> None:
        for name in ("raw_root", "frames_root", "features_root", "partial_root", "manifests_root"):
            _check(bool(getattr(self, name)), f"{path}.{name}", getattr(self, name), "a non-empty path")
        _in(f"{path}.features_dtype", self.features_dtype, ("float16", "float32"))
        _in(f"{path}.features_loading", self.features_loading, ("auto", "memory", "disk"))


@dataclass(frozen=True)
class PreprocessParams:
    image_size: int = 224  # short side resized, then centre-cropped to a square of this size
    workers: int = 2  # decoding processes

    def validate(self, path: str) -> None:
        _check(self.image_size >= 8, f"{path}.image_size", self.image_size, "an integer >= 8")
        _check(self.workers >= 1, f"{path}.workers", self.workers, "an integer >= 1")


@dataclass(frozen=True)
class EmclParams:
    """EMCL-Net head (`model.head: emcl`): text-conditioned pooling, EM low-rank reconstruction, cosine."""

    bases: int = 32  # K, the EM bases (official --centerK)
    em_iters: int = 9  # EM iterations (official --stage_num)
    momentum: float = 0.9  # basis update mu0 <- m mu0 + (1 - m) mean(U), training only
    lamd: float = 1.0  # lambda, the E-step temperature
    beta: float = 3.0  # weight of the reconstruction added to the features
    frame_temperature: float = 3.0  # tau of the text-conditioned frame pooling (official --temp)
    eval_block: int = 32  # evaluation tiles: each score depends on its eval_block x eval_block tile
    reinit_basis_on_load: bool = False  # true: the official behaviour, fresh +-1 bases when a checkpoint is loaded

    def validate(self, path: str) -> None:
        _check(self.bases >= 1, f"{path}.bases", self.bases, "an integer >= 1")
        _check(self.em_iters >= 1, f"{path}.em_iters", self.em_iters, "an integer >= 1")
        _check(0 <= self.momentum <= 1, f"{path}.momentum", self.momentum, "a number in [0, 1]")
        _check(self.lamd > 0, f"{path}.lamd", self.lamd, "a number > 0")
        _check(self.beta >= 0, f"{path}.beta", self.beta, "a number >= 0")
        _check(self.frame_temperature > 0, f"{path}.frame_temperature", self.frame_temperature, "a number > 0")
        _check(self.eval_block >= 1, f"{path}.eval_block", self.eval_block, "an integer >= 1")


@dataclass(frozen=True)
class DicosaParams:
    """DiCoSA head (`model.head: dicosa`): text-conditioned pooling, MLP-weighted chunk cosines, decorrelation loss."""

    concepts: int = 8  # C chunks of width D / C (official --center)
    frame_temperature: float = 3.0  # tau of the pooling (official README --temp 3)
    weight_hidden_mult: int = 4  # hidden width of the chunk-weight MLP = mult x w (official 256 = 4 x 64)
    alpha: float = 0.01  # weight of sum_k (Gamma_kk - 1)^2
    beta: float = 0.005  # weight of sum_{k != k'} Gamma_kk'^2
    decorrelation_normaliser: str = "width_minus_1"  # corrected (a true correlation); max_words = official

    def validate(self, path: str) -> None:
        _check(self.concepts >= 1, f"{path}.concepts", self.concepts, "an integer >= 1")
        _check(self.frame_temperature > 0, f"{path}.frame_temperature", self.frame_temperature, "a number > 0")
        _check(self.weight_hidden_mult >= 1, f"{path}.weight_hidden_mult", self.weight_hidden_mult, "an integer >= 1")
        _check(self.alpha >= 0, f"{path}.alpha", self.alpha, "a number >= 0")
        _check(self.beta >= 0, f"{path}.beta", self.beta, "a number >= 0")
        _in(f"{path}.decorrelation_normaliser", self.decorrelation_normaliser, DECORRELATION_NORMALISERS)


@dataclass(frozen=True)
class HbiParams:
    """HBI head (`model.head: hbi`): WTI plus two token-merging levels, Banzhaf distillation from a frozen estimator."""

    rate: tuple[float, ...] = (1.0, 0.0, 0.0)  # test-time weights of the entity, action, event levels (official)
    text_merge_rates: tuple[float, ...] = (0.25, 0.5)  # each merge keeps ceil(N rate) tokens (official t_rate0/1)
    video_merge_rates: tuple[float, ...] = (0.25, 0.5)  # (official v_rate0/1)
    knn: int = 3  # neighbours of the DPC-kNN density
    merge_heads: int = 8  # attention heads of the merged-token attention
    kl: float = 2.0  # weight of the hierarchical KL (README --kl 2; argparse default 0.2)
    skl: float = 1.0  # weight of the Banzhaf distillation KL (--skl 1)
    banzhaf_planes: int = 64  # channels of the Banzhaf CNNs (students and teacher)

    def validate(self, path: str) -> None:
        levels = 1 + len(self.text_merge_rates)
        _check(len(self.text_merge_rates) >= 1 and len(self.video_merge_rates) == len(self.text_merge_rates),
               f"{path}.video_merge_rates", list(self.video_merge_rates),
               f"as many rates as text_merge_rates ({len(self.text_merge_rates)}), at least one")
        for name in ("text_merge_rates", "video_merge_rates"):
            _check(all(0 < rate <= 1 for rate in getattr(self, name)), f"{path}.{name}", list(getattr(self, name)),
                   "rates in (0, 1]")
        _check(len(self.rate) == levels and all(weight >= 0 for weight in self.rate) and any(self.rate),
               f"{path}.rate", list(self.rate), f"{levels} weights >= 0 (entity + one per merge), not all 0")
        _check(self.knn >= 1, f"{path}.knn", self.knn, "an integer >= 1")
        _check(self.merge_heads >= 1, f"{path}.merge_heads", self.merge_heads, "an integer >= 1")
        _check(self.kl >= 0, f"{path}.kl", self.kl, "a number >= 0")
        _check(self.skl >= 0, f"{path}.skl", self.skl, "a number >= 0")
        _check(self.banzhaf_planes >= 1, f"{path}.banzhaf_planes", self.banzhaf_planes, "an integer >= 1")


@dataclass(frozen=True)
class EstimatorParams:
    """The `train_estimator` stage (model.head: hbi only): pre-trains HBI's Banzhaf teacher on Monte-Carlo labels
    of a frozen trunk (the backbone as built, seqTransf trick, random WTI weights), MSE loss."""

    steps: int | None = 100  # optimiser steps; exactly one of steps and epochs is set (official: epochs 10)
    epochs: int | None = None
    global_batch: int = 64  # pairs per step (official 128)
    lr: float = 1.0e-2  # official 1e-2, BertAdam warm-up cosine
    schedule_epochs: int | None = None  # official 5: the cosine runs over this many epochs (and restarts); null = all
    warmup_proportion: float = 0.1
    weight_decay: float = 0.2
    mc_draws: int = 100  # Monte-Carlo coalitions per label cell (official 100)
    draw_chunk: int = 10  # coalitions evaluated at once (memory only)
    logit_multiplier: float = 1000.0  # labels are computed on the maps times this (official 1000)
    label_semantics: str = "official"  # official (released labels after the f3 fix) | textbook (Banzhaf interaction)
    seed: int = 42
    log_every: int = 10
    checkpoint_every: int = 50  # resumable state (a killed run continues from here)

    def validate(self, path: str) -> None:
        _check(self.checkpoint_every >= 1, f"{path}.checkpoint_every", self.checkpoint_every, "an integer >= 1")
        _check((self.steps is None) != (self.epochs is None), f"{path}.steps", self.steps,
               "an integer when epochs is null, null when epochs is set")
        for name in ("steps", "epochs", "schedule_epochs"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"{path}.{name}", value, "an integer >= 1 or null")
        _check(self.global_batch >= 1, f"{path}.global_batch", self.global_batch, "an integer >= 1")
        _check(self.lr > 0, f"{path}.lr", self.lr, "a number > 0")
        _check(0 < self.warmup_proportion < 1, f"{path}.warmup_proportion", self.warmup_proportion, "in (0, 1)")
        _check(self.weight_decay >= 0, f"{path}.weight_decay", self.weight_decay, "a number >= 0")
        _check(self.mc_draws >= 1, f"{path}.mc_draws", self.mc_draws, "an integer >= 1")
        _check(self.draw_chunk >= 1, f"{path}.draw_chunk", self.draw_chunk, "an integer >= 1")
        _check(self.logit_multiplier > 0, f"{path}.logit_multiplier", self.logit_multiplier, "a number > 0")
        _in(f"{path}.label_semantics", self.label_semantics, BANZHAF_LABELS)
        _check(self.log_every >= 1, f"{path}.log_every", self.log_every, "an integer >= 1")


@dataclass(frozen=True)
class ModelParams:
    backbone: str = "tiny"  # a named CLIP config (tiny, vit-b-32), a local directory, or a hub id
    temporal: str = "seqTransf"
    temporal_layers: int = 4  # copied from the first layers of CLIP's text transformer
    head: str = "wti"
    tokenizer_vocab_size: int = 1000  # BPE trained on the training captions (named configs only)
    frame_feature: str = "cls"  # cls (paper) | cls+grid (beyond the paper: + pooled patch tokens, projected)
    frame_grid: int = 2  # cls+grid: G of the G x G grid the patch tokens are averaged on
    emcl: EmclParams = field(default_factory=EmclParams)  # read only when head = emcl
    dicosa: DicosaParams = field(default_factory=DicosaParams)  # read only when head = dicosa
    hbi: HbiParams = field(default_factory=HbiParams)  # read only when head = hbi

    def head_params(self) -> dict:
        """The chosen head's own settings as keyword arguments ({} for a head without a block)."""
        block = getattr(self, self.head, None) if self.head in HEADS_WITH_PARAMS else None
        return dataclasses.asdict(block) if block is not None else {}

    def validate(self, path: str) -> None:
        _check(bool(self.backbone), f"{path}.backbone", self.backbone, "a config name, a directory or a hub id")
        _in(f"{path}.temporal", self.temporal, TEMPORAL_MODULES)
        _in(f"{path}.head", self.head, SIMILARITY_HEADS)
        _check(self.temporal_layers >= 1, f"{path}.temporal_layers", self.temporal_layers, "an integer >= 1")
        _check(self.tokenizer_vocab_size >= 300, f"{path}.tokenizer_vocab_size", self.tokenizer_vocab_size,
               "an integer >= 300 (256 bytes plus merges)")
        _in(f"{path}.frame_feature", self.frame_feature, FRAME_FEATURES)
        _check(self.frame_grid >= 1, f"{path}.frame_grid", self.frame_grid, "an integer >= 1")
        for head in HEADS_WITH_PARAMS:
            getattr(self, head).validate(f"{path}.{head}")


@dataclass(frozen=True)
class DiffusionParams:
    steps: int = 50  # T, in training and in DDIM sampling (the checkpoint records it)
    schedule: str = "cosine"

    def validate(self, path: str) -> None:
        _check(self.steps >= 1, f"{path}.steps", self.steps, "an integer >= 1")
        _in(f"{path}.schedule", self.schedule, SCHEDULES)


@dataclass(frozen=True)
class StageTrainParams:
    """Optimisation settings of one training stage."""

    steps: int | None = 1000  # optimiser steps; exactly one of steps and epochs is set (the other null)
    global_batch: int = 64  # all processes together; each process takes global_batch / world_size
    micro_batch: int = 0  # per-process micro-batch for gradient accumulation (0 = the whole per-process batch)
    lr: float = 1e-4
    coef_lr: float = 1e-3  # CLIP parameters train at lr * coef_lr
    weight_decay: float = 0.2
    warmup_steps: int | None = 100  # exactly one of warmup_steps and warmup_proportion is set
    optimizer: str = "adamw"
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    val_every: int = 250  # validation of raw and EMA weights; the better one is kept
    log_every: int = 10
    checkpoint_every: int = 250  # resumable state saved every N steps (and at the end)
    keep_checkpoints: int = 1  # saved states kept (older ones are pruned)
    num_workers: int = 0  # data-loader workers
    # --- paper-mode schedule (issue 15): epochs, warm-up proportion, the official validation cadence ---
    epochs: int | None = None  # alternative to steps: steps = epochs x (training pairs // global_batch)
    warmup_proportion: float | None = None  # alternative to warmup_steps: a fraction of the steps (official 0.1)
    val_first_step: bool = False  # also validate after the first step (official)
    val_epoch_ends: bool = False  # also validate at the end of every epoch (official)

    def validate(self, path: str) -> None:
        _check((self.steps is None) != (self.epochs is None), f"{path}.steps", self.steps,
               f"exactly one of `{path}.steps` and `{path}.epochs` set (the other null); epochs = {self.epochs}")
        _check(self.steps is None or self.steps >= 1, f"{path}.steps", self.steps, "an integer >= 1 or null")
        _check(self.epochs is None or self.epochs >= 1, f"{path}.epochs", self.epochs, "an integer >= 1 or null")
        _check((self.warmup_steps is None) != (self.warmup_proportion is None), f"{path}.warmup_steps",
               self.warmup_steps, f"exactly one of `{path}.warmup_steps` and `{path}.warmup_proportion` set (the "
               f"other null); warmup_proportion = {self.warmup_proportion}")
        if self.warmup_proportion is not None:
            _check(0 <= self.warmup_proportion < 1, f"{path}.warmup_proportion", self.warmup_proportion,
                   "a number in [0, 1) or null")
        _check(self.global_batch >= 2, f"{path}.global_batch", self.global_batch, "an integer >= 2")
        _check(self.micro_batch >= 0, f"{path}.micro_batch", self.micro_batch, "an integer >= 0 (0 = no accumulation)")
        _check(self.checkpoint_every >= 1, f"{path}.checkpoint_every", self.checkpoint_every, "an integer >= 1")
        _check(self.keep_checkpoints >= 1, f"{path}.keep_checkpoints", self.keep_checkpoints, "an integer >= 1")
        _check(self.lr > 0 and math.isfinite(self.lr), f"{path}.lr", self.lr, "a number > 0")
        _check(self.coef_lr >= 0, f"{path}.coef_lr", self.coef_lr, "a number >= 0")
        _check(self.weight_decay >= 0, f"{path}.weight_decay", self.weight_decay, "a number >= 0")
        if self.warmup_steps is not None:
            _check(0 <= self.warmup_steps <= (self.steps if self.steps is not None else math.inf),
                   f"{path}.warmup_steps", self.warmup_steps, f"an integer in [0, steps={self.steps}]")
        _in(f"{path}.optimizer", self.optimizer, OPTIMIZERS)
        _check(self.grad_clip >= 0, f"{path}.grad_clip", self.grad_clip, "a number >= 0 (0 = off)")
        _check(0 <= self.ema_decay < 1, f"{path}.ema_decay", self.ema_decay, "a number in [0, 1)")
        _check(self.val_every >= 1, f"{path}.val_every", self.val_every, "an integer >= 1")
        _check(self.log_every >= 1, f"{path}.log_every", self.log_every, "an integer >= 1")
        _check(self.num_workers >= 0, f"{path}.num_workers", self.num_workers, "an integer >= 0")


@dataclass(frozen=True)
class TrainParams(StageTrainParams):
    """Stage 1 (discrimination): the feature extractor with the contrastive loss."""

    benchmarks: tuple[str, ...] = ("synthetic",)  # benchmarks a model is trained on (DVC foreach)
    seed: int = 42
    precision: str = "fp32"
    accelerate_config: str = "configs/accelerate/cpu.yaml"  # how `accelerate launch` starts the processes
    augment: str = "none"  # training-frame augmentation: none | rand-m7-n4-mstd0.5-inc1 (EMCL/HBI/DiCoSA's RandAugment)
    # beyond the paper: `neighbours` builds batches of TF-IDF caption neighbours (data/neighbours.py)
    batch_sampler: str = "random"
    neighbour_group: int = 8  # captions per group: an anchor and group - 1 of its text neighbours
    neighbour_pool: int = 16  # nearest captions an anchor's group is drawn from
    neighbour_share: float = 1.0  # fraction of the batch in neighbour groups; the rest are random captions
    neighbour_from_step: int = 0  # neighbours: random batches before this step (a warm-up), neighbour batches from it

    def validate(self, path: str) -> None:
        super().validate(path)
        _in(f"{path}.batch_sampler", self.batch_sampler, BATCH_SAMPLERS)
        largest = self.global_batch if self.batch_sampler == "neighbours" else math.inf  # a group fits a batch
        _check(2 <= self.neighbour_group <= largest, f"{path}.neighbour_group", self.neighbour_group,
               f"an integer in [2, global_batch = {self.global_batch}] (with batch_sampler neighbours)")
        _check(0 < self.neighbour_share <= 1, f"{path}.neighbour_share", self.neighbour_share, "a number in (0, 1]")
        _check(self.neighbour_from_step >= 0, f"{path}.neighbour_from_step", self.neighbour_from_step,
               "an integer >= 0 (the first step drawn from neighbour groups)")
        _check(self.neighbour_pool >= self.neighbour_group - 1, f"{path}.neighbour_pool", self.neighbour_pool,
               f"an integer >= neighbour_group - 1 = {self.neighbour_group - 1}")
        _check(self.accelerate_config.endswith((".yaml", ".yml")), f"{path}.accelerate_config",
               self.accelerate_config, "a path to an accelerate config .yaml")
        _check(len(self.benchmarks) >= 1, f"{path}.benchmarks", self.benchmarks, "a non-empty list")
        _in(f"{path}.precision", self.precision, PRECISIONS)
        _in(f"{path}.augment", self.augment, AUGMENTATIONS)


@dataclass(frozen=True)
class TrainGenParams(StageTrainParams):
    """Stage 2 (generation): only the two denoisers train, on cached frozen features."""

    num_negatives: int = 63  # hardest in-batch negatives per query (<= global_batch - 1)
    loss_temperature_inv: float = 100.0  # 1 / tau_g of the generation loss
    negative_value: float = 0.0  # x0 entry of the negatives (official --neg: 0 or -1)
    frame_temperature: float = 1.0  # tau_f of the denoisers' text-frame attention pooling
    faithful_negatives: bool = False  # the official hard-negative pick (may include the query's own item)
    # --- beyond the official code (official values: batch, 0, rerank_r1, [], []) ---
    negatives: str = "batch"  # batch: hardest in-batch (official); mined: from each query's stage-1 top-k (train gallery)
    mined_top_k: int = 32  # with negatives: mined, each list's negatives are drawn from this top-k (own video excluded)
    min_timestep: int = 0  # train on t in [min_timestep, T-1]; re-ranking then stops at this step
    select_by: str = "rerank_r1"  # checkpoint metric on val: rerank_r1 (official) | generator_r1 (tie-free)
    rerank_temperatures: tuple[float, ...] = ()  # with eval.rerank_from: val, the grids searched on val
    rerank_alphas: tuple[float, ...] = ()

    def validate(self, path: str) -> None:
        super().validate(path)
        _in(f"{path}.negatives", self.negatives, NEGATIVE_SOURCES)
        _in(f"{path}.select_by", self.select_by, GEN_SELECTION_METRICS)
        if self.negatives == "batch":
            _check(1 <= self.num_negatives <= self.global_batch - 1, f"{path}.num_negatives", self.num_negatives,
                   f"an integer in [1, global_batch - 1 = {self.global_batch - 1}]")
        else:
            _check(1 <= self.num_negatives < self.mined_top_k, f"{path}.num_negatives", self.num_negatives,
                   f"an integer in [1, mined_top_k - 1 = {self.mined_top_k - 1}] (each list samples from the top-k)")
        _check(self.mined_top_k >= 2, f"{path}.mined_top_k", self.mined_top_k, "an integer >= 2")
        _check(self.min_timestep >= 0, f"{path}.min_timestep", self.min_timestep,
               "an integer in [0, diffusion.steps - 1]")
        _check(all(value > 0 for value in self.rerank_temperatures), f"{path}.rerank_temperatures",
               self.rerank_temperatures, "a list of numbers > 0")
        _check(all(value >= 0 for value in self.rerank_alphas), f"{path}.rerank_alphas", self.rerank_alphas,
               "a list of numbers >= 0")
        _check(self.loss_temperature_inv > 0, f"{path}.loss_temperature_inv", self.loss_temperature_inv, "> 0")
        _check(self.negative_value in (0.0, -1.0), f"{path}.negative_value", self.negative_value, "0 or -1")
        _check(self.frame_temperature > 0, f"{path}.frame_temperature", self.frame_temperature, "> 0")


@dataclass(frozen=True)
class EvalParams:
    benchmarks: tuple[str, ...] = ("synthetic",)  # test sets every trained model is evaluated on
    batch_size: int = 128  # encoding batch
    rerank_k: int = 32  # candidates re-scored by the generator per query
    rerank_temperature: float = 1.0  # softmax(x0_hat * temperature)
    rerank_alpha: float = 1.0  # weight of the generator's probabilities added to the similarity
    rerank_query_batch: int = 1024  # queries denoised together
    seed: int = 0  # DDIM start noise of draw 0; draw i uses seed + i
    chunk_size: int = 256  # rows of the score matrix handled at once
    num_samples: int = 3  # DDIM draws per query; re-ranked metrics are their mean, with `<name>_std`
    faithful_msvd_grouping: bool = False  # also report the released off-by-one MSVD grouping (`*_faithful/`)
    selection: str = "val"  # split that chose the checkpoints: val, or test (the official protocol, tagged)
    # --- beyond the official code (official values: params, true) ---
    rerank_from: str = "params"  # temperature/alpha: params (the two keys above) | training (temperature =
    #                              train_gen.loss_temperature_inv) | val (chosen by train_gen on val)
    rerank_clamp_final: bool = True  # false: re-rank by the final x0_hat unclamped (no ties at the +1 clamp)
    bootstrap_resamples: int = 1000  # bootstrap resamples of the queries behind every CI and paired difference
    bootstrap_seed: int = 0  # seed of the resampled query indices
    ci_level: float = 0.95  # confidence level of every interval

    def validate(self, path: str) -> None:
        _check(len(self.benchmarks) >= 1, f"{path}.benchmarks", self.benchmarks, "a non-empty list")
        _in(f"{path}.rerank_from", self.rerank_from, RERANK_SOURCES)
        _check(self.bootstrap_resamples >= 2, f"{path}.bootstrap_resamples", self.bootstrap_resamples,
               "an integer >= 2 (1000 or more for a 95% interval)")
        _check(0.0 < self.ci_level < 1.0, f"{path}.ci_level", self.ci_level, "a number in (0, 1), e.g. 0.95")
        _check(self.num_samples >= 1, f"{path}.num_samples", self.num_samples, "an integer >= 1")
        _in(f"{path}.selection", self.selection, ("val", "test"))
        _check(self.batch_size >= 1, f"{path}.batch_size", self.batch_size, "an integer >= 1")
        _check(self.rerank_k >= 1, f"{path}.rerank_k", self.rerank_k, "an integer >= 1")
        _check(self.rerank_temperature > 0, f"{path}.rerank_temperature", self.rerank_temperature, "> 0")
        _check(self.rerank_alpha >= 0, f"{path}.rerank_alpha", self.rerank_alpha, ">= 0")
        _check(self.rerank_query_batch >= 1, f"{path}.rerank_query_batch", self.rerank_query_batch, ">= 1")
        _check(self.chunk_size >= 1, f"{path}.chunk_size", self.chunk_size, "an integer >= 1")


@dataclass(frozen=True)
class PostprocessParams:
    """Score post-processing reported beside the raw rows (QB-Norm, DSL; not in the official code)."""

    qbnorm_bank_size: int = 200  # training queries in each querybank (t2v: captions, v2t: videos), subsampled
    qbnorm_bank_seed: int = 0  # the deterministic subsample of the training split
    qbnorm_beta: float = 20.0  # inverse temperature of the dynamic inverted softmax (official 20)
    qbnorm_k: int = 1  # activation set: gallery items in the top-k of a bank query (official 1)
    qbnorm_min_count: int = 1  # ... at least this many times (DiCoSA's theta; official 1)
    dsl_temperature: float = 100.0  # dual softmax: softmax(temperature * scores) over the query axis
    qbnorm_beta_v2t: float | None = None  # v2t's own beta (DiCoSA: 70 / 70); null = qbnorm_beta
    qbnorm_min_count_v2t: int | None = None  # v2t's own theta (DiCoSA: 3 for t2v, 5 for v2t); null = qbnorm_min_count

    def qbnorm_settings(self, direction: str) -> dict:
        """beta, k and min_count of QB-Norm in `direction` (t2v, v2t)."""
        beta, min_count = self.qbnorm_beta, self.qbnorm_min_count
        if direction == "v2t":
            beta = beta if self.qbnorm_beta_v2t is None else self.qbnorm_beta_v2t
            min_count = min_count if self.qbnorm_min_count_v2t is None else self.qbnorm_min_count_v2t
        return {"beta": beta, "k": self.qbnorm_k, "min_count": min_count}

    def validate(self, path: str) -> None:
        if self.qbnorm_beta_v2t is not None:
            _check(self.qbnorm_beta_v2t > 0, f"{path}.qbnorm_beta_v2t", self.qbnorm_beta_v2t, "a number > 0 or null")
        if self.qbnorm_min_count_v2t is not None:
            _check(self.qbnorm_min_count_v2t >= 1, f"{path}.qbnorm_min_count_v2t", self.qbnorm_min_count_v2t,
                   "an integer >= 1 or null")
        _check(self.qbnorm_bank_size >= 1, f"{path}.qbnorm_bank_size", self.qbnorm_bank_size, "an integer >= 1")
        _check(self.qbnorm_beta > 0 and math.isfinite(self.qbnorm_beta), f"{path}.qbnorm_beta", self.qbnorm_beta,
               "a finite number > 0")
        _check(self.qbnorm_k >= 1, f"{path}.qbnorm_k", self.qbnorm_k, "an integer >= 1")
        _check(self.qbnorm_min_count >= 1, f"{path}.qbnorm_min_count", self.qbnorm_min_count, "an integer >= 1")
        _check(self.dsl_temperature > 0 and math.isfinite(self.dsl_temperature), f"{path}.dsl_temperature",
               self.dsl_temperature, "a finite number > 0")


@dataclass(frozen=True)
class TrackingParams:
    # sqlite file resolved against the repository root (never the working directory); the
    # MLFLOW_TRACKING_URI environment variable, when set, wins.
    tracking_uri: str = "sqlite:///mlruns.db"
    artifact_root: str = "mlruns"  # artifact store, resolved against the repository root
    experiment_prefix: str = "diffusionret"  # one experiment per benchmark: <prefix>/<benchmark>

    def validate(self, path: str) -> None:
        _check(bool(self.tracking_uri), f"{path}.tracking_uri", self.tracking_uri, "a non-empty URI")


@dataclass(frozen=True)
class DiagnosticsParams:
    """The `diagnose` stage (synthetic benchmarks only): attribute accuracy, generator-only ranks, noise levels, probes."""

    seed: int = 0  # random tie-breaking, the noise of the noise-level test, the query shuffle
    noise_fractions: tuple[float, ...] = (0.0, 0.4, 0.5, 1.0)  # noise-level test at t = min(floor(f T), T - 1)
    noise_draws: int = 4  # noise draws per list and noise level
    probe_c: float = 1.0  # inverse L2 strength of the logistic-regression probes (scikit-learn's C)
    probe_max_iter: int = 1000  # lbfgs iterations of a probe
    probe_backbone_frames: bool = True  # also probe the frame features before the temporal module (re-encodes frames)

    def validate(self, path: str) -> None:
        _check(len(self.noise_fractions) >= 1 and all(0.0 <= f <= 1.0 for f in self.noise_fractions),
               f"{path}.noise_fractions", self.noise_fractions, "a non-empty list of numbers in [0, 1]")
        _check(self.noise_draws >= 1, f"{path}.noise_draws", self.noise_draws, "an integer >= 1")
        _check(self.probe_c > 0, f"{path}.probe_c", self.probe_c, "> 0")
        _check(self.probe_max_iter >= 1, f"{path}.probe_max_iter", self.probe_max_iter, "an integer >= 1")


@dataclass(frozen=True)
class Params:
    seed: int = 42
    benchmarks: dict[str, BenchmarkParams] = field(default_factory=dict)
    data: DataParams = field(default_factory=DataParams)
    preprocess: PreprocessParams = field(default_factory=PreprocessParams)
    model: ModelParams = field(default_factory=ModelParams)
    diffusion: DiffusionParams = field(default_factory=DiffusionParams)
    train: TrainParams = field(default_factory=TrainParams)
    train_gen: TrainGenParams = field(default_factory=TrainGenParams)
    eval: EvalParams = field(default_factory=EvalParams)
    postprocess: PostprocessParams = field(default_factory=PostprocessParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    diagnostics: DiagnosticsParams = field(default_factory=DiagnosticsParams)
    estimator: EstimatorParams = field(default_factory=EstimatorParams)  # train_estimator (model.head: hbi)

    def validate(self) -> None:
        _check(len(self.benchmarks) >= 1, "benchmarks", self.benchmarks, "at least one benchmark")
        for name, bench in self.benchmarks.items():
            bench.validate(f"benchmarks.{name}")
        for section in ("data", "preprocess", "model", "diffusion", "train", "train_gen", "eval", "postprocess",
                        "tracking", "diagnostics", "estimator"):
            getattr(self, section).validate(section)
        _check(self.train_gen.min_timestep < self.diffusion.steps, "train_gen.min_timestep",
               self.train_gen.min_timestep, f"an integer in [0, diffusion.steps - 1 = {self.diffusion.steps - 1}]")
        for path, names in (("train.benchmarks", self.train.benchmarks), ("eval.benchmarks", self.eval.benchmarks)):
            for name in names:
                _check(name in self.benchmarks, path, name, f"a benchmark defined under `benchmarks` "
                       f"({', '.join(self.benchmarks)})")
        for name in self.train.benchmarks:
            _check(name in self.eval.benchmarks, "eval.benchmarks", list(self.eval.benchmarks),
                   f"a list that includes every trained benchmark (add `{name}`): its own test set and "
                   f"cached features come from the evaluation grid")

    def benchmark(self, name: str) -> BenchmarkParams:
        """Settings of one benchmark, with a clear error for an unknown name."""
        if name not in self.benchmarks:
            _fail("benchmarks", name, f"one of {', '.join(self.benchmarks)}")
        return self.benchmarks[name]


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def _convert(value: Any, annotation: Any, path: str) -> Any:
    """Check `value` against a type annotation and build nested dataclasses."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            _fail(path, value, f"a mapping of {annotation.__name__} fields")
        return _build(annotation, value, path)
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        if not isinstance(value, dict):
            _fail(path, value, "a mapping")
        return {_convert(k, key_type, path): _convert(v, value_type, f"{path}.{k}") for k, v in value.items()}
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            _fail(path, value, "a list")
        return tuple(_convert(v, item_type, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return _convert(value, option, path)
            except ConfigError as error:
                errors.append(str(error).split("; expected ", 1)[-1])
        _fail(path, value, " or ".join(errors))
    if annotation is type(None):
        _check(value is None, path, value, "null")
        return None
    if annotation is bool:
        _check(isinstance(value, bool), path, value, "true or false")
        return value
    if annotation is int:
        _check(isinstance(value, int) and not isinstance(value, bool), path, value, "an integer")
        return value
    if annotation is float:
        # YAML reads `1e-4` as a string (no dot before the exponent); accept numeric strings.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                _fail(path, value, "a number")
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), path, value, "a number")
        # `.inf` / `.nan` (YAML) or "inf" / "nan" (strings) would pass every `> 0` range check below
        _check(math.isfinite(value), path, value, "a finite number (not .inf or .nan)")
        return float(value)
    if annotation is str:
        _check(isinstance(value, str), path, value, "a string")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} at {path}")


def _build(cls: type, data: dict, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"params: unknown key `{where}{unknown[0]}`; allowed keys{' of `' + path + '`' if path else ''}: "
            f"{', '.join(sorted(names))}"
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], f"{path}.{f.name}" if path else f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"params: missing required key `{path}.{f.name}`")
    return cls(**kwargs)


def params_from_dict(data: dict) -> Params:
    """Build and validate `Params` from a parsed params.yaml."""
    if not isinstance(data, dict):
        raise ConfigError(f"params: the file must hold a mapping of sections, got {type(data).__name__}")
    params = _build(Params, data, "")
    params.validate()
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml once, validate every key, and return the typed parameters."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} not found; run the stage from the repository root")
    with path.open() as handle:
        try:
            data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from error
    try:
        return params_from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of (nested) params, for MLflow `log_params`."""
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, tuple):
        value = list(value)
    return {prefix: value}


def batch_partition(settings: StageTrainParams, world_size: int, section: str) -> tuple[int, int]:
    """(per-process batch, micro-batches per process) from the global batch and the world size."""
    if settings.global_batch % world_size:
        raise ConfigError(f"params: `{section}.global_batch` = {settings.global_batch} does not divide by the "
                          f"{world_size} processes; choose a multiple of {world_size}")
    per_process = settings.global_batch // world_size
    micro = settings.micro_batch or per_process
    if per_process % micro:
        raise ConfigError(f"params: `{section}.micro_batch` = {settings.micro_batch} does not divide the "
                          f"per-process batch {per_process} (= global_batch / {world_size} processes)")
    return per_process, per_process // micro


# ---------------------------------------------------------------------------------------------------
# Schedule resolution (issue 15): epochs and warm-up proportion -> steps, at a stage's entry point
# ---------------------------------------------------------------------------------------------------


def batches_per_epoch(num_pairs: int, global_batch: int, section: str) -> int:
    """Global batches in one pass over the training pairs; the incomplete last batch is dropped (the batch
    sampler's epochs are permutations cut into whole batches), so epoch k ends exactly after step k x this number."""
    if num_pairs < global_batch:
        raise ConfigError(f"params: `{section}.global_batch` = {global_batch} is larger than the {num_pairs} "
                          f"training pairs; lower it")
    return num_pairs // global_batch


S = typing.TypeVar("S", bound=StageTrainParams)


def resolve_schedule(settings: S, num_pairs: int, section: str) -> S:
    """A copy of `settings` with `steps` and `warmup_steps` set: steps = epochs x batches_per_epoch when
    `epochs` is given, warmup_steps = round(warmup_proportion x steps) when the proportion is given."""
    per_epoch = batches_per_epoch(num_pairs, settings.global_batch, section)
    steps = settings.steps if settings.steps is not None else settings.epochs * per_epoch
    warmup = (settings.warmup_steps if settings.warmup_steps is not None
              else int(round(settings.warmup_proportion * steps)))
    if warmup > steps:
        _fail(f"{section}.warmup_steps", warmup, f"an integer in [0, steps={steps}]")
    return dataclasses.replace(settings, steps=steps, warmup_steps=warmup)
