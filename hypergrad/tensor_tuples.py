"""Arithmetic on tuples of tensors, treated as one flat vector (the concatenation of all entries)."""
from typing import Sequence

import torch
from torch import Tensor

Tensors = tuple[Tensor, ...]


def dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    """<x, y> = sum_i sum(x_i * y_i)."""
    return sum((x * y).sum() for x, y in zip(xs, ys))


def global_norm(xs: Sequence[Tensor]) -> Tensor:
    """||x|| = sqrt(sum_i ||x_i||^2), the 2-norm over all entries of all tensors."""
    return torch.sqrt(sum(x.detach().pow(2).sum() for x in xs))


def add_scaled(xs: Sequence[Tensor], scale, ys: Sequence[Tensor]) -> Tensors:
    """x + scale * y, entry-wise."""
    return tuple(x + scale * y for x, y in zip(xs, ys))


def zeros_like(xs: Sequence[Tensor]) -> Tensors:
    """A tuple of zero tensors shaped like ``xs``."""
    return tuple(torch.zeros_like(x) for x in xs)


def detached(xs: Sequence[Tensor]) -> Tensors:
    """The tensors cut from the autograd graph."""
    return tuple(x.detach() for x in xs)
