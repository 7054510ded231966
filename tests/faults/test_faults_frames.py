"""Frame-cache faults: a file-size limit (RLIMIT_FSIZE, the kernel's EFBIG, as a full disk would give ENOSPC) hit
while saving a decoded video or while writing frames.npy, run through the real `preprocess` stage in a
subprocess; and a killed preprocess, whose decode workers must not outlive it."""

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from faultlib import REPO, edit_params, first_line

from diffusionret.data.synthetic import write_mp4

pytestmark = pytest.mark.faults

PARTIAL_BYTES = 4 * 32 * 32 * 3 + 128  # one decoded video: 4 frames of 32 x 32 x 3, plus the .npy header


def msvd_with_videos(root: Path, videos: list[str]) -> None:
    """An MSVD-format benchmark whose first video is train, the rest test; 4-second 16-frame mp4s."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "train_list.txt").write_text(videos[0] + "\n")
    (root / "val_list.txt").write_text(videos[0] + "\n")
    (root / "test_list.txt").write_text("".join(v + "\n" for v in videos[1:]))
    (root / "captions_msvd.json").write_text(json.dumps({v: [f"caption of {v}"] for v in videos}))
    for i, video in enumerate(videos):
        path = root / "videos" / f"{video}.mp4"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            write_mp4(path, np.full((16, 32, 32, 3), 40 * i, np.uint8), fps=4)


def preprocess(repo: Path, file_limit: int | None) -> subprocess.CompletedProcess:
    """`python stages/preprocess.py --benchmark msvd` in `repo`, with files limited to `file_limit` bytes."""
    def limit():
        if file_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, resource.RLIM_INFINITY))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, str(REPO / "stages" / "preprocess.py"), "--benchmark", "msvd"], cwd=repo,
                          capture_output=True, text=True, timeout=240, preexec_fn=limit, env=env)


@pytest.fixture()
def msvd_repo(repo):
    edit_params(repo, **{"benchmarks.msvd.max_frames": 4, "preprocess.workers": 1, "data.allow_missing": True})
    msvd_with_videos(repo / "data" / "raw" / "msvd", ["v0", "v1", "v2"])
    return repo


def test_full_disk_while_writing_frames_npy_is_a_message(msvd_repo, fault):
    repo = msvd_repo
    assert preprocess(repo, None).returncode == 0  # a finished cache: 3 decoded videos kept under data/partial
    msvd_with_videos(repo / "data" / "raw" / "msvd", ["v0", "v1", "v2", "v3"])
    fault.watch(repo / "data" / "partial", repo / "data" / "raw", repo / "data" / "frames")
    run = preprocess(repo, 40_000)  # every decoded video fits; frames.npy (4 x 49 KB) does not
    lost = fault.record("file-size limit hit while writing frames.npy", "exit 2 naming frames.npy and the fix; "
                        "decoded videos and the previous cache kept", f"exit {run.returncode}: {first_line(run.stderr)}")
    frames = repo / "data" / "frames" / "msvd" / "frames.npy"
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert str(frames) in run.stderr and "File too large" in run.stderr and "run again" in run.stderr
    assert not frames.with_name("frames.npy.tmp").exists(), "the unfinished file is removed"
    partials = list((repo / "data" / "partial").rglob("*.npy"))
    assert len(partials) == 4, "the three earlier videos and the new one stay decoded"
    assert lost == []


def test_failed_write_of_a_decoded_video_stops_the_stage(msvd_repo, fault):
    repo = msvd_repo
    fault.watch(repo / "data" / "raw")
    run = preprocess(repo, PARTIAL_BYTES // 2)  # no decoded video can be saved
    lost = fault.record("file-size limit hit while saving a decoded video (allow_missing: true)",
                        "exit 2 naming the file; not counted as an undecodable video",
                        f"exit {run.returncode}: {first_line(run.stderr)}")
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert "saving the frames of video" in run.stderr and ("File too large" in run.stderr
                                                            or "short write" in run.stderr)
    assert str(repo / "data" / "partial") in run.stderr
    assert "could not be decoded" not in run.stderr
    assert not (repo / "data" / "frames" / "msvd" / "failures.json").exists()
    assert lost == []


PARENT = """
import sys
sys.path.insert(0, {faults!r})
from pathlib import Path
from slow_decoder import never_finishes
from diffusionret.data.frames import build_frame_cache

if __name__ == "__main__":
    videos = {{f"v{{i}}": Path({video!r}) for i in range(4)}}
    build_frame_cache(videos, Path({out!r}), sample_fps=1, max_frames=2, image_size=8, workers=2,
                      partial_dir=Path({partial!r}), progress=False, decoder=never_finishes)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_decode_workers_die_with_a_killed_parent(tmp_path, fault):
    pids = tmp_path / "pids"
    pids.mkdir()
    video = tmp_path / "v.mp4"
    write_mp4(video, np.zeros((4, 16, 16, 3), np.uint8), fps=4)
    script = PARENT.format(faults=str(Path(__file__).parent), video=str(video), out=str(tmp_path / "out"),
                           partial=str(tmp_path / "partial"))
    fault.watch(tmp_path / "v.mp4")
    parent = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "FAULTS_PID_DIR": str(pids)})
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = [int(p.name) for p in pids.iterdir()]
            time.sleep(0.1)
        assert len(workers) == 2, "the two decode workers did not start"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [pid for pid in workers if alive(pid)]
        lost = fault.record("preprocess parent killed (SIGKILL) while decoding", "every decode worker ends within 5 s",
                            f"{len(survivors)} of {len(workers)} workers alive 5 s after the kill")
        assert survivors == [] and lost == []
    finally:
        for pid in workers:  # only the workers this test started
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
