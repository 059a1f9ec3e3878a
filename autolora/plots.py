"""Figures of a rank search: the per-layer rank grid (paper Figure 3), the selection variables over steps, and the
search diagnostics (losses, hypergradient norms, the mixed term's share).

Drawn with matplotlib's Agg backend (no display needed); each public function writes one image file.
"""
from __future__ import annotations

import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import torch  # noqa: E402

_INTEGER = re.compile(r"^\d+$")


def layer_and_projection(module_name: str) -> tuple[int | None, str]:
    """(layer index, projection) of a module name.

    The layer is the first purely numeric dotted component (None if there is none); the projection is the last
    component, prefixed by its parent when it is a single letter, i.e. a slice of a fused projection:
    ``bert.encoder.layer.3.attention.self.query`` -> (3, "query"), ``model.layers.0.self_attn.q_proj`` ->
    (0, "q_proj"), ``transformer.h.11.attn.c_attn.v`` -> (11, "c_attn.v").
    """
    if not isinstance(module_name, str) or not module_name:
        raise TypeError(f"module_name must be a non-empty string, got {module_name!r}")
    parts = module_name.split(".")
    layer = next((int(p) for p in parts if _INTEGER.match(p)), None)
    projection = ".".join(parts[-2:]) if len(parts[-1]) == 1 and len(parts) > 1 else parts[-1]
    return layer, projection


def _rank_grid(ranks: dict[str, int]) -> tuple[list[str], list[str], np.ndarray]:
    """Row labels, column labels and the grid of ranks (NaN where a layer lacks a projection).

    Rows are the layer indices in increasing order, then one row per name without a layer index (labelled by the
    full name); columns are the projections in order of first appearance.
    """
    rows, columns, cells = [], [], {}
    for name, rank in ranks.items():
        layer, projection = layer_and_projection(name)
        row = str(layer) if layer is not None else name
        if (row, projection) in cells:
            raise ValueError(f"modules {cells[row, projection][0]!r} and {name!r} fall in the same cell "
                             f"(layer {row}, projection {projection!r})")
        cells[row, projection] = (name, rank)
        rows += [row] if row not in rows else []
        columns += [projection] if projection not in columns else []
    rows.sort(key=lambda r: (0, int(r), "") if _INTEGER.match(r) else (1, 0, r))
    grid = np.full((len(rows), len(columns)), np.nan)
    for (row, projection), (_, rank) in cells.items():
        grid[rows.index(row), columns.index(projection)] = rank
    return rows, columns, grid


def _check_ranks(ranks, max_rank) -> int:
    if not isinstance(ranks, dict) or not ranks:
        raise ValueError("ranks must be a non-empty dict mapping module name -> rank")
    bad = {n: r for n, r in ranks.items() if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 0}
    if bad:
        raise ValueError(f"ranks must be non-negative ints; got {bad}")
    top = max(ranks.values())
    if max_rank is None:
        return max(int(top), 1)
    if not isinstance(max_rank, int) or max_rank < top:
        raise ValueError(f"max_rank must be an int >= the largest rank ({top}), got {max_rank!r}")
    return max_rank


def _rank_heatmap_figure(ranks: dict[str, int], max_rank: int | None = None) -> plt.Figure:
    """Figure with one cell per (layer, projection), coloured by rank on [0, max_rank] and labelled by it."""
    top = _check_ranks(ranks, max_rank)
    rows, columns, grid = _rank_grid(ranks)
    figure, axes = plt.subplots(figsize=(1.2 + 1.1 * len(columns), 1.0 + 0.4 * len(rows)), layout="constrained")
    image = axes.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=top, aspect="auto")
    for i, j in zip(*np.nonzero(~np.isnan(grid))):
        value = int(grid[i, j])
        axes.text(j, i, str(value), ha="center", va="center", color="white" if value < top / 2 else "black")
    axes.set_xticks(range(len(columns)), columns)
    axes.set_yticks(range(len(rows)), rows)
    axes.set_xlabel("projection")
    axes.set_ylabel("layer")
    axes.set_title("rank per layer")
    figure.colorbar(image, ax=axes, label="rank")
    return figure


def plot_rank_heatmap(ranks: dict[str, int], path, *, max_rank: int | None = None) -> None:
    """Write the rank grid of ``ranks`` (module name -> rank): rows = layer, columns = projection, text = rank."""
    _save(_rank_heatmap_figure(ranks, max_rank), path)


def _history_arrays(history) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """Normalise the accepted history formats to (steps or None, module name -> array (n_records, k))."""
    if isinstance(history, dict) and set(history) == {"steps", "alphas"}:
        steps, values = np.asarray(history["steps"]), history["alphas"]
    elif isinstance(history, dict):
        steps, values = None, history
    elif isinstance(history, (list, tuple)) and all(isinstance(r, (list, tuple)) and len(r) == 2 for r in history):
        steps = np.asarray([step for step, _ in history])
        names = list(history[0][1]) if history else []
        values = {name: [snapshot[name] for _, snapshot in history] for name in names}
    else:
        raise TypeError("history must be {'steps': [...], 'alphas': {name: (n_records, k)}}, {name: (n_records, k)} "
                        "or [(step, {name: alphas}), ...]")
    arrays = {name: _as_2d(v, name) for name, v in values.items()}
    if not arrays:
        raise ValueError("history holds no modules")
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) != 1 or (steps is not None and lengths != {len(steps)}):
        raise ValueError(f"every module needs one record per step; got record counts {sorted(lengths)}"
                         + ("" if steps is None else f" for {len(steps)} steps"))
    return steps, arrays


