"""Resumable training state on disk without pickle: tensors in safetensors, everything else in JSON.

accelerate's `save_state` writes only prepared models as safetensors; optimisers, schedulers, objects registered
for checkpointing and RNG states go through `torch.save` and come back with `torch.load(weights_only=False)`, i.e.
a file that can run code when read. Here a state dict (nested dicts, lists, tuples, tensors, numbers, strings,
numpy arrays) is split in two files: `<name>.safetensors` with its tensors and `<name>.json` with the structure,
where each tensor is a reference `{"__tensor__": key}`. Reading either file never executes anything, and the
round trip is exact (dtypes, shapes, values, Python floats; tuples and non-string dict keys are marked).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def _encode(value: Any, tensors: dict[str, torch.Tensor], storages: set[int], where: str) -> Any:
    """JSON structure of `value`; its tensors move into `tensors` (CPU, contiguous, no shared storage)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        if tensor.untyped_storage().data_ptr() in storages and tensor.numel():
            tensor = tensor.clone()  # safetensors refuses two names on one storage (tied weights)
        storages.add(tensor.untyped_storage().data_ptr())
        key = f"t{len(tensors)}"
        tensors[key] = tensor
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        if all(isinstance(key, str) and not key.startswith("__") for key in value):
            return {key: _encode(item, tensors, storages, f"{where}.{key}") for key, item in value.items()}
        return {"__items__": [[_encode(key, tensors, storages, where), _encode(item, tensors, storages, f"{where}.{key}")]
                              for key, item in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(item, tensors, storages, f"{where}[{i}]") for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, tensors, storages, f"{where}[{i}]") for i, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{where} holds a {type(value).__name__}, which cannot be stored without pickle")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    if "__tuple__" in value:
        return tuple(_decode(item, tensors) for item in value["__tuple__"])
    if "__items__" in value:
        return {_decode(key, tensors): _decode(item, tensors) for key, item in value["__items__"]}
    return {key: _decode(item, tensors) for key, item in value.items()}


def save_state(value: Any, directory: Path, name: str) -> None:
    """Write `value` as `directory/<name>.safetensors` (its tensors) and `directory/<name>.json` (the rest)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(value, tensors, set(), name)
    save_file(tensors, str(Path(directory) / f"{name}.safetensors"))
    with (Path(directory) / f"{name}.json").open("w") as handle:
        json.dump(structure, handle)
        handle.flush()
        os.fsync(handle.fileno())


def load_state(directory: Path, name: str) -> Any:
    """What `save_state(value, directory, name)` wrote, tensors on the CPU."""
    tensors = load_file(str(Path(directory) / f"{name}.safetensors"))
    return _decode(json.loads((Path(directory) / f"{name}.json").read_text()), tensors)


def rng_state() -> dict[str, Any]:
    """Every global random generator a training process draws from (Python, numpy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
