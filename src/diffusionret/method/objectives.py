"""The two training objectives. Each computes its loss on the GLOBAL batch and runs its own backward pass.

`ContrastiveObjective` (stage 1): encode this process's batch, gather the features of all processes WITH
gradient, WTI similarity over the global batch, symmetric InfoNCE (as the official AllGather + CrossEn). With gradient
accumulation it uses a gradient cache: the features of all micro-batches are computed without gradient,
the loss and its gradient w.r.t. the features are computed once on the whole global batch, then each
micro-batch is re-encoded and back-propagated with its slice of that gradient. The result equals the
full-batch gradient (the contrastive loss over the global batch does not depend on the micro-batching).

`GenerationObjective` (stage 2): frozen cached features; the global batch's similarity picks each
query's hardest negatives (or, with `train_gen.negatives: mined`, the batch carries lists drawn from each query's
stage-1 top-k over the training gallery, `method.mining`); both denoisers predict x0 from a noised one-hot. Every
process draws the same noise for the whole global batch and back-propagates only its own query rows.

Both scale their loss so that AVERAGING the gradients over processes (training/loop.py) gives the gradient of the
global-batch loss, whatever the number of processes or micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffusionret.method.losses import (banzhaf_distill, concept_decorrelation, contrastive_loss, gather_with_grad,
                                        kl_mean, list_loss, stage2_loss)
from diffusionret.model.extractor import FeatureExtractor, TextFeatures, VideoFeatures
from diffusionret.model.heads import DiCoSAHead, HBIHead


@dataclass(frozen=True)
class Partition:
    """How this process's share of a global batch is split: process `rank` of `world_size`, `micro_batches`."""

    rank: int = 0
    world_size: int = 1
    micro_batches: int = 1


def _gather_mask(mask: torch.Tensor) -> torch.Tensor:
    """All-gather a 0/1 mask (gloo cannot gather bool tensors)."""
    return gather_with_grad(mask.long()).to(mask.dtype)


def _micro_slices(size: int, micro_batches: int) -> list[slice]:
    if size % micro_batches:
        raise ValueError(f"a per-process batch of {size} does not split into {micro_batches} micro-batches")
    step = size // micro_batches
    return [slice(start, start + step) for start in range(0, size, step)]


def head_training_losses(head: nn.Module, text: TextFeatures, video: VideoFeatures) -> dict[str, torch.Tensor]:
    """The chosen head's own training-only loss terms on a square global batch; {} for a head without any.

    DiCoSA: alpha sum_k (Gamma_kk - 1)^2 + beta sum_{k != k'} Gamma_kk'^2 over the positive pairs' chunks.
    """
    if isinstance(head, DiCoSAHead):
        text_chunks, video_chunks = head.positive_chunks(text.sentence, video.frames, video.mask)  # (B, C, w) each
        loss = concept_decorrelation(text_chunks, video_chunks, normaliser=head.decorrelation_divisor(
            text.tokens.shape[1]), alpha=head.alpha, beta=head.beta)
        return {"loss/decorrelation": loss}
    return {}


HBI_LEVEL_NAMES = ("contrastive", "contrastive_action", "contrastive_event")  # loss/<name> per level


