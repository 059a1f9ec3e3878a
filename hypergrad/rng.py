"""Capture the global random state and replay it, so that several passes draw identical random numbers
(for example identical dropout masks in the two perturbed passes of a finite difference)."""
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RngState:
    """The CPU generator state and, when CUDA is initialised, the state of every CUDA device."""

    cpu: Tensor
    cuda: tuple[Tensor, ...]


def capture_rng_state() -> RngState:
    """Snapshot the global CPU (and initialised CUDA) random state without advancing it."""
    cuda = tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else ()
    return RngState(cpu=torch.get_rng_state(), cuda=cuda)


@contextmanager
def replay_rng_state(state: RngState):
    """Run the block from ``state``; afterwards the global random state is what it was before the block."""
    with torch.random.fork_rng(devices=range(len(state.cuda))):
        torch.set_rng_state(state.cpu)
        if state.cuda:
            torch.cuda.set_rng_state_all(state.cuda)
        yield
