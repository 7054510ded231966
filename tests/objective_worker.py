"""Helper for test_objectives.py: both training objectives' gradients on one process's share of a global batch.

Run as `python tests/objective_worker.py RANK WORLD_SIZE PORT OUT_FILE`; `gradients()` is also imported by the
test to compute the single-process references (with and without micro-batching) on the same global batch.
"""

import sys
from datetime import timedelta

import torch

from diffusionret.config import TrainGenParams
from diffusionret.method.diffusion import create_diffusion
from diffusionret.method.objectives import ContrastiveObjective, GenerationObjective, Partition
from diffusionret.model.denoiser import Generator
from diffusionret.model.extractor import build_feature_extractor
from diffusionret.training.loop import average_gradients

GLOBAL_BATCH, WORDS, FRAMES = 8, 6, 3


def models():
    torch.manual_seed(0)
    extractor = build_feature_extractor("tiny", temporal="seqTransf", temporal_layers=2, head="wti", vocab_size=40,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=2)
    return extractor, Generator(64, seed=1)


def global_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 40, (GLOBAL_BATCH, WORDS), generator=generator)  # (B, L)
    mask = torch.ones(GLOBAL_BATCH, WORDS, dtype=torch.long)
    mask[1, 4:] = 0
    mask[5, 3:] = 0
    ids[:, 0] = 0
    frames = torch.randint(0, 256, (GLOBAL_BATCH, FRAMES, 32, 32, 3), generator=generator, dtype=torch.uint8)
    frame_mask = torch.ones(GLOBAL_BATCH, FRAMES, dtype=torch.bool)
    frame_mask[2, 2:] = False
    keys = torch.tensor([0, 1, 2, 3, 3, 4, 5, 0])  # two captions share video 3, two share video 0
    return {"input_ids": ids, "attention_mask": mask, "frames": frames, "frame_mask": frame_mask, "video_key": keys}


def gradients(partition: Partition) -> dict[str, dict[str, torch.Tensor]]:
    """Averaged gradients of both objectives for `partition` (its rank's slice of the global batch)."""
    extractor, generator = models()
    batch = global_batch()
    local = slice(partition.rank * GLOBAL_BATCH // partition.world_size,
                  (partition.rank + 1) * GLOBAL_BATCH // partition.world_size)
    mine = {key: value[local] for key, value in batch.items()}
    out = {}

    objective = ContrastiveObjective(extractor, partition)
    scalars = objective.backward_step(mine)
    params = [p for p in extractor.parameters() if p.requires_grad]
    average_gradients(params, partition.world_size)
    out["stage1"] = {name: p.grad.clone() for name, p in extractor.named_parameters() if p.grad is not None}
    out["stage1_loss"] = scalars["loss/contrastive"]

    extractor.zero_grad(set_to_none=True)
    extractor.requires_grad_(False)
    with torch.no_grad():
        text = extractor.encode_text(mine["input_ids"], mine["attention_mask"])
        video = extractor.encode_video(mine["frames"], mine["frame_mask"])
    features = {"text_tokens": text.tokens, "text_mask": text.mask, "sentence": text.sentence,
                "video_frames": video.frames, "video_mask": video.mask, "video_key": mine["video_key"]}
    settings = TrainGenParams(global_batch=GLOBAL_BATCH, num_negatives=GLOBAL_BATCH - 1)
    objective = GenerationObjective(generator, create_diffusion(10), extractor, settings,
                                    torch.Generator().manual_seed(3), partition)
    scalars = objective.backward_step(features)
    params = list(generator.parameters())
    average_gradients(params, partition.world_size)
    out["stage2"] = {name: p.grad.clone() for name, p in generator.named_parameters()}
    out["stage2_loss"] = scalars["loss/generative"]
    return out


if __name__ == "__main__":
    import torch.distributed as dist

    rank, world_size, port, out_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    try:
        result = gradients(Partition(rank=rank, world_size=world_size, micro_batches=2))
        result["world_size"], result["rank"] = dist.get_world_size(), dist.get_rank()
        torch.save(result, out_file)
    finally:
        dist.destroy_process_group()
