"""autolora.trainer.SearchTrainer: the rank search inside transformers.Trainer (its optimizer, its first meta step,
the learning-rate schedule the lookahead sees, checkpoints and resume, logs, refused settings)."""
import copy
import os
import shutil

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments, default_data_collator

import hypergrad.bilevel
from autolora.config import AutoLoRAConfig
from autolora.data import make_loader, split_in_two
from autolora.model import adapter_branches, alphas, get_autolora_model, selection_parameters
from autolora.trainer import SEARCH_STATE_NAME, SearchTrainer
from autolora.training import weight_parameters
from test_search import explicit_hypergrad, synthetic_dataset, without_dropout
from tiny_models import tiny_bert

K = 4
STEPS = 6
SEARCH = {"selection_lr": 0.05, "warmup_steps": 1}


def autolora_bert(selection="softmax", dtype=torch.float32):
    """Tiny BERT (no dropout) with AutoLoRA; the LoRA A initialisation draws from the global RNG, seeded here."""
    torch.manual_seed(0)
    base = tiny_bert(num_labels=3).to(dtype)
    return without_dropout(get_autolora_model(base, AutoLoRAConfig(max_rank=K, selection=selection)))


def training_args(output_dir, **overrides):
    settings = dict(output_dir=str(output_dir), per_device_train_batch_size=4, learning_rate=1e-2, max_steps=STEPS,
                    logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=3,
                    disable_tqdm=True)
    return TrainingArguments(**{**settings, **overrides})


def search_trainer(output_dir, model=None, search_options=SEARCH, data=None, **overrides):
    model = autolora_bert() if model is None else model
    data = synthetic_dataset(n=64) if data is None else data
    return SearchTrainer(model, training_args(output_dir, **overrides), data, search_options=search_options)


class StopAt(TrainerCallback):
    """Interrupt training after ``step`` optimizer steps (after that step's checkpoint is written)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def trained_state(trainer):
    model = trainer.model
    return alphas(model), {id_: p.detach().clone() for id_, p in enumerate(weight_parameters(model))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A: STEPS steps uninterrupted (checkpoint at STEPS / 2). Run B: the same run stopped after the checkpoint
    at STEPS / 2. Returns A's trainer and B's checkpoint folder."""
    half = STEPS // 2
    full = search_trainer(tmp_path_factory.mktemp("full"), save_strategy="steps", save_steps=half)
    full.train()
    interrupted = search_trainer(tmp_path_factory.mktemp("interrupted"), save_strategy="steps", save_steps=half)
    interrupted.add_callback(StopAt(half))
    interrupted.train()
    assert interrupted.state.global_step == half
    return full, os.path.join(interrupted.args.output_dir, f"checkpoint-{half}")


