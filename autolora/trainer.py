"""``SearchTrainer``: the AutoLoRA rank search run by a ``transformers.Trainer``.

``model`` carries AutoLoRA adapters with selection logits (``get_autolora_model(model, AutoLoRAConfig(...))``).
Without ``search_dataset`` the training set is split 1:1 into D_tr / D_val with ``split_in_two(train_dataset,
args.seed)`` (paper §5.2); with it, D_tr = ``train_dataset`` and D_val = ``search_dataset``. The Trainer draws the
D_tr batches as usual; D_val batches come from a resumable stream of their own (batch size
``per_device_train_batch_size``, shuffled from ``args.seed + 1``, collated by the Trainer's ``data_collator``).

Per optimizer step, ``training_step`` runs one :meth:`autolora.RankSearcher.step` with ``step_inner=False``:

1. g = grad_W Ltr(W, beta) on the D_tr batch is put in the weights' ``.grad`` (W: LoRA factors + task head);
2. when a meta step is due (after ``warmup_steps`` steps, every ``meta_every``-th step) the selection logits take
   their step on the hypergradient h = d Lval(W', beta) / d beta on a D_val batch, W' the lookahead of step 3
   (the SGD lookahead's eta is the scheduled learning rate of this step unless ``eta`` is given);
3. the Trainer clips g (``max_grad_norm``), steps its optimizer and its learning-rate scheduler.

Honoured from ``TrainingArguments``: ``learning_rate``, ``weight_decay`` (not on biases and norms, as the Trainer
groups them), ``optim`` with ``adam_beta1`` / ``adam_beta2`` / ``adam_epsilon`` (``lookahead="adam"`` needs an
Adam/AdamW one), ``lr_scheduler_type``, ``warmup_steps`` (of the learning rate; the search's own ``warmup_steps``
option counts the inner steps before the first meta step), ``max_grad_norm``, ``max_steps``, ``num_train_epochs``,
``per_device_train_batch_size``, ``seed``, ``train_sampling_strategy``, ``bf16``, logging, saving, ``report_to``,
and ``resume_from_checkpoint``.
Refused (ValueError): ``gradient_accumulation_steps > 1`` (one meta step per optimizer step), several GPUs or
processes, ``fp16`` (its loss scaler would unscale gradients it never scaled), ``label_smoothing_factor``, and the
``compute_loss_func`` / ``optimizers`` arguments: the search computes ``model(**batch).loss`` itself and builds the
optimizer of the weights (never the selection logits) from the arguments. ``search_options`` are the keyword options
of :class:`autolora.RankSearcher` except ``weight_lr`` and ``weight_decay`` (those are the TrainingArguments').

Checkpoints hold, besides the Trainer's files (the model's ``model.safetensors`` includes the selection logits),
``search_state.pt``: the searcher's state (selection optimiser, step counter, alpha history, diagnostics) and the
D_val stream's position, so ``train(resume_from_checkpoint=...)`` continues to the alphas of an uninterrupted run.
Every ``logging_steps`` the logs add ``alpha_separation_mean`` / ``alpha_separation_min`` (max_j |alpha_j - lambda|
per module, :func:`autolora.readout.alpha_separation`), ``total_rank`` and, after a meta step since the last log,
``search_val_loss`` and ``search_hypergrad_norm`` of the latest one.

Afterwards :meth:`SearchTrainer.search_result` is the :class:`autolora.SearchResult` (``ranks``, ``summary()``).
To retrain with the searched ranks, build the plain LoRA model in stock PEFT and train it with a plain Trainer::

    config = autolora.peft_config.lora_config_for(model, trainer.search_result().ranks)
    retrain_model = peft.get_peft_model(fresh_base_model, config)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import torch
from transformers import Trainer

from .checkpoint import BatchStream, atomic_save, load_checkpoint
from .data import split_in_two
from .model import adapter_branches, ranks as read_ranks, stored_config
from .rank_search import RankSearcher, SearchResult, SearchSettings, resolve_settings, selection_branches
from .readout import alpha_separation
from .training import weight_parameters

SEARCH_STATE_NAME = "search_state.pt"
SEARCH_OPTIONS = ("preset", "method", "selection_lr", "warmup_steps", "lookahead", "selection_optimizer", "eta",
                  "meta_every", "fd_radius", "val_dropout", "record_every")
SETTINGS = tuple(field.name for field in dataclasses.fields(SearchSettings))
TRAINING_ARGUMENT_OF = {"weight_lr": "learning_rate", "weight_decay": "weight_decay"}


class SearchTrainer(Trainer):
    """A ``transformers.Trainer`` whose every optimizer step is one AutoLoRA search step (module docstring)."""

    def __init__(self, model, args, train_dataset, *, search_dataset=None,
                 search_options: Mapping | None = None, **trainer_kwargs):
        self.search_options = _checked_search_options(search_options)
        self._lookahead = resolve_settings(self.search_options.get("preset", "default"), **{
            name: self.search_options.get(name) for name in SETTINGS if name in SEARCH_OPTIONS}).lookahead
        selection_branches(model)  # refuses a model without selection logits before any training
        _check_trainer_kwargs(trainer_kwargs)
        _check_training_arguments(args)
        d_tr, d_val = _search_split(train_dataset, search_dataset, args.seed)
        super().__init__(model=model, args=args, train_dataset=d_tr, **trainer_kwargs)
        self.search_dataset = d_val
        self.searcher: RankSearcher | None = None
        self._val_stream = self._search_stream(d_val)
        self._latest_meta: dict | None = None

    def _search_stream(self, dataset) -> BatchStream:
        """A resumable, shuffled stream of D_val batches collated as the Trainer collates D_tr (unused columns
        removed, ``data_collator``)."""
        collator = self.data_collator
        if hasattr(dataset, "remove_columns"):
            dataset = self._remove_unused_columns(dataset, description="search")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="search")
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.args.per_device_train_batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(self.args.seed + 1),
                                             collate_fn=collator)
        return BatchStream(loader)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The optimizer of the weights alone (LoRA factors and task head, never the selection logits), of the class
        ``args.optim`` names, with the Trainer's weight-decay groups; and the :class:`RankSearcher` stepping the
        selection logits around it."""
        if self.optimizer is None:
            self.optimizer = self._weight_optimizer()
            if self._lookahead == "adam" and not isinstance(self.optimizer, torch.optim.Adam):
                raise ValueError(f"lookahead='adam' models an Adam/AdamW step, but optim={self.args.optim!r} builds "
                                 f"{type(self.optimizer).__name__}: use an AdamW optim such as 'adamw_torch', or "
                                 "lookahead='sgd'")
            self.searcher = RankSearcher(self.model, **self.search_options, inner_optimizer=self.optimizer)
        return self.optimizer

    def _weight_optimizer(self) -> torch.optim.Optimizer:
        weights = weight_parameters(self.model)
        decayed = set(self.get_decay_parameter_names(self.model))
        names = {id(p): name for name, p in self.model.named_parameters()}
        groups = [{"params": [p for p in weights if names[id(p)] in decayed], "weight_decay": self.args.weight_decay},
                  {"params": [p for p in weights if names[id(p)] not in decayed], "weight_decay": 0.0}]
        optimizer_cls, kwargs = (self.optimizer_cls_and_kwargs if self.optimizer_cls_and_kwargs is not None
                                 else self.get_optimizer_cls_and_kwargs(self.args, self.model))
        chooses_params = sorted({"params", "model", "optimizer_dict"} & set(kwargs))
        if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)) or chooses_params:
            raise ValueError(f"optim={self.args.optim!r} builds an optimizer that picks its own parameters; the search "
                             "needs one over the weights alone: use an AdamW optim such as 'adamw_torch'")
        return optimizer_cls([g for g in groups if g["params"]], **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """One search step (module docstring): g in the weights' ``.grad`` for the Trainer's optimizer step and, when
        due, the selection logits' meta step. Returns the detached training loss on ``args.device``.
        ``num_items_in_batch`` is not needed: one batch makes one step, its loss is the model's mean loss."""
        stats = self.searcher.step(self._prepare_inputs(inputs), next(self._val_stream), step_inner=False)
        if stats["meta_step"]:
            self._latest_meta = stats
        return torch.tensor(stats["train_loss"], device=self.args.device)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's logs; the training-loss logs also carry the search's (module docstring)."""
        if "loss" in logs and self.searcher is not None:
            logs.update(self._search_logs())
        super().log(logs, start_time)

    def _search_logs(self) -> dict[str, float]:
        selection = stored_config(self.model).selection
        separations = [alpha_separation(b.alpha().detach(), selection) for b in adapter_branches(self.model).values()]
        logs = {"alpha_separation_mean": sum(separations) / len(separations),
                "alpha_separation_min": min(separations), "total_rank": float(sum(read_ranks(self.model).values()))}
        if self._latest_meta is not None:
            logs.update(search_val_loss=self._latest_meta["val_loss"],
                        search_hypergrad_norm=self._latest_meta["hypergrad_norm"])
            self._latest_meta = None
        return logs

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """The Trainer's optimizer and scheduler files, and :data:`SEARCH_STATE_NAME`."""
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            atomic_save({"searcher": self.searcher.state_dict(), "val_stream": self._val_stream.state_dict()},
                        os.path.join(output_dir, SEARCH_STATE_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """The Trainer's optimizer and scheduler states, then the searcher's and the D_val stream's."""
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._load_search_state(checkpoint)

    def _load_search_state(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, SEARCH_STATE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{checkpoint} has no {SEARCH_STATE_NAME}: resume a search from a checkpoint that "
                                    "SearchTrainer wrote (save_only_model=False)")
        state = load_checkpoint(path)
        self.searcher.load_state_dict(state["searcher"])
        self._val_stream.load_state_dict(state["val_stream"])

    def search_result(self) -> SearchResult:
        """The search so far (:meth:`autolora.RankSearcher.result`): ranks, alphas, history, diagnostics."""
        if self.searcher is None:
            raise ValueError("the search has not started: call train() first")
        return self.searcher.result()


def _checked_search_options(options: Mapping | None) -> dict:
    options = dict(options or {})
    for name, argument in TRAINING_ARGUMENT_OF.items():
        if name in options:
            raise ValueError(f"search_options[{name!r}] is not used by SearchTrainer: the weights' {name} is "
                             f"TrainingArguments.{argument}; set it there")
    unknown = sorted(set(options) - set(SEARCH_OPTIONS))
    if unknown:
        raise ValueError(f"unknown search_options {unknown}; allowed: {list(SEARCH_OPTIONS)}")
    return options


def _check_trainer_kwargs(kwargs: Mapping) -> None:
    for name in ("compute_loss_func", "optimizers"):
        if kwargs.get(name) not in (None, (None, None)):
            raise ValueError(f"SearchTrainer does not take {name}: the search computes the model's own loss and "
                             "builds the weights' optimizer and scheduler from TrainingArguments")


def _search_split(train_dataset, search_dataset, seed: int):
    """(D_tr, D_val): ``train_dataset`` split 1:1 with ``seed``, or (train_dataset, search_dataset)."""
    return (train_dataset, search_dataset) if search_dataset is not None else split_in_two(train_dataset, seed)


def _check_training_arguments(args) -> None:
    if args.gradient_accumulation_steps != 1:
        raise ValueError(f"gradient_accumulation_steps={args.gradient_accumulation_steps}: the search takes one meta "
                         "step per optimizer step on one batch; set gradient_accumulation_steps=1 (raise "
                         "per_device_train_batch_size instead)")
    if args.n_gpu > 1 or args.world_size > 1:
        raise ValueError(f"SearchTrainer runs on one device (got n_gpu={args.n_gpu}, world_size={args.world_size}); "
                         "restrict it to one, e.g. CUDA_VISIBLE_DEVICES=0 without a distributed launcher")
    if args.fp16:
        raise ValueError("fp16=True: the loss scaler would unscale gradients the search never scaled; use bf16=True "
                         "or full precision")
    if args.label_smoothing_factor != 0:
        raise ValueError(f"label_smoothing_factor={args.label_smoothing_factor}: the search trains on the model's own "
                         "loss; set it to 0")
