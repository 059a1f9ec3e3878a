"""AutoLoRA layers: a frozen linear map plus selection-weighted rank-1 components.

For a frozen weight W0 (d_out x d_in), bias b, factors A (r x d_in), B (d_out x r), selection weights alpha (r)
and scaling s = lora_alpha / r, every adapted layer computes (paper Eq. 2-3)

    y = x W0^T + b + s * ((dropout(x) A^T) * alpha) B^T,

in one call of the fused op :func:`autolora.ops.lora_linear`. ``r`` is the number of components the layer holds
(the search size k, or the retrained rank with ``selection="fixed"``); the scaling is PEFT's ``lora_alpha / r``.

* :class:`SelectionWeightedLoRA` holds one set of factors and selection logits (one "branch").
* :class:`AutoLoRALinear` wraps an ``nn.Linear``; it is itself the branch.
* :class:`AutoLoRAFusedQKV` wraps GPT-2's fused qkv ``Conv1D`` (``c_attn``) and adapts only the q and v slices of
  its output, each with its own branch (own A, B, beta and rank), registered as child modules ``q`` and ``v``.

Dtypes (PEFT's ``autocast_adapter_dtype``): with ``autocast_adapter_dtype=True`` (the default) the factors and
logits of a layer whose frozen weight is float16/bfloat16 are float32, so that optimiser steps and finite-difference
perturbations are not rounded away; :func:`autolora.ops.lora_linear` runs the base product in the base dtype and
the LoRA branch in float32. With False, and for float32/float64 bases, they have the base weight's dtype. The fused
kernels need one dtype for all operands, so a half-precision model runs the fused CUDA kernel only with False.

Several branches over row slices of the output are stacked into one rank-(sum r_i) update
A = [A_1; A_2], B = [P_1 B_1, P_2 B_2] (P_i zero-pads B_i to the rows of its slice),
w = [s_1 alpha_1, s_2 alpha_2], so that the whole layer is still a single op call with scaling 1.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers.pytorch_utils import Conv1D

from autolora import ops
from autolora.selection import alpha_from_logits, check_selection_mode, initial_logits, rank_from_alpha, \
    selected_components


class SelectionWeightedLoRA(nn.Module):
    """r rank-1 components s * alpha_j * B[:, j] A[j, :] with s = lora_alpha / r.

    ``lora_A`` is initialised like PEFT (Kaiming-uniform, a = sqrt(5)), ``lora_B`` with zeros, ``beta`` by
    :func:`autolora.selection.initial_logits` (``beta`` is None for ``selection="fixed"``). ``dtype`` is the base
    weight's; the parameters get :func:`adapter_dtype` of it.
    """

    def __init__(self, in_features, out_features, r, lora_alpha, selection, device=None, dtype=None,
                 autocast_adapter_dtype=True):
        super().__init__()
        check_selection_mode(selection)
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"the number of rank-1 components r must be an integer >= 1, got {r!r}")
        if not isinstance(lora_alpha, (int, float)) or not math.isfinite(lora_alpha) or lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be a finite number > 0, got {lora_alpha!r}")
        self.r = r
        self.lora_alpha = float(lora_alpha)
        self.scaling = self.lora_alpha / r
        self.selection = selection
        dtype = adapter_dtype(dtype or torch.get_default_dtype(), autocast_adapter_dtype)
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, device=device, dtype=dtype))
        logits = initial_logits(selection, r, device=device, dtype=dtype)
        self.beta = None if logits is None else nn.Parameter(logits)

    def alpha(self):
        """Selection weights alpha (r), differentiable in ``beta``; identically 1 for ``selection="fixed"``."""
        if self.beta is None:
            return torch.ones(self.r, device=self.lora_A.device, dtype=self.lora_A.dtype)
        return alpha_from_logits(self.beta, self.selection)

    def weighted_alpha(self):
        """w = s * alpha: the per-component factor the forward applies."""
        return self.scaling * self.alpha()

    def selected_components(self):
        """Boolean mask of the components kept by the threshold of this layer's selection mode."""
        return selected_components(self.alpha(), self.selection)

    def rank(self):
        """Thresholded rank of the same alpha the forward uses (always >= 1)."""
        return rank_from_alpha(self.alpha(), self.selection)


def adapter_dtype(base_dtype, autocast_adapter_dtype=True):
    """float32 for a float16/bfloat16 base when ``autocast_adapter_dtype``, else ``base_dtype``."""
    if autocast_adapter_dtype and base_dtype in ops.HALF_DTYPES:
        return torch.float32
    return base_dtype


def stack_branches(branches, out_features):
    """Stack branches over row slices into one update (A, B, w) with B w A = sum_i P_i s_i B_i diag(alpha_i) A_i.

    ``branches`` is a list of ``(branch, rows)`` with ``rows`` a ``slice`` of the ``out_features`` output rows.
    """
    if len(branches) == 1 and branches[0][1] == slice(0, out_features):
        branch = branches[0][0]
        return branch.lora_A, branch.lora_B, branch.weighted_alpha()
    lora_A = torch.cat([branch.lora_A for branch, _ in branches], dim=0)
    lora_B = torch.cat([F.pad(branch.lora_B, (0, 0, rows.start, out_features - rows.stop))
                        for branch, rows in branches], dim=1)
    weights = torch.cat([branch.weighted_alpha() for branch, _ in branches])
    return lora_A, lora_B, weights