def _as_2d(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        array = values.detach().cpu().double().numpy()
    elif isinstance(values, (list, tuple)) and values and isinstance(values[0], torch.Tensor):
        array = torch.stack(list(values)).detach().cpu().double().numpy()
    else:
        array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"alphas of {name!r} must have shape (n_records, k) with both > 0, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"alphas of {name!r} contain NaN or infinite values")
    return array


def _alpha_history_figure(history, threshold: float | str | None = None) -> plt.Figure:
    """Grid of panels, one per module: one line per rank-1 component, the threshold dashed.

    ``threshold``: None -> 1/k (softmax selection), a float (e.g. 0.5 for sigmoid), or "mean" -> the mean of
    the record's alphas, sum(alpha)/k (unconstrained selection).
    """
    steps, arrays = _history_arrays(history)
    columns = min(4, len(arrays))
    rows = math.ceil(len(arrays) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 0.6 + 2.4 * rows), squeeze=False,
                                layout="constrained")
    for panel, (name, values) in zip(axes.flat, arrays.items()):
        x = steps if steps is not None else np.arange(len(values))
        for j in range(values.shape[1]):
            panel.plot(x, values[:, j], label=f"component {j}")
        panel.plot(x, _threshold_line(values, threshold), "k--", linewidth=1, label="threshold")
        layer, projection = layer_and_projection(name)
        panel.set_title(name if layer is None else f"layer {layer} {projection}", fontsize=9)
        panel.tick_params(labelsize=7)
    for panel in list(axes.flat)[len(arrays):]:
        panel.set_visible(False)
    figure.supxlabel("search step" if steps is not None else "record")
    figure.supylabel("alpha")
    widest = max(arrays, key=lambda name: arrays[name].shape[1])
    handles, labels = axes.flat[list(arrays).index(widest)].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside upper center", ncol=min(len(labels), 9), fontsize=7)
    return figure


def _threshold_line(values: np.ndarray, threshold: float | str | None) -> np.ndarray:
    n_records, k = values.shape
    if threshold is None:
        return np.full(n_records, 1.0 / k)
    if threshold == "mean":
        return values.mean(axis=1)
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and math.isfinite(threshold):
        return np.full(n_records, float(threshold))
    raise ValueError(f"threshold must be None (1/k), a finite number or 'mean', got {threshold!r}")


def plot_alpha_history(history, path, *, threshold: float | str | None = None) -> None:
    """Write the selection variables over the search.

    ``history`` is ``{"steps": [s_0, ...], "alphas": {name: (len(steps), k)}}`` (what ``autolora.search``
    records), ``{name: (n_records, k)}`` (x axis = record index) or ``[(step, {name: alphas (k,)}), ...]``;
    arrays may be tensors, numpy arrays or nested lists. See :func:`_alpha_history_figure` for ``threshold``.
    """
    _save(_alpha_history_figure(history, threshold), path)


def _search_diagnostics_figure(train_losses, diagnostics) -> plt.Figure:
    """Three panels: training loss per step and validation loss at W' per meta step; the hypergradient norm of
    each module per meta step (log scale); the mixed term's share ||mixed|| / (||direct|| + ||mixed||)."""
    figure, (losses, norms, share) = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    losses.plot(np.arange(1, len(train_losses) + 1), train_losses, linewidth=0.7, label="train (D_tr)")
    losses.plot(diagnostics["step"], diagnostics["val_loss"], linewidth=0.7, label="validation at W' (D_val)")
    losses.set_xlabel("search step")
    losses.set_title("losses", fontsize=9)
    losses.legend(fontsize=7)
    for name, values in diagnostics["hypergrad_norm"].items():
        layer, projection = layer_and_projection(name)
        norms.plot(diagnostics["step"], values, linewidth=0.7, label=name if layer is None else f"{layer} {projection}")
    norms.set_yscale("log")
    norms.set_xlabel("search step")
    norms.set_title("hypergradient norm per module", fontsize=9)
    norms.legend(fontsize=6, ncol=2)
    direct, mixed = np.asarray(diagnostics["direct_norm"]), np.asarray(diagnostics["mixed_norm"])
    total = direct + mixed
    share.plot(diagnostics["step"], np.divide(mixed, total, out=np.zeros_like(total), where=total > 0),
               linewidth=0.7)
    share.set_xlabel("search step")
    share.set_title("mixed (second-order) share of h", fontsize=9)
    return figure


def plot_search_diagnostics(train_losses, diagnostics, path) -> None:
    """Write the losses, per-module hypergradient norms and the mixed term's share over a search
    (``SearchResult.train_losses`` and ``SearchResult.diagnostics``)."""
    _save(_search_diagnostics_figure(train_losses, diagnostics), path)


def _save(figure: plt.Figure, path) -> None:
    try:
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)