def hbi_losses(head: HBIHead, text: TextFeatures, video: VideoFeatures, logit_scale: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """HBI's stage-1 loss terms on a square global batch; their sum is the loss.

    Per level l (entity, action, event): InfoNCE CE_sym(exp(logit_scale) S_l) (`loss/contrastive` is the entity
    level's); `loss/banzhaf` = skl sum_l [KL(B_l, T_l) + KL(B_l^R, T_l^R)] with B_l the level's student and T_l the
    frozen teacher on the positive pairs' maps (entity level: both zeroed at padded cells), ^R all axes reversed;
    `loss/hierarchical_kl` = kl sum_{l > 0} [KL(S_l^T, S_e^T) + KL(S_l, S_e)] on raw similarities, the entity
    level as the (not detached) target. KL = method.losses.kl_mean.
    """
    if not head.teacher_loaded:
        raise RuntimeError("hbi: the Banzhaf teacher was never loaded (a random teacher would be distilled); load "
                           "the `train_estimator` stage's estimator with HBIHead.load_teacher first")
    levels = head.training_levels(text.tokens, text.mask, video.frames, video.mask)
    terms: dict[str, torch.Tensor] = {}
    banzhaf = torch.zeros((), dtype=levels[0].similarity.dtype, device=levels[0].similarity.device)
    for index, level in enumerate(levels):
        name = HBI_LEVEL_NAMES[index] if index < len(HBI_LEVEL_NAMES) else f"contrastive_level{index}"
        terms[f"loss/{name}"] = contrastive_loss(level.similarity, logit_scale)
        student = head.students[index](level.maps)  # (B, t, v)
        with torch.no_grad():
            teacher = head.teacher(level.maps.detach())
        if level.map_mask is not None:
            student, teacher = student * level.map_mask, teacher * level.map_mask
        banzhaf = banzhaf + banzhaf_distill(student, teacher)
    terms["loss/banzhaf"] = head.skl * banzhaf
    entity = levels[0].similarity
    hierarchy = sum(kl_mean(level.similarity.T, entity.T) + kl_mean(level.similarity, entity) for level in levels[1:])
    terms["loss/hierarchical_kl"] = head.kl * hierarchy
    return terms


class ContrastiveObjective(nn.Module):
    def __init__(self, extractor: FeatureExtractor, partition: Partition = Partition()):
        super().__init__()
        self.extractor, self.partition = extractor, partition
        self.last_terms: dict[str, torch.Tensor] = {}  # the loss terms of the last `loss` call, detached

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[TextFeatures, VideoFeatures]:
        """Features of this process's (micro-)batch: tokens (b, L, D), sentence (b, D), frames (b, T, D)."""
        text = self.extractor.encode_text(batch["input_ids"], batch["attention_mask"])
        video = self.extractor.encode_video(batch["frames"], batch["frame_mask"])
        return text, video

    def loss(self, text: TextFeatures, video: VideoFeatures) -> torch.Tensor:
        """InfoNCE over the global batch gathered from every process (B = world * b)."""
        text = TextFeatures(tokens=gather_with_grad(text.tokens), mask=_gather_mask(text.mask),
                            sentence=gather_with_grad(text.sentence))  # (B, L, D), (B, L), (B, D)
        video = VideoFeatures(frames=gather_with_grad(video.frames), mask=_gather_mask(video.mask))  # (B, T, D)
        if isinstance(self.extractor.head, HBIHead):  # three levels, each its own InfoNCE, plus two KL families
            terms = hbi_losses(self.extractor.head, text, video, self.extractor.logit_scale)
            self.last_terms = {name: term.detach() for name, term in terms.items()}
            return sum(terms.values())
        similarity = self.extractor.similarity(text, video)  # (B, B)
        loss = contrastive_loss(similarity, self.extractor.logit_scale)
        self.last_terms = {"loss/contrastive": loss.detach()}
        for name, term in head_training_losses(self.extractor.head, text, video).items():
            loss = loss + term
            self.last_terms[name] = term.detach()
        return loss

    def backward_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Forward + backward of one global batch; returns detached scalars to log."""
        if self.partition.micro_batches == 1:
            loss = self.loss(*self.encode(batch))
            loss.backward()
        else:
            loss = self._gradient_cache_backward(batch)
        extra = {name: value for name, value in self.last_terms.items() if name != "loss/contrastive"}
        if extra:
            extra["loss/total"] = loss.detach()
        return {"loss/contrastive": self.last_terms["loss/contrastive"], **extra,
                "logit_scale": self.extractor.logit_scale.detach().exp()}

    def _gradient_cache_backward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        size = batch["input_ids"].shape[0]
        slices = _micro_slices(size, self.partition.micro_batches)
        with torch.no_grad():
            parts = [self.encode({key: value[part] for key, value in batch.items()}) for part in slices]
        text = TextFeatures.cat([p[0] for p in parts])  # (B, L, D), (B, L), (B, D)
        video = VideoFeatures.cat([p[1] for p in parts])  # (B, T, D), (B, T)
        leaves = [text.tokens.requires_grad_(), text.sentence.requires_grad_(), video.frames.requires_grad_()]
        loss = self.loss(text, video)
        loss.backward()  # gradients of the head / logit scale, and of the cached features
        for part in slices:
            text_part, video_part = self.encode({key: value[part] for key, value in batch.items()})
            outputs = [text_part.tokens, text_part.sentence, video_part.frames]
            used = [(output, leaf.grad[part]) for output, leaf in zip(outputs, leaves) if leaf.grad is not None]
            torch.autograd.backward([output for output, _ in used], [grad for _, grad in used])  # e.g. WTI ignores the sentence
        return loss


class GenerationObjective(nn.Module):
    """Stage-2 loss of a global batch of cached features (only `generator` has trainable weights)."""

    def __init__(self, generator: nn.Module, diffusion, extractor: FeatureExtractor, settings,
                 noise: torch.Generator, partition: Partition = Partition()):
        super().__init__()
        self.generator, self.diffusion, self.settings, self.noise = generator, diffusion, settings, noise
        self.partition = partition
        self._frozen = [extractor]  # a plain list: the frozen extractor is not a submodule

    def backward_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Forward + backward of this process's query rows of the global batch; returns scalars to log."""
        extractor = self._frozen[0]
        gathered = {key: gather_with_grad(value.long() if value.dtype == torch.bool else value).to(value.dtype)
                    for key, value in batch.items()}  # global batch B (no gradient flows: frozen features)
        text = TextFeatures(tokens=gathered["text_tokens"], mask=gathered["text_mask"], sentence=gathered["sentence"])
        video = VideoFeatures(frames=gathered["video_frames"], mask=gathered["video_mask"])
        with torch.no_grad():
            similarity = extractor.similarity(text, video)  # (B, B) stage-1 WTI scores
            contrastive = contrastive_loss(similarity, extractor.logit_scale)  # L_dis: nothing trainable
        global_batch = similarity.shape[0]
        local = global_batch // self.partition.world_size
        own_rows = slice(self.partition.rank * local, (self.partition.rank + 1) * local)
        start_state = self.noise.get_state()
        total, parts_sum = torch.zeros(()), {"t2v": torch.zeros(()), "v2t": torch.zeros(())}
        for part in _micro_slices(local, self.partition.micro_batches):
            rows = slice(own_rows.start + part.start, own_rows.start + part.stop)
            self.noise.set_state(start_state)  # identical draws for the whole batch in every call
            if "candidate_frames" in gathered:  # lists mined over the training gallery (method/mining.py)
                loss, parts = list_loss(
                    self.generator, self.diffusion, sentence=text.sentence, frames=video.frames,
                    frame_mask=video.mask, candidate_frames=gathered["candidate_frames"][rows],
                    candidate_mask=gathered["candidate_mask"][rows],
                    candidate_sentences=gathered["candidate_sentences"][rows],
                    num_candidates=gathered["candidate_frames"].shape[1],
                    temperature_inv=self.settings.loss_temperature_inv, generator_rng=self.noise,
                    negative_value=self.settings.negative_value, rows=rows, min_timestep=self.settings.min_timestep,
                )
            else:  # the official in-batch pick
                loss, parts = stage2_loss(
                    self.generator, self.diffusion, sentence=text.sentence, frames=video.frames,
                    frame_mask=video.mask, similarity=similarity, video_keys=gathered["video_key"],
                    num_negatives=self.settings.num_negatives, temperature_inv=self.settings.loss_temperature_inv,
                    generator_rng=self.noise, negative_value=self.settings.negative_value, rows=rows,
                    faithful_negatives=self.settings.faithful_negatives, min_timestep=self.settings.min_timestep,
                )
            # loss = (sum over these rows) / B; times world size so that averaging over processes sums them
            (loss * self.partition.world_size).backward()
            total = total + loss.detach()
            parts_sum = {key: parts_sum[key] + parts[key] for key in parts_sum}
        # logged values are this process's share; the loop averages them over processes (times W = global mean)
        scale = self.partition.world_size
        return {"loss/generative": total * scale, "loss/generative_t2v": parts_sum["t2v"] * scale,
                "loss/generative_v2t": parts_sum["v2t"] * scale,
                "frozen_extractor/loss_contrastive": contrastive}  # not trained here: not under loss/
