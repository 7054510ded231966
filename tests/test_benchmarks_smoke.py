"""The benchmark scripts run (tiny sizes; no timing is asserted: figures live in benchmarks/, not in tests)."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *arguments: str) -> str:
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *arguments], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_gpu_check_smoke_prints_the_table():
    out = run("gpu_check.py", "--smoke")
    for row in ("stage 1 train step", "stage 2 train step", "evaluate 64x64", "measured vs projected"):
        assert row in out


def test_rerank_benchmark_asserts_equal_outputs():
    out = run("rerank_batched_vs_blocks.py", "--queries", "40", "--videos", "40", "--width", "32", "--steps", "3",
              "--frames", "3")
    assert "outputs equal: yes" in out


def test_stage2_benchmark_runs():
    assert "ratio (cached / extractor)" in run("stage2_cached_vs_extractor.py", "--steps", "2", "--batch", "8")


def test_frame_feature_step_time_runs():
    out = run("frame_feature_step_time.py", "--rounds", "1", "--steps", "1", "--batch", "8", "--threads", "1")
    assert all(f"{name}:" in out for name in ("cls", "cls+grid, grid 2", "cls+grid, grid 4")) and "ratio to cls" in out
