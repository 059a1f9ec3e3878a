"""``AutoLoRAModel``: the AutoLoRA adapters of a transformers model as one object, shaped like PEFT's ``PeftModel``.

It wraps the functional API: the constructor is :func:`autolora.model.get_autolora_model` (injection in place, the
resolved config stored as ``model.autolora_config``), and ``ranks``, ``alphas``, ``merge_and_unload`` call the
functions of :mod:`autolora.model` on the wrapped model, so the two APIs can be mixed on the same model. As with
``peft.get_peft_model``, the base model is modified in place and ``.model`` is that same object; attributes the wrapper
lacks are looked up on it, and ``forward`` delegates to it.

``save_pretrained`` writes what :func:`autolora.export.export_peft_adapter` writes (so that stock
``peft.PeftModel.from_pretrained(base, directory)`` loads the adapter) and, for reloading an in-progress search
exactly, ``autolora_config.json`` and ``autolora_weights.safetensors`` (the raw LoRA factors and the heads' state);
:meth:`AutoLoRAModel.from_pretrained` rebuilds the model from these and the selection logits of
``selection.safetensors``.
"""
from __future__ import annotations

import dataclasses
import json
import os

import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from .config import AutoLoRAConfig
from .export import SELECTION_FILE, export_peft_adapter, head_state, selection_state
from .model import (adapter_branches, alphas, energies, get_autolora_model, merge_and_unload, ranks, stored_config,
                    unload_adapters)
from .peft_config import autolora_config_from, lora_config_for
from .readout import DEFAULT_BUDGET_SCORE, budget_ranks, check_score
from .selection import selection_threshold

CONFIG_FILE = "autolora_config.json"
WEIGHTS_FILE = "autolora_weights.safetensors"
FACTORS = ("lora_A", "lora_B")


