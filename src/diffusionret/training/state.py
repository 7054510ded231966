"""Resumable training state on disk: numbered states per parameter fingerprint, written without pickle.

`TrainingState` keeps each run's states under `run-<hash of the fingerprint>/` (safetensors for tensors, JSON for
the rest, via `state_files`), so a changed setting starts a fresh run and leaves the interrupted one aside;
`Progress` is what a resumed loop needs beyond the model, optimiser, scheduler and EMA.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusionret.training.state_files import load_state, rng_state, save_state, set_rng_state


class ResumeRefused(RuntimeError):
    """A saved state was written with different parameters than the ones of this run."""


@dataclass
class Progress:
    """What a resumed run needs beyond model/optimiser/scheduler/EMA state."""

    step: int = 0
    best_value: float = -math.inf
    best_source: str = ""
    best_step: int = -1
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the MLflow run id, RNG states, fingerprint

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "best_value": self.best_value, "best_source": self.best_source,
                "best_step": self.best_step, "extra": self.extra}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.best_value = int(state["step"]), float(state["best_value"])
        self.best_source, self.best_step = str(state["best_source"]), int(state["best_step"])
        self.extra = dict(state["extra"])


class TrainingState:
    """Resumable state on disk, keyed by the parameters that determine the weights.

        <directory>/run-<key>/            key: a hash of `fingerprint` (the parameters that shape the weights)
            fingerprint.json              those parameters, to name what differs from another run
            state-<step>/                 model, EMA, optimiser (safetensors + JSON), scheduler, RNG per process
                                          (JSON), progress.json; the newest `keep` are kept
            best.safetensors, log.csv

    The same parameters resume their own run-<key>; other parameters start a fresh one and leave an interrupted
    run of other parameters aside, untouched (restoring those parameters resumes it), pruned to the `keep` most
    recent. Nothing is pickled (state_files.py). A state is machine-local work in progress: never copy one from
    someone else.
    """

    def __init__(self, directory: Path, fingerprint: dict[str, Any] | None = None):
        self.root = Path(directory)
        self.fingerprint = dict(fingerprint or {})
        self.directory = self.root / f"run-{fingerprint_key(self.fingerprint)}"
        self.best = self.directory / "best.safetensors"
        self.log_csv = self.directory / "log.csv"

    def states(self) -> list[Path]:
        """Complete saved states, oldest first (a state is complete once its progress.json exists)."""
        return _complete_states(self.directory)

    @property
    def latest(self) -> Path | None:
        states = self.states()
        return states[-1] if states else None

    def exists(self) -> bool:
        return self.latest is not None

    def peek(self) -> dict[str, Any] | None:
        """The latest state's progress without loading tensors (e.g. to find the MLflow run to resume)."""
        latest = self.latest
        return json.loads((latest / "progress.json").read_text()) if latest else None

    def aside(self) -> list[Path]:
        """Interrupted runs of other parameters (and of the pickled format of older versions), oldest first."""
        if not self.root.is_dir():
            return []
        found = [path for path in self.root.iterdir() if path.is_dir() and path != self.directory
                 and (path.name.startswith("run-") or path.name == LEGACY_DIR)]
        return sorted(found, key=lambda path: path.stat().st_mtime_ns)

    def prepare(self, keep: int) -> list[str]:
        """Set up this run's folder before training; returns messages about runs kept aside (main process only).

        A state of the pickled format written by older versions (state-* directly under the stage's folder) is
        moved, unread, to `legacy-pickled/`. Runs aside beyond the `keep` most recent are deleted.
        """
        messages = []
        legacy = [path for path in self.root.glob("*") if path.name.startswith(("state-", "tmp-state-"))
                  or path.name in ("best.safetensors", "log.csv")] if self.root.is_dir() else []
        if legacy:
            target = self.root / LEGACY_DIR
            target.mkdir(parents=True, exist_ok=True)
            for path in legacy:
                path.rename(target / path.name)
        for path in self.aside()[:-keep] if keep > 0 else self.aside():
            shutil.rmtree(path)
        for path in self.aside():
            if path.name == LEGACY_DIR:
                messages.append(f"{path} holds a state written by an older version in pickle format, which is not "
                                "read (loading a pickle can run code); it is kept there, delete it once you no longer "
                                "need it. This run starts from step 0.")
                continue
            saved = _read_fingerprint(path)
            states = _complete_states(path)
            if not states:
                continue
            changed = sorted(key for key in set(saved) | set(self.fingerprint)
                             if saved.get(key) != self.fingerprint.get(key))
            details = ", ".join(f"{key}: {saved.get(key)!r} -> {self.fingerprint.get(key)!r}" for key in changed[:8])
            messages.append(f"{path} holds a run interrupted at step {int(states[-1].name.split('-')[1])} with other "
                            f"parameters ({details}); it is kept aside (restore those parameters to resume it; at "
                            f"most train.keep_checkpoints={keep} such runs are kept) and this run starts from "
                            "its own state.")
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = self.directory / "fingerprint.json"
        if not stamp.is_file():
            tmp = stamp.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.fingerprint, indent=1, sort_keys=True))
            tmp.replace(stamp)
        return messages

    def save(self, accelerator, progress: Progress, keep: int, stateful: dict[str, Any]) -> None:
        """Write `state-<step>` through a temporary name (a kill never leaves half a state); prune old ones.

        `stateful`: name -> object with state_dict() (model, optimiser, scheduler, EMA), written by the main
        process; every process writes its own RNG state.
        """
        target = self.directory / f"state-{progress.step:08d}"
        tmp = self.directory / f"tmp-state-{progress.step:08d}"
        if accelerator.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        tmp.mkdir(parents=True, exist_ok=True)  # a node without the main process's file system
        save_state(rng_state(), tmp, f"rng-{accelerator.process_index}")
        if accelerator.is_main_process:
            for name, obj in stateful.items():
                save_state(obj.state_dict(), tmp, name)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / "progress.json").write_text(json.dumps(progress.state_dict()))
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
            for old in self.states()[:-keep]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()

    def load(self, accelerator, progress: Progress, stateful: dict[str, Any]) -> None:
        latest = self.latest
        for name, obj in stateful.items():
            obj.load_state_dict(load_state(latest, name))
        rng = latest / f"rng-{accelerator.process_index}.json"
        if rng.is_file():
            set_rng_state(load_state(latest, f"rng-{accelerator.process_index}"))
        else:  # saved by another number of processes: the data order is exact, dropout draws are not
            accelerator.print(f"{latest} has no random state for process {accelerator.process_index}; continuing "
                              "with fresh draws")
        progress.load_state_dict(json.loads((latest / "progress.json").read_text()))

    def clear(self) -> None:
        """Remove this run's state once the stage's outputs are written; runs kept aside stay."""
        if self.directory.exists():
            shutil.rmtree(self.directory)
        if self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()


