"""Selection variables: from logits ``beta`` to weights ``alpha``, and from ``alpha`` to a discrete rank.

A layer with ``k`` rank-1 components weights component ``j`` by ``alpha_j``. The modes (paper section 4.2 and the
ablations of section 5.4):

=========== ============================ ================================ ==================
mode        alpha                        initial logits                   keep component j if
=========== ============================ ================================ ==================
softmax     softmax(beta)                beta = 0  (alpha_j = 1/k)        alpha_j >= 1/k
sigmoid     sigmoid(beta)                beta = 0  (alpha_j = 1/2)        alpha_j >= 1/2
none        beta (unconstrained)         beta = 1  (alpha_j = 1)          alpha_j >= sum(alpha)/k
fixed       1 (no selection parameter)   none                             always (rank = k)
=========== ============================ ================================ ==================

Every mode starts from a uniform ``alpha``, so an untrained layer reads out rank ``k``. The readout never returns
rank 0: when no component passes its threshold, the component with the largest ``alpha`` is kept.
"""
import torch

SELECTION_MODES = ("softmax", "sigmoid", "none", "fixed")


def check_selection_mode(selection):
    """Raise ValueError unless ``selection`` is one of :data:`SELECTION_MODES`."""
    if selection not in SELECTION_MODES:
        raise ValueError(f"selection must be one of {SELECTION_MODES}, got {selection!r}")


def initial_logits(selection, num_components, device=None, dtype=None):
    """Initial ``beta`` for a layer of ``num_components`` components: zeros (softmax, sigmoid), ones (none).

    Returns None for ``"fixed"``, which has no selection parameter.
    """
    check_selection_mode(selection)
    if selection == "fixed":
        return None
    fill = 1.0 if selection == "none" else 0.0
    return torch.full((num_components,), fill, device=device, dtype=dtype)


def alpha_from_logits(beta, selection):
    """alpha = softmax(beta) | sigmoid(beta) | beta, by ``selection`` (differentiable in ``beta``)."""
    check_selection_mode(selection)
    if selection == "fixed":
        raise ValueError("selection='fixed' has no logits: its alpha is identically 1")
    if selection == "softmax":
        return torch.softmax(beta, dim=-1)
    if selection == "sigmoid":
        return torch.sigmoid(beta)
    return beta


def selection_threshold(alpha, selection):
    """lambda = 1/k (softmax), 1/2 (sigmoid), sum(alpha)/k (none), 1 (fixed, alpha = 1), in ``alpha``'s dtype.

    Computing lambda in alpha's own dtype makes a uniform softmax (alpha_j = fl(1/k)) pass its threshold exactly.
    """
    check_selection_mode(selection)
    k = alpha.shape[-1]
    if selection == "softmax":
        return torch.tensor(1.0 / k, dtype=alpha.dtype, device=alpha.device)
    if selection == "sigmoid":
        return torch.tensor(0.5, dtype=alpha.dtype, device=alpha.device)
    if selection == "none":
        return alpha.sum() / k
    return torch.tensor(1.0, dtype=alpha.dtype, device=alpha.device)


def selected_components(alpha, selection):
    """Boolean mask m_j = [alpha_j >= lambda]; if no entry passes, m = one-hot(argmax alpha)."""
    alpha = _checked_alpha(alpha)
    mask = alpha >= selection_threshold(alpha, selection)
    if not bool(mask.any()):
        mask[torch.argmax(alpha)] = True
    return mask


def rank_from_alpha(alpha, selection):
    """rank = #{j : alpha_j >= lambda}, at least 1 (see :func:`selected_components`)."""
    return int(selected_components(alpha, selection).sum())


def _checked_alpha(alpha):
    if not isinstance(alpha, torch.Tensor):
        raise TypeError(f"alpha must be a torch.Tensor, got {type(alpha).__name__}")
    if alpha.dim() != 1 or alpha.numel() == 0:
        raise ValueError(f"alpha must be a non-empty 1-D tensor of selection weights, got shape {tuple(alpha.shape)}")
    alpha = alpha.detach()
    if not bool(torch.isfinite(alpha).all()):
        raise ValueError(f"alpha contains NaN or infinite values: {alpha.tolist()}")
    return alpha