def resumed(tmp_path, checkpoint):
    trainer = search_trainer(tmp_path, save_strategy="steps", save_steps=STEPS // 2)
    trainer.train(resume_from_checkpoint=checkpoint)
    return trainer


def test_resume_reaches_the_alphas_and_weights_of_an_uninterrupted_run(runs, tmp_path):
    full, checkpoint = runs
    assert os.path.isfile(os.path.join(checkpoint, SEARCH_STATE_NAME))
    trainer = resumed(tmp_path, checkpoint)
    assert trainer.state.global_step == STEPS
    full_alphas, full_weights = trained_state(full)
    resumed_alphas, resumed_weights = trained_state(trainer)
    assert any(not torch.allclose(a, torch.full((K,), 1 / K)) for a in full_alphas.values())
    torch.testing.assert_close(resumed_alphas, full_alphas, rtol=0, atol=0)
    torch.testing.assert_close(resumed_weights, full_weights, rtol=0, atol=0)
    full_result, resumed_result = full.search_result(), trainer.search_result()
    assert resumed_result.history["steps"] == full_result.history["steps"] == list(range(STEPS + 1))
    torch.testing.assert_close(resumed_result.history["alphas"], full_result.history["alphas"], rtol=0, atol=0)
    assert resumed_result.diagnostics["step"] == full_result.diagnostics["step"] == list(range(2, STEPS + 1))


def test_resume_without_the_search_state_differs(runs, tmp_path, monkeypatch):
    """Control for the test above: the same resume with the searcher's state left fresh does not reach run A."""
    full, checkpoint = runs
    monkeypatch.setattr(SearchTrainer, "_load_search_state", lambda self, checkpoint: None)
    trainer = resumed(tmp_path, checkpoint)
    full_alphas, _ = trained_state(full)
    fresh_alphas, _ = trained_state(trainer)
    assert any(not torch.allclose(fresh_alphas[name], full_alphas[name], atol=1e-6) for name in full_alphas)


def test_resume_from_a_checkpoint_without_search_state_is_refused(runs, tmp_path):
    _, checkpoint = runs
    plain = shutil.copytree(checkpoint, tmp_path / "plain")
    os.remove(plain / SEARCH_STATE_NAME)
    with pytest.raises(FileNotFoundError, match=SEARCH_STATE_NAME):
        search_trainer(tmp_path / "out").train(resume_from_checkpoint=str(plain))


def test_logs_carry_alpha_separation_total_rank_and_the_latest_meta_step(runs):
    full, _ = runs
    logs = [entry for entry in full.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == list(range(1, STEPS + 1))
    for entry in logs:
        assert {"alpha_separation_mean", "alpha_separation_min", "total_rank"} <= entry.keys()
    assert "search_val_loss" not in logs[0]  # step 1 is the warm-up step
    assert all({"search_val_loss", "search_hypergrad_norm"} <= entry.keys() for entry in logs[1:])
    assert [entry["search_val_loss"] for entry in logs[1:]] == full.search_result().val_losses
    final = list(alphas(full.model).values())
    separations = [float((a - 1 / K).abs().max()) for a in final]  # softmax: threshold 1/k
    assert logs[-1]["alpha_separation_mean"] == pytest.approx(sum(separations) / len(separations))
    assert logs[-1]["alpha_separation_min"] == pytest.approx(min(separations))
    assert logs[-1]["total_rank"] == sum(int((a >= 1 / K).sum()) for a in final)


def test_optimizer_holds_exactly_the_weights_and_the_logits_move(runs):
    full, _ = runs
    model = full.model
    assert full.searcher.inner_optimizer is full.optimizer.optimizer  # the torch optimizer inside accelerate's wrapper
    held = [p for group in full.optimizer.param_groups for p in group["params"]]
    assert len(held) == len({id(p) for p in held})
    assert {id(p) for p in held} == {id(p) for p in weight_parameters(model)}
    assert not {id(p) for p in held} & {id(b) for b in selection_parameters(model)}
    decay = {id(p): group["weight_decay"] for group in full.optimizer.param_groups for p in group["params"]}
    assert decay[id(model.classifier.bias)] == 0.0  # the Trainer's groups: no decay on biases
    assert all(decay[id(b.lora_A)] == full.args.weight_decay for b in adapter_branches(model).values())
    assert all(not torch.equal(b, torch.zeros(K)) for b in selection_parameters(model))


def test_first_meta_step_is_sgd_on_the_explicit_hypergradient(tmp_path):
    """method exact, SGD lookahead, SGD on the logits, no warm-up: after the first step beta = beta_0 - s h with h =
    d Lval(W - lr g, beta) / d beta by autograd through the explicit update (oracle without hypergrad), on the first
    D_tr batch the Trainer draws (sequential sampler: the first rows of D_tr) and the first D_val batch of a stream
    shuffled from seed + 1."""
    seed, batch_size, lr, selection_lr = 3, 4, 1e-2, 10.0
    model = autolora_bert(dtype=torch.float64)
    model.set_attn_implementation("eager")  # SDPA's CPU kernel has no double backward, which "exact" needs
    with torch.no_grad():
        for branch in adapter_branches(model).values():
            branch.lora_B.normal_(generator=torch.Generator().manual_seed(5))
    data = synthetic_dataset(n=64)
    d_tr, d_val = split_in_two(data, seed)
    train_batch = next(iter(make_loader(d_tr, batch_size, shuffle=False)))
    val_batch = next(iter(make_loader(d_val, batch_size, shuffle=True, seed=seed + 1)))
    oracle = copy.deepcopy(model)
    h, _ = explicit_hypergrad(oracle, weight_parameters(oracle), selection_parameters(oracle), train_batch,
                              val_batch, lr)
    beta0 = [b.detach().clone() for b in selection_parameters(model)]
    options = {"method": "exact", "lookahead": "sgd", "selection_optimizer": "sgd", "selection_lr": selection_lr,
               "warmup_steps": 0}
    trainer = search_trainer(tmp_path, model, options, data, max_steps=1, train_sampling_strategy="sequential",
                             learning_rate=lr, seed=seed, lr_scheduler_type="constant")
    trainer.train()
    assert any(grad.abs().max() > 1e-4 for grad in h)
    for beta, start, grad in zip(selection_parameters(model), beta0, h):
        torch.testing.assert_close(beta.detach(), start - selection_lr * grad, rtol=0, atol=1e-10)


def test_sgd_lookahead_steps_with_the_scheduled_learning_rate(tmp_path, monkeypatch):
    """eta of every meta step's SGD lookahead = the linear schedule with 2 warm-up steps at that step:
    lr * t / 2 for t < 2, then lr * (N - t) / (N - 2) (transformers' get_linear_schedule_with_warmup)."""
    etas = []
    sgd_update = hypergrad.bilevel.SGDUpdate
    monkeypatch.setattr(hypergrad.bilevel, "SGDUpdate", lambda lr: etas.append(lr) or sgd_update(lr))
    lr, warmup = 1e-2, 2
    trainer = search_trainer(tmp_path, search_options={"warmup_steps": 0, "lookahead": "sgd"},
                             lr_scheduler_type="linear", warmup_steps=warmup, learning_rate=lr)
    trainer.train()
    expected = [lr * (t / warmup if t < warmup else (STEPS - t) / (STEPS - warmup)) for t in range(STEPS)]
    assert etas == pytest.approx(expected, rel=1e-12, abs=0)


def test_search_dataset_is_d_val_and_both_streams_use_the_trainers_collator(tmp_path):
    """With search_dataset, D_tr is the whole train_dataset and D_val batches are collated by data_collator."""
    seen = []

    def recording_collator(rows):
        seen.extend(row["input_ids"][0] for row in rows)
        return default_data_collator(rows)

    data = synthetic_dataset(n=16)
    d_val = data.map(lambda row: {"input_ids": [0] + row["input_ids"][1:]})  # first token 0 marks D_val rows
    trainer = SearchTrainer(autolora_bert(), training_args(tmp_path, max_steps=2), data, search_dataset=d_val,
                            search_options={"warmup_steps": 0}, data_collator=recording_collator)
    assert len(trainer.train_dataset) == len(data)
    trainer.train()
    assert seen.count(0) >= 2 * 4 and len(seen) - seen.count(0) >= 2 * 4


@pytest.mark.parametrize("overrides, options, match", [
    ({"gradient_accumulation_steps": 2}, {}, "gradient_accumulation_steps"),
    ({}, {"weight_lr": 1e-3}, "TrainingArguments.learning_rate"),
    ({}, {"weight_decay": 0.1}, "TrainingArguments.weight_decay"),
    ({}, {"lookahead": "bogus"}, "lookahead"),
    ({"label_smoothing_factor": 0.1}, {}, "label_smoothing_factor"),
])
def test_refused_settings_raise_naming_them(tmp_path, overrides, options, match):
    with pytest.raises(ValueError, match=match):
        search_trainer(tmp_path, search_options=options, **overrides)


def test_adam_lookahead_with_a_non_adam_optim_is_refused(tmp_path):
    trainer = search_trainer(tmp_path, search_options={"lookahead": "adam"}, optim="sgd")
    with pytest.raises(ValueError, match="lookahead='adam'"):
        trainer.train()


def test_model_without_selection_logits_is_refused(tmp_path):
    with pytest.raises(ValueError, match="selection logits"):
        search_trainer(tmp_path, autolora_bert(selection="fixed"))


def test_search_result_before_training_is_refused(tmp_path):
    with pytest.raises(ValueError, match="train"):
        search_trainer(tmp_path).search_result()


def test_bf16_autocast_search_follows_the_float32_search(tmp_path):
    """TrainingArguments(bf16=True) runs the forward passes under CPU bfloat16 autocast (the finite-difference passes
    in float32): after the same steps the alphas differ from the float32 search's (autocast ran) by a small fraction
    of how far they moved."""
    runs = {}
    for bf16 in (False, True):
        trainer = search_trainer(tmp_path / str(bf16), bf16=bf16)
        start = alphas(trainer.model)
        trainer.train()
        runs[bf16] = alphas(trainer.model)
    ratios = {}
    for name in runs[False]:
        moved = (runs[False][name] - start[name]).abs().max()
        assert moved > 1e-3, name
        ratios[name] = float((runs[True][name] - runs[False][name]).abs().max() / moved)
    assert max(ratios.values()) < 0.25 and min(ratios.values()) > 0, ratios
