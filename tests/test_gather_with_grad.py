"""gather_with_grad: two real gloo processes give the loss and gradients of one process on the global batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HELPER = Path(__file__).with_name("gather_worker.py")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.multiproc
def test_two_processes_equal_one_process(tmp_path):
    sys.path.insert(0, str(HELPER.parent))
    try:
        from gather_worker import loss_and_gradients
    finally:
        sys.path.remove(str(HELPER.parent))

    port, world_size = _free_port(), 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    workers = [
        subprocess.Popen(
            [sys.executable, str(HELPER), str(rank), str(world_size), str(port), str(tmp_path / f"{rank}.pt")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in range(world_size)
    ]
    try:
        for rank, worker in enumerate(workers):
            output, _ = worker.communicate(timeout=120)
            assert worker.returncode == 0, f"rank {rank} failed:\n{output}"
    finally:
        for worker in workers:  # never leave a rank waiting for its peer
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    reference_loss, reference_gradients = loss_and_gradients(slice(None))  # one process, whole global batch
    for rank in range(world_size):
        result = torch.load(tmp_path / f"{rank}.pt")
        assert (result["world_size"], result["rank"]) == (world_size, rank)  # really two processes
        torch.testing.assert_close(result["loss"], reference_loss, rtol=1e-12, atol=1e-12)
        assert result["gradients"].keys() == reference_gradients.keys()
        for name, gradient in reference_gradients.items():
            assert gradient is not None and gradient.abs().sum() > 0, name
            torch.testing.assert_close(result["gradients"][name], gradient, rtol=1e-10, atol=1e-12, msg=name)
