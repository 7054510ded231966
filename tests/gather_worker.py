"""Helper for test_gather_with_grad.py: one gloo process computing the stage-1 loss on its slice of a batch.

Run as `python tests/gather_worker.py RANK WORLD_SIZE PORT OUT_FILE`; `problem()` and `loss_and_gradients()` are
also imported by the test to compute the single-process reference on the same global batch.
"""

import sys
from datetime import timedelta

import torch

from diffusionret.method.losses import contrastive_loss, gather_with_grad
from diffusionret.model.heads import WTIHead

GLOBAL_BATCH, WORDS, FRAMES, INPUT_WIDTH, WIDTH = 6, 4, 3, 5, 8


def problem() -> dict[str, torch.Tensor]:
    """The global batch and initial parameters, drawn from a fixed generator (float64)."""
    generator = torch.Generator().manual_seed(123)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    text_mask = torch.ones(GLOBAL_BATCH, WORDS, dtype=torch.long)
    video_mask = torch.ones(GLOBAL_BATCH, FRAMES, dtype=torch.long)
    text_mask[1, 2:] = 0
    text_mask[4, 3:] = 0
    video_mask[2, 1:] = 0
    video_mask[5, 2:] = 0
    return {
        "text_inputs": draw(GLOBAL_BATCH, WORDS, INPUT_WIDTH),
        "video_inputs": draw(GLOBAL_BATCH, FRAMES, INPUT_WIDTH),
        "text_mask": text_mask,
        "video_mask": video_mask,
        "text_weight": draw(INPUT_WIDTH, WIDTH),
        "video_weight": draw(INPUT_WIDTH, WIDTH),
        "head_state": {name: draw(*tensor.shape) for name, tensor in WTIHead(WIDTH).state_dict().items()},
    }


def loss_and_gradients(rows: slice) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of the global batch computed from this process's `rows`, and the parameters' gradients."""
    data = problem()
    text_weight = data["text_weight"].clone().requires_grad_()
    video_weight = data["video_weight"].clone().requires_grad_()
    logit_scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    head = WTIHead(WIDTH, chunk_size=4).double()
    head.load_state_dict(data["head_state"])

    tokens = gather_with_grad(data["text_inputs"][rows] @ text_weight)  # (B, L, D)
    frames = gather_with_grad(data["video_inputs"][rows] @ video_weight)  # (B, T, D)
    text_mask = gather_with_grad(data["text_mask"][rows])
    video_mask = gather_with_grad(data["video_mask"][rows])
    similarity = head(tokens, text_mask, tokens[:, 0], frames, video_mask)  # (B, B)
    loss = contrastive_loss(similarity, logit_scale)
    loss.backward()
    gradients = {"text_weight": text_weight.grad, "video_weight": video_weight.grad, "logit_scale": logit_scale.grad}
    gradients.update({f"head.{name}": p.grad for name, p in head.named_parameters()})
    return loss.detach(), gradients


def main(rank: int, world_size: int, port: int, out_file: str) -> None:
    """Join the gloo group, compute on this rank's slice, average gradients as DDP does, save the results."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        per_rank = GLOBAL_BATCH // world_size
        loss, gradients = loss_and_gradients(slice(rank * per_rank, (rank + 1) * per_rank))
        for gradient in gradients.values():
            dist.all_reduce(gradient)  # DDP: mean of the ranks' gradients
            gradient /= world_size
        torch.save({"world_size": dist.get_world_size(), "rank": dist.get_rank(), "loss": loss,
                    "gradients": gradients}, out_file)
        dist.barrier()  # no rank tears down gloo while its peer still uses it (the peer would abort, SIGABRT)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
