"""What a resumable loop saves: atomic checkpoint files, RNG capture, trainable state and a replayable batch stream.

The loop itself is :func:`autolora.training.run_resumable`. A loop checkpointed after step ``t`` and resumed
continues to the bit-identical result of an uninterrupted run: the checkpoint holds every tensor the loop mutates
(trainable parameters, optimiser states), the step counter, the global RNG states (Python, NumPy, torch: dropout
masks) and the position of each data stream (the state of the loader's shuffling generator at the start of the
current epoch plus the number of batches already drawn from it).
"""
from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``: a crash never leaves a partial file."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    write(tmp)
    os.replace(tmp, path)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`atomic_save` with ``weights_only=True``: tensors and plain Python values
    only, so that loading a file never runs code from it."""
    return torch.load(os.fspath(path), map_location="cpu", weights_only=True)


def capture_rng() -> dict:
    """The global RNG states that training consumes: Python ``random``, NumPy and torch (CPU, and CUDA if present),
    as tensors and plain Python values (NumPy's Mersenne Twister key becomes an int64 tensor)."""
    name, key, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [name, torch.from_numpy(key.astype(np.int64)), position, has_gauss, cached_gaussian]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(state["python"])
    name, key, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_rng(seed: int) -> None:
    """Seed every global RNG that :func:`capture_rng` captures (Python, NumPy, torch on every device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run the block on the global RNGs, then put back the states they had before it (as ``torch.random.fork_rng``
    does for torch, extended to Python ``random`` and NumPy)."""
    caller = capture_rng()
    try:
        yield
    finally:
        restore_rng(caller)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters with ``requires_grad`` (the only ones a loop changes), keyed by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy saved trainable tensors back into ``model`` in place (so optimisers keep referring to the same tensors)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if params.keys() != state.keys():
        missing, extra = sorted(params.keys() - state.keys()), sorted(state.keys() - params.keys())
        raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {extra[:5]}; "
                         "resume with the same model, task and flags as the interrupted run")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])


class BatchStream:
    """An endless stream of batches from a shuffling DataLoader whose position can be saved and restored.

    The loader must own a ``torch.Generator`` (``loader.generator``); each epoch's order is a function of that
    generator's state when the epoch starts, so the position is (that state, batches drawn in the epoch).
    """

    def __init__(self, loader: torch.utils.data.DataLoader):
        if getattr(loader, "generator", None) is None:
            raise ValueError("BatchStream needs a DataLoader built with generator=torch.Generator() so that its "
                             "shuffling order can be saved and replayed")
        if len(loader) == 0:
            raise ValueError("the data loader yields no batches: the dataset is empty")
        self.loader = loader
        self._epoch_start_state = loader.generator.get_state()
        self._drawn = 0
        self._iterator: Iterator | None = None

    def __next__(self) -> dict:
        if self._iterator is None:
            self._epoch_start_state = self.loader.generator.get_state()
            self._iterator = iter(self.loader)
            self._drawn = 0
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator = None
            return next(self)
        self._drawn += 1
        return batch

    def __iter__(self) -> "BatchStream":
        return self

    def state_dict(self) -> dict:
        return {"epoch_start_state": self._epoch_start_state.clone(), "drawn": self._drawn,
                "in_epoch": self._iterator is not None}

    def load_state_dict(self, state: Mapping) -> None:
        """Rewind the generator to the saved epoch start and redraw the batches already consumed in that epoch."""
        self.loader.generator.set_state(state["epoch_start_state"])
        self._iterator = None
        self._drawn = 0
        if state["in_epoch"]:
            self._epoch_start_state = state["epoch_start_state"]
            self._iterator = iter(self.loader)
            for _ in range(state["drawn"]):
                next(self._iterator)
            self._drawn = state["drawn"]