LEGACY_DIR = "legacy-pickled"


def fingerprint_key(fingerprint: dict[str, Any]) -> str:
    """A short stable name for a parameter fingerprint (the hash of its canonical JSON)."""
    canonical = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _complete_states(directory: Path) -> list[Path]:
    found = [path for path in Path(directory).glob("state-*") if (path / "progress.json").is_file()]
    return sorted(found, key=lambda path: int(path.name.split("-")[1]))


def _read_fingerprint(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "fingerprint.json").read_text())
    except (OSError, ValueError):
        return {}


def check_resumable(state: TrainingState, fingerprint: dict[str, Any]) -> None:
    """Refuse to resume a state written with other parameters, naming the keys that differ.

    States are keyed by their fingerprint, so this holds unless two fingerprints share a hash (or a file was
    edited by hand).
    """
    saved = state.peek()
    if saved is None:
        return
    previous = saved["extra"].get("fingerprint", {})
    changed = sorted(key for key in set(previous) | set(fingerprint) if previous.get(key) != fingerprint.get(key))
    if changed:
        details = ", ".join(f"{key}: {previous.get(key)!r} -> {fingerprint.get(key)!r}" for key in changed[:8])
        raise ResumeRefused(
            f"{state.directory} holds an interrupted run with different parameters ({details}). Restore "
            f"those parameters to resume it, or delete {state.directory} to start this stage from scratch."
        )