class AutoLoRAModel(torch.nn.Module):
    """A transformers model with AutoLoRA layers injected in place (see the module docstring).

    ``config`` is an :class:`autolora.AutoLoRAConfig` or a ``peft.LoraConfig`` (mapped by
    :func:`autolora.peft_config.autolora_config_from`). The wrapper takes the train/eval mode the base model had.
    """

    def __init__(self, base_model: torch.nn.Module, config):
        super().__init__()
        if not isinstance(base_model, torch.nn.Module):
            raise TypeError(f"base_model must be a torch.nn.Module (a transformers model), got "
                            f"{type(base_model).__name__}")
        training = base_model.training
        self.model = get_autolora_model(base_model, _resolved_config(config, base_model))
        self.train(training)

    @property
    def config(self) -> AutoLoRAConfig:
        """The resolved config, the object :func:`get_autolora_model` stored as ``model.autolora_config``."""
        return stored_config(self.model)

    def _adapted(self) -> torch.nn.Module:
        """The wrapped model; ValueError once :meth:`merge_and_unload` has removed its adapters."""
        stored_config(self.model)
        return self.model

    def forward(self, *args, **kwargs):
        """The wrapped model's forward."""
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        """nn.Module's lookup (parameters, buffers, submodules), then the wrapped model's attributes."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":  # not yet set in __init__: no fallback to recurse into
                raise
            return getattr(self.model, name)

    def ranks(self) -> dict[str, int]:
        """{branch name: rank read by the per-layer threshold} (:func:`autolora.model.ranks`)."""
        return ranks(self._adapted())

    def alphas(self) -> dict[str, torch.Tensor]:
        """{branch name: copy of alpha} (:func:`autolora.model.alphas`)."""
        return alphas(self._adapted())

    def budget_ranks(self, budget: int, search_result=None, score: str = DEFAULT_BUDGET_SCORE) -> dict[str, int]:
        """Ranks from the ``budget`` best-scored components over all branches, at least one per branch
        (:func:`autolora.readout.budget_ranks`).

        ``score="margin"``: with ``search_result`` (the :class:`autolora.SearchResult` of the search that trained this
        model) the score is its margin, the distance to the threshold against the search's own noise, which needs
        the alpha history. Without it the score is the final alphas' distance to their layer's threshold,
        alpha_j - lambda: no history, no noise scale, so with softmax it compares layers fairly only when they have
        the same number of components (alpha_j = 0.2 is far above 1/8 but below 1/4).
        ``score="energy"``: the singular values of each branch's update B diag(s alpha) A as the model holds it now
        (:func:`autolora.readout.component_energies`; ``search_result`` is not needed).
        """
        if self.config.selection == "fixed":
            raise ValueError('a model with selection="fixed" has no selection logits to read a budget from')
        check_score(score)
        if score == "energy":
            scores = energies(self._adapted())
        elif search_result is None:
            scores = {name: alpha - selection_threshold(alpha, self.config.selection)
                      for name, alpha in self.alphas().items()}
        else:
            scores = search_result.margins()
            if set(scores) != set(self.ranks()):
                raise ValueError(f"search_result has modules {sorted(scores)}, this model has branches "
                                 f"{sorted(self.ranks())}; pass the result of the search run on this model")
        return budget_ranks(scores, budget)

    def to_lora_config(self, ranks: dict[str, int] | None = None, template=None):
        """The ``peft.LoraConfig`` that builds ``ranks`` (default: :meth:`ranks`) in stock PEFT
        (:func:`autolora.peft_config.lora_config_for`); ``template`` gives the passed-through fields."""
        return lora_config_for(self.model, self.ranks() if ranks is None else ranks, template)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all): numbers of entries of the parameters with requires_grad and of all parameters, a
        parameter shared by several modules counted once (as PEFT's ``PeftModel.get_nb_trainable_parameters``)."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def lora_parameter_count(self, ranks: dict[str, int] | None = None) -> int:
        """sum_b r_b (d_in,b + d_out,b) over the branches b: the entries of the LoRA factors of plain LoRA with rank
        r_b on each branch (default: :meth:`ranks`), as the retrain builds it (GPT-2's q and v slices of ``c_attn``
        count d x d each)."""
        ranks = self.ranks() if ranks is None else ranks
        branches = adapter_branches(self._adapted())
        if set(ranks) != set(branches):
            raise ValueError(f"ranks must give every branch a rank; got {sorted(ranks)}, branches {sorted(branches)}")
        return sum(ranks[name] * (b.lora_A.shape[1] + b.lora_B.shape[0]) for name, b in branches.items())

    def print_trainable_parameters(self, reference_rank: int | None = None) -> None:
        """Print PEFT's line "trainable params: X || all params: Y || trainable%: Z"; for a model with selection
        logits, the components the per-layer threshold keeps out of all; with ``reference_rank``, the LoRA
        parameters of the kept ranks against uniform LoRA of that rank on the same branches
        (:meth:`lora_parameter_count`)."""
        if reference_rank is not None and (isinstance(reference_rank, bool) or not isinstance(reference_rank, int)
                                           or reference_rank < 1):
            raise ValueError(f"reference_rank must be an integer >= 1, got {reference_rank!r}")
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / total:.4f}")
        kept = self.ranks()
        if self.config.selection != "fixed":
            offered = sum(branch.r for branch in adapter_branches(self.model).values())
            print(f"components kept: {sum(kept.values())} of {offered} (per-layer threshold)")
        if reference_rank is not None:
            ours = self.lora_parameter_count(kept)
            uniform = self.lora_parameter_count(dict.fromkeys(kept, reference_rank))
            print(f"LoRA params at the kept ranks: {ours:,d} || uniform rank {reference_rank}: {uniform:,d} || "
                  f"ratio: {ours / uniform:.4f}")

    def merge_and_unload(self) -> torch.nn.Module:
        """Fold every adapter into its base weight and put the original nn.Linear / Conv1D layers back
        (:func:`autolora.model.merge_and_unload`); returns the plain transformers model. This wrapper has no
        adapters left afterwards."""
        return merge_and_unload(self.model)

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write the PEFT adapter and selection files of :func:`autolora.export.export_peft_adapter`,
        ``autolora_config.json`` (the resolved config) and ``autolora_weights.safetensors`` (the raw LoRA factors
        ``<branch>.lora_A`` / ``.lora_B`` and the heads' state, keyed by parameter name) to ``directory``."""
        config = self.config
        name_or_path = getattr(getattr(self.model, "config", None), "name_or_path", None) or None
        export_peft_adapter(self.model, directory, base_model_name_or_path=name_or_path)
        with open(os.path.join(directory, CONFIG_FILE), "w") as handle:
            json.dump(dataclasses.asdict(config), handle, indent=2, sort_keys=True)
        save_file({**_factor_state(self.model), **head_state(self.model)}, os.path.join(directory, WEIGHTS_FILE),
                  metadata={"format": "pt"})
        return os.fspath(directory)

    @classmethod
    def from_pretrained(cls, base_model: torch.nn.Module, directory: str | os.PathLike) -> "AutoLoRAModel":
        """Inject the saved config into ``base_model`` (in place) and load the saved factors, heads and selection
        logits: the same config, alphas, ranks and outputs as the model saved, its tensors bit-identical where the
        base model has the saved dtypes (others are cast, as ``load_state_dict`` does).

        ValueError when ``directory`` lacks a file :meth:`save_pretrained` writes, or when its tensors do not fit the
        base model (then the base model is left as it was)."""
        missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE, SELECTION_FILE)
                   if not os.path.isfile(os.path.join(directory, name))]
        if missing:
            raise ValueError(f"{os.fspath(directory)!r} is not a directory written by AutoLoRAModel.save_pretrained: "
                             f"it lacks {missing} (a PEFT adapter alone loads with peft.PeftModel.from_pretrained)")
        config = _read_config(os.path.join(directory, CONFIG_FILE))
        saved = {**load_file(os.path.join(directory, WEIGHTS_FILE)),
                 **{k: v for k, v in load_file(os.path.join(directory, SELECTION_FILE)).items() if k.endswith(".beta")}}
        requires_grad = {name: p.requires_grad for name, p in base_model.named_parameters()}
        wrapped = cls(base_model, config)
        try:
            _check_fits(wrapped.model, saved, directory)
        except ValueError:
            unload_adapters(base_model)
            for name, param in base_model.named_parameters():
                param.requires_grad_(requires_grad[name])
            raise
        wrapped.model.load_state_dict(saved, strict=False)
        return wrapped


