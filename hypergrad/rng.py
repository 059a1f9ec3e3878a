"""Capture the global random state and replay it, so that several passes draw identical random numbers
(for example identical dropout masks in the two perturbed passes of a finite difference).

The CPU generator is always covered; so is every device type the tensors of a pass live on (CUDA, XPU, MPS, or any
accelerator whose ``torch.get_device_module`` offers ``get_rng_state_all``/``set_rng_state_all`` or
``get_rng_state``/``set_rng_state``), and CUDA whenever it is initialised. A device type whose random state torch
cannot get and set is refused with ValueError rather than replayed partially."""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Union

import torch
from torch import Tensor

DeviceStates = tuple[Tensor, ...]


@dataclass(frozen=True)
class RngState:
    """The CPU generator state, and per accelerator device type the states of its generators (one per device)."""

    cpu: Tensor
    devices: tuple[tuple[str, DeviceStates], ...] = ()


def _rng_functions(device_type: str) -> tuple[Callable[[], DeviceStates], Callable[[DeviceStates], None]]:
    """(get, set) of the random states of every device of ``device_type``; ValueError if torch has none."""
    try:
        module = torch.get_device_module(device_type)
    except (RuntimeError, AttributeError):
        module = None
    if hasattr(module, "get_rng_state_all") and hasattr(module, "set_rng_state_all"):
        return lambda: tuple(module.get_rng_state_all()), lambda states: module.set_rng_state_all(list(states))
    if hasattr(module, "get_rng_state") and hasattr(module, "set_rng_state"):
        return lambda: (module.get_rng_state(),), lambda states: module.set_rng_state(states[0])
    raise ValueError(f"cannot replay the random state of device type {device_type!r}: torch offers no "
                     "get/set_rng_state for it, so the two finite-difference passes could draw different random "
                     "numbers (dropout masks); use method='exact' or method='first_order' for tensors on this device")


def _device_types(devices: Iterable[Union[torch.device, str]]) -> tuple[str, ...]:
    """The accelerator device types among ``devices``, plus "cuda" when CUDA is initialised, sorted."""
    types = {torch.device(d).type for d in devices} - {"cpu"}
    if torch.cuda.is_initialized():
        types.add("cuda")
    return tuple(sorted(types))


def capture_rng_state(devices: Iterable[Union[torch.device, str]] = ()) -> RngState:
    """Snapshot, without advancing them, the global CPU random state and the random states of every device type
    in ``devices`` (e.g. ``t.device for t in tensors``) and of CUDA if it is initialised.

    Raises ValueError for a device type whose random state torch cannot get and set (e.g. "meta")."""
    types = _device_types(devices)
    return RngState(cpu=torch.get_rng_state(), devices=tuple((t, _rng_functions(t)[0]()) for t in types))


def _restore(state: RngState) -> None:
    torch.set_rng_state(state.cpu)
    for device_type, states in state.devices:
        _rng_functions(device_type)[1](states)


@contextmanager
def replay_rng_state(state: RngState):
    """Run the block from ``state``; afterwards the global random state of the CPU and of every device type in
    ``state`` is what it was before the block."""
    before = capture_rng_state(device_type for device_type, _ in state.devices)
    _restore(state)
    try:
        yield
    finally:
        _restore(before)
