"""What rank search and retraining share: the task loss, the trained parameter group, batch streams, device moves
and the resumable loop (checkpoints every N steps and on Ctrl-C, bit-identical resume; the saved state is built
with :mod:`autolora.checkpoint`).

:mod:`autolora.rank_search` and :mod:`autolora.retrain` are siblings over this module; neither imports the other.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable, Iterator, Mapping

import torch
from tqdm.auto import tqdm

from .checkpoint import BatchStream, atomic_save, capture_rng, isolated_rng, load_checkpoint, restore_rng, seed_rng
from .data import make_loader, pad_token_id_of
from .model import head_parameters, lora_parameters


def model_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The task loss transformers computes from ``batch["labels"]``: cross-entropy (classification, per token for
    token classification, label -100 ignored) or mean squared error (regression)."""
    return model(**batch).loss


def weight_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights W trained on the task loss: every LoRA factor and the task head (``modules_to_save``)."""
    return lora_parameters(model) + head_parameters(model)


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move every tensor of a batch to ``device``."""
    return {k: v.to(device) for k, v in batch.items()}


def batch_stream(model: torch.nn.Module, data, batch_size: int, *, seed: int, tokenizer=None, data_collator=None,
                 checkpointed: bool = False) -> Iterator[dict]:
    """An endless stream of batches of ``data``, a dataset or a DataLoader (as :func:`autolora.data.model_inputs`
    returns them).

    A dataset: shuffled batches of ``batch_size`` rows (order from ``seed``), collated by ``data_collator`` or
    padded with the tokenizer's pad id or, without a tokenizer, the model's ``config.pad_token_id``; resumable
    (a :class:`BatchStream`).
    A DataLoader: its batches as they come, epoch after epoch (``batch_size``, ``seed`` and ``tokenizer`` unused).
    It is resumable when its order comes from its own ``torch.Generator``
    (``DataLoader(..., shuffle=True, generator=torch.Generator().manual_seed(s))``, whose state a checkpoint saves
    before the batches drawn are replayed); ``checkpointed=True`` (the loop saves or resumes checkpoints) refuses
    a DataLoader without one.
    """
    if not isinstance(data, torch.utils.data.DataLoader):
        return BatchStream(make_loader(data, batch_size, shuffle=True, seed=seed, tokenizer=tokenizer,
                                       pad_token_id=pad_token_id_of(model), data_collator=data_collator))
    if data_collator is not None:
        raise ValueError("data_collator collates rows of a dataset; a DataLoader collates its batches itself "
                         "(pass the collator as its collate_fn)")
    if data.generator is not None:
        return BatchStream(data)
    if checkpointed:
        raise ValueError("checkpointing or resuming with a DataLoader needs a reproducible batch order: build it "
                         "with generator=torch.Generator().manual_seed(seed), or pass the dataset itself")
    return _epochs(data)


def _epochs(loader: torch.utils.data.DataLoader) -> Iterator[dict]:
    """The loader's batches, epoch after epoch (no saved position)."""
    while True:
        drawn = 0
        for batch in loader:
            drawn += 1
            yield batch
        if drawn == 0:
            raise ValueError("the data loader yields no batches: its dataset is empty")


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Turn the first Ctrl-C into a flag that the loop polls between steps (a second one interrupts at once).

    Yields a function telling whether an interrupt is pending. Outside the main thread signals cannot be caught and
    the flag stays False.
    """
    pending = {"flag": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: pending["flag"]
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if pending["flag"]:
            raise KeyboardInterrupt
        pending["flag"] = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: pending["flag"]
    finally:
        signal.signal(signal.SIGINT, previous)


def _restore_checkpoint(checkpoint_path, steps: int, set_state: Callable[[dict], None]) -> int:
    """Put the loop state and the global RNG states saved at ``checkpoint_path`` back; return the saved step."""
    if checkpoint_path is None or not os.path.exists(checkpoint_path):
        raise FileNotFoundError(f"--resume given but no checkpoint at {checkpoint_path}")
    saved = load_checkpoint(checkpoint_path)
    if saved["total_steps"] != steps:
        raise ValueError(f"checkpoint at {checkpoint_path} is for {saved['total_steps']} steps, not {steps}; "
                         "resume with the same step count")
    set_state(saved["loop"])
    restore_rng(saved["rng"])
    return saved["step"]


def run_resumable(step_fn: Callable[[int], dict], steps: int, *, seed: int, get_state: Callable[[], dict],
                  set_state: Callable[[dict], None], checkpoint_path: str | os.PathLike | None = None,
                  checkpoint_every: int = 50, resume: bool = False,
                  callback: Callable[[int, dict], None] | None = None, progress: bool = False,
                  description: str = "steps") -> int:
    """Run ``step_fn(t)`` for t = start..steps-1 with periodic, final and on-interrupt checkpoints.

    ``get_state()`` returns everything the loop mutates except the step counter and the global RNG (added here);
    ``set_state`` restores it. ``callback(completed_steps, stats)`` runs after every step and may raise
    ``KeyboardInterrupt``, which like Ctrl-C saves a checkpoint at that step boundary and re-raises.
    The loop draws from its own random streams: the global RNGs (Python, NumPy, torch) are seeded with ``seed`` on
    a fresh run, set to the checkpoint's states on resume, and given back to the caller in the states they had
    before the call. Returns the step the loop started from (0 unless resumed).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")

    def save(completed: int) -> None:
        if checkpoint_path is not None:
            atomic_save({"step": completed, "total_steps": steps, "loop": get_state(), "rng": capture_rng()},
                        checkpoint_path)

    bar = tqdm(total=steps, desc=description, disable=not progress, leave=False)
    with isolated_rng(), deferred_interrupt() as interrupt_pending, bar:
        seed_rng(seed)
        start = _restore_checkpoint(checkpoint_path, steps, set_state) if resume else 0
        bar.update(start)
        for t in range(start, steps):
            stats = step_fn(t)
            completed = t + 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items() if isinstance(v, float)}, refresh=False)
            try:
                if callback is not None:
                    callback(completed, stats)
                if interrupt_pending():
                    raise KeyboardInterrupt
            except KeyboardInterrupt:
                save(completed)
                raise
            if completed % checkpoint_every == 0 and completed < steps:
                save(completed)
        if start < steps or not resume:
            save(steps)
    return start