def _resolved_config(config, model) -> AutoLoRAConfig:
    if isinstance(config, AutoLoRAConfig):
        return config
    if isinstance(config, LoraConfig):
        return autolora_config_from(config, model)
    raise TypeError(f"config must be an autolora.AutoLoRAConfig or a peft.LoraConfig, got {type(config).__name__}")


def _factor_state(model) -> dict[str, torch.Tensor]:
    """{"<branch>.lora_A" / "<branch>.lora_B": factor} of every branch, detached on the CPU."""
    return {f"{name}.{factor}": getattr(branch, factor).detach().contiguous().cpu()
            for name, branch in adapter_branches(model).items() for factor in FACTORS}


def _read_config(path) -> AutoLoRAConfig:
    with open(path) as handle:
        fields = json.load(handle)
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(AutoLoRAConfig)})
    if unknown:
        raise ValueError(f"{path} has fields {unknown} that AutoLoRAConfig does not know; was it written by a "
                         "different version of autolora?")
    return AutoLoRAConfig(**fields)


def _check_fits(model, saved, directory) -> None:
    """ValueError unless ``saved`` holds exactly the factors, logits and head state of ``model``, shaped alike."""
    logits = {k: v for k, v in selection_state(model)[0].items() if k.endswith(".beta")}
    expected = {**_factor_state(model), **logits, **head_state(model)}
    missing, unexpected = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    shapes = {k: (tuple(saved[k].shape), tuple(v.shape)) for k, v in expected.items()
              if k in saved and saved[k].shape != v.shape}
    if missing or unexpected or shapes:
        raise ValueError(f"the adapter in {os.fspath(directory)!r} does not fit the base model: missing {missing}, "
                         f"unexpected {unexpected}, shapes (saved, model) {shapes}; load it onto the kind of base "
                         "model it was saved from")
