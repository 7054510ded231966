"""Both objectives give the single-process, full-batch gradient for any number of processes and micro-batches."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HELPER = Path(__file__).with_name("objective_worker.py")
sys.path.insert(0, str(HELPER.parent))
from objective_worker import gradients  # noqa: E402

sys.path.remove(str(HELPER.parent))

from diffusionret.method.objectives import Partition  # noqa: E402


def assert_same(result: dict, reference: dict, rtol: float = 1e-4) -> None:
    """Equal up to float32 summation order. Some gradients are zero in exact arithmetic (a bias shifting every
    candidate's logit equally), so the absolute tolerance scales with the stage's largest gradient."""
    for stage in ("stage1", "stage2"):
        assert result[stage].keys() == reference[stage].keys(), stage
        atol = 1e-6 * (1 + max(gradient.abs().max().item() for gradient in reference[stage].values()))
        nonzero = 0
        for name, gradient in reference[stage].items():
            torch.testing.assert_close(result[stage][name], gradient, rtol=rtol, atol=atol, msg=f"{stage} {name}")
            nonzero += int(gradient.abs().sum() > 0)
        assert nonzero > len(reference[stage]) // 2, f"{stage}: most gradients should be non-zero"


@pytest.fixture(scope="module")
def reference():
    return gradients(Partition())


def test_gradient_accumulation_equals_the_full_batch(reference):
    """Gradient cache (stage 1) and query-row micro-batches (stage 2) reproduce the full-batch gradients."""
    for micro_batches in (2, 4):
        result = gradients(Partition(micro_batches=micro_batches))
        assert_same(result, reference)
        for stage in ("stage1", "stage2"):
            torch.testing.assert_close(result[f"{stage}_loss"], reference[f"{stage}_loss"], rtol=1e-5, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.multiproc
def test_two_processes_with_micro_batches_equal_one_process(reference, tmp_path):
    port, world_size = _free_port(), 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    workers = [subprocess.Popen([sys.executable, str(HELPER), str(rank), str(world_size), str(port),
                                 str(tmp_path / f"{rank}.pt")], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for rank in range(world_size)]
    try:
        for rank, worker in enumerate(workers):
            output, _ = worker.communicate(timeout=180)
            assert worker.returncode == 0, f"rank {rank} failed:\n{output[-4000:]}"
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in range(world_size)]
    for rank, result in enumerate(results):
        assert (result["world_size"], result["rank"]) == (world_size, rank)  # really two processes
        assert_same(result, reference)
        torch.testing.assert_close(result["stage1_loss"], reference["stage1_loss"], rtol=1e-5, atol=1e-6)
    # stage 2 logs each process's share; the training loop averages them over processes
    mean_stage2 = sum(result["stage2_loss"] for result in results) / world_size
    torch.testing.assert_close(mean_stage2, reference["stage2_loss"], rtol=1e-5, atol=1e-6)