class AdapterForward:
    """Forward, merge and unmerge shared by the adapted layers.

    Subclasses provide ``base_layer``, ``lora_dropout``, ``merged``, ``adapter_branches()`` (list of
    ``(branch, rows)``), ``base_weight_matrix()`` (W0 as d_out x d_in) and ``to_storage(delta)`` (a d_out x d_in
    matrix in the orientation ``base_layer.weight`` is stored in).
    """

    def stacked_factors(self):
        """(A, B, w) of all branches, see :func:`stack_branches`."""
        return stack_branches(self.adapter_branches(), self.base_weight_matrix().shape[0])

    def delta_weight(self):
        """Delta W = B diag(w) A = sum_i P_i s_i B_i diag(alpha_i) A_i, shaped like ``base_layer.weight``."""
        lora_A, lora_B, weights = self.stacked_factors()
        return self.to_storage((lora_B * weights) @ lora_A)

    def forward(self, x):
        """y = x W0^T + b + ((dropout(x) A^T) * w) B^T; only the frozen layer once the update is merged."""
        if self.merged:
            return self.base_layer(x)
        lora_A, lora_B, weights = self.stacked_factors()
        lora_x = self.lora_dropout(x) if self.training and self.lora_dropout.p > 0 else None
        return ops.lora_linear(x, self.base_weight_matrix(), self.base_layer.bias, lora_A, lora_B, weights, 1.0,
                               lora_x=lora_x)

    def merge(self):
        """W0 <- W0 + Delta W, rounded once to W0's dtype; the forward then runs the frozen layer alone."""
        if self.merged:
            raise RuntimeError("the LoRA update is already merged into the base weight; call unmerge() first")
        self._add_to_base_weight(1.0)
        self.merged = True

    def unmerge(self):
        """W0 <- W0 - Delta W, rounded once to W0's dtype (restores W0 up to that rounding, the factors being
        unchanged since merge())."""
        if not self.merged:
            raise RuntimeError("the LoRA update is not merged; nothing to unmerge")
        self._add_to_base_weight(-1.0)
        self.merged = False

    @torch.no_grad()
    def _add_to_base_weight(self, sign):
        """W0 <- round(W0 + sign * Delta W): the sum is formed in the wider of the two dtypes (float32 for a float32
        update on a bfloat16 weight) and rounded once into W0."""
        weight = self.base_layer.weight
        weight.copy_(torch.add(weight, self.delta_weight(), alpha=sign))


def _freeze(module):
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


class AutoLoRALinear(AdapterForward, SelectionWeightedLoRA):
    """Drop-in replacement for an ``nn.Linear``: frozen ``base_layer`` plus one selection-weighted branch.

    y = x W0^T + b + s * ((dropout(x) A^T) * alpha) B^T,  s = lora_alpha / r.
    """

    def __init__(self, base_layer, r=8, lora_alpha=16.0, lora_dropout=0.0, selection="softmax",
                 autocast_adapter_dtype=True):
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"AutoLoRALinear wraps an nn.Linear, got {type(base_layer).__name__}")
        weight = base_layer.weight
        super().__init__(base_layer.in_features, base_layer.out_features, r, lora_alpha, selection,
                         device=weight.device, dtype=weight.dtype, autocast_adapter_dtype=autocast_adapter_dtype)
        self.base_layer = _freeze(base_layer)
        self.lora_dropout = _dropout(lora_dropout)
        self.merged = False

    def adapter_branches(self):
        return [(self, slice(0, self.base_layer.out_features))]

    def base_weight_matrix(self):
        return self.base_layer.weight

    def to_storage(self, delta):
        return delta


class AutoLoRAFusedQKV(AdapterForward, nn.Module):
    """GPT-2's fused qkv ``Conv1D`` (weight stored d x 3d) with AutoLoRA branches on the q and v slices only.

    Output rows [0, d) are q, [d, 2d) are k (left untouched), [2d, 3d) are v. The branches are the child
    modules ``q`` and ``v`` (so their names are ``<c_attn name>.q`` and ``<c_attn name>.v``).
    """

    def __init__(self, base_layer, r_q=8, r_v=8, lora_alpha=16.0, lora_dropout=0.0, selection="softmax",
                 autocast_adapter_dtype=True):
        super().__init__()
        if not isinstance(base_layer, Conv1D):
            raise TypeError(f"AutoLoRAFusedQKV wraps a transformers Conv1D, got {type(base_layer).__name__}")
        if not is_fused_qkv(base_layer):
            raise TypeError(f"AutoLoRAFusedQKV needs a fused qkv Conv1D with weight d x 3d (GPT-2 c_attn); got "
                            f"weight {tuple(base_layer.weight.shape)}")
        d_in = base_layer.weight.shape[0]
        weight = base_layer.weight
        self.base_layer = _freeze(base_layer)
        self.q = SelectionWeightedLoRA(d_in, d_in, r_q, lora_alpha, selection, weight.device, weight.dtype,
                                       autocast_adapter_dtype)
        self.v = SelectionWeightedLoRA(d_in, d_in, r_v, lora_alpha, selection, weight.device, weight.dtype,
                                       autocast_adapter_dtype)
        self.lora_dropout = _dropout(lora_dropout)
        self.merged = False

    def adapter_branches(self):
        d = self.base_layer.weight.shape[0]
        return [(self.q, slice(0, d)), (self.v, slice(2 * d, 3 * d))]

    def base_weight_matrix(self):
        return self.base_layer.weight.t()

    def to_storage(self, delta):
        return delta.t()


def is_fused_qkv(conv):
    """True for a Conv1D whose weight is d x 3d (GPT-2's fused q, k, v projection)."""
    d_in, d_out = conv.weight.shape
    return d_out == 3 * d_in


def _dropout(p):
    if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"lora_dropout must be a probability in [0, 1), got {p!r}")
    return nn.Dropout(float(p))
