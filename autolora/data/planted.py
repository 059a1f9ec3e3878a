"""A teacher-student task with planted per-module ranks: the known answer a rank search must recover.

The teacher is the frozen base model with a LoRA-style update of known rank r_l added to each target module l,

    W_l^teacher = W_l + sigma * U_l V_l^T,     U_l (d_out x r_l), V_l (d_in x r_l) with orthonormal columns,

(r_l = 0: the module is left unchanged). Every rank-1 direction carries the same singular value ``sigma``, so a
module's share of the teacher-student gap grows with its planted rank. The examples are random token sequences and
the labels the teacher's outputs (the ``num_labels`` regression outputs of its sequence-classification head), so a
student built from the same base model (same frozen head) fits them exactly with a LoRA update of rank r_l in module
l and none elsewhere. A search over k >= max r_l components per module should read back ranks ordered like r_l.
"""
from __future__ import annotations

import copy
from typing import Mapping

import datasets
import torch

from ..config import name_matches


def planted_update(d_out: int, d_in: int, rank: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """sigma * U V^T with U (d_out x rank), V (d_in x rank) orthonormal columns drawn from ``generator``."""
    u, _ = torch.linalg.qr(torch.randn(d_out, rank, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d_in, rank, generator=generator, dtype=torch.float64))
    return sigma * u @ v.T


def plant_ranks(base_model: torch.nn.Module, ranks: Mapping[str, int], *, sigma: float,
                seed: int = 0) -> torch.nn.Module:
    """A deep copy of ``base_model`` whose ``nn.Linear`` modules named in ``ranks`` (exact names) carry the planted
    update sigma U V^T of that rank (see the module docstring). ``base_model`` is not modified."""
    generator = torch.Generator().manual_seed(seed)
    teacher = copy.deepcopy(base_model).eval()
    for name, rank in ranks.items():
        if not isinstance(rank, int) or rank < 0:
            raise ValueError(f"planted rank of {name} must be an integer >= 0, got {rank!r}")
        module = teacher.get_submodule(name)
        if not isinstance(module, torch.nn.Linear):
            raise TypeError(f"planted module {name} is a {type(module).__name__}; planting supports nn.Linear")
        if rank > min(module.weight.shape):
            raise ValueError(f"planted rank {rank} of {name} exceeds its size {tuple(module.weight.shape)}")
        if rank:
            delta = planted_update(*module.weight.shape, rank, sigma, generator)
            with torch.no_grad():
                module.weight.add_(delta.to(module.weight.dtype))
    return teacher


def planted_rank_dataset(base_model: torch.nn.Module, ranks: Mapping[str, int], *, num_examples: int,
                         seq_len: int, sigma: float, seed: int = 0, vocab_low: int = 3) -> datasets.Dataset:
    """Random token sequences labelled with the outputs of :func:`plant_ranks` (``base_model`` must be a
    sequence-classification model with ``problem_type="regression"``; its ``num_labels`` outputs become the float
    label vector of each example). Token ids are drawn uniformly from [vocab_low, vocab_size). A larger
    ``num_examples`` extends the draw: its first examples are those of a smaller one with the same arguments, so the
    rows past them are held-out examples of the same teacher."""
    if getattr(base_model.config, "problem_type", None) != "regression":
        raise ValueError("the planted-rank task regresses the teacher's outputs: build the base model with "
                         "problem_type='regression' and num_labels > 1")
    unknown = [name for name in ranks if not any(name_matches(n, [name]) for n, _ in base_model.named_modules())]
    if unknown:
        raise ValueError(f"planted modules {unknown} are not modules of the base model")
    teacher = plant_ranks(base_model, ranks, sigma=sigma, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(vocab_low, base_model.config.vocab_size, (num_examples, seq_len), generator=generator)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        targets = torch.cat([teacher(input_ids=ids[i:i + 64], attention_mask=mask[i:i + 64]).logits
                             for i in range(0, num_examples, 64)])
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(),
                                       "labels": targets.float().tolist()})
