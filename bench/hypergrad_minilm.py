"""Hypergradient accuracy on the real model: finite_difference and first_order against exact, per module.

all-MiniLM-L6-v2 (eager attention: the exact method differentiates twice) with AutoLoRA (k = 8) on query/value of
its 6 layers; one D_tr and one D_val batch of real Rotten Tomatoes sentences (16 x 64 tokens); dropout off so that
every method sees the same function. The one-step hypergradient h = d Lval(W', beta) / d beta is computed by each
method at two points:

* start: the injected model as initialised. lora_B = 0, so the logits reach Lval only through the lookahead step
  (W'_B = -eta grad_B Ltr): both terms of h come from that one step.
* after warm-up: ``--warmup-steps`` AdamW steps on the LoRA factors and head at the default preset's lr.

and with the SGD lookahead (eta = the weights' lr) and, after warm-up, the Adam lookahead (the AdamW state of the
warm-up optimiser). Per module: cosine between h of the method and exact h, and ||h - h_exact|| / ||h_exact||.

    python bench/hypergrad_minilm.py [--warmup-steps 50] [--lr 1e-2] [--seed 0]      # writes the JSON and the page
"""
import argparse
import json
import os
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import hypergrad
from autolora.loading import default_model_dir
from autolora.config import AutoLoRAConfig
from autolora.data import make_loader, read_rotten_tomatoes, tokenize_task
from autolora.model import adapter_branches, get_autolora_model
from autolora.training import model_loss, weight_parameters
from hardware import cpu_model

HERE = os.path.dirname(os.path.abspath(__file__))
RESULT = os.path.join(HERE, "results", "hypergrad_minilm.json")
PAGE = os.path.join(HERE, "..", "docs", "hypergrad_minilm.md")


def batches(tokenizer, seed):
    """(train batch, val batch): 16 training sentences each, 64 tokens, disjoint."""
    task = tokenize_task(read_rotten_tomatoes(seed), tokenizer, max_length=64)
    loader = make_loader(task.train, 16, shuffle=True, seed=seed, tokenizer=tokenizer)
    stream = iter(loader)
    return next(stream), next(stream), loader


def model_and_parts(seed):
    path = default_model_dir()
    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation="eager",
                                                              hidden_dropout_prob=0.0,
                                                              attention_probs_dropout_prob=0.0)
    model = get_autolora_model(base, AutoLoRAConfig(max_rank=8)).train()
    names = list(adapter_branches(model))
    return model, AutoTokenizer.from_pretrained(path), names


def losses(model, weights, betas, train, val):
    by_id = {id(p): n for n, p in model.named_parameters()}
    w_names, b_names = [by_id[id(w)] for w in weights], [by_id[id(b)] for b in betas]

    def at(batch):
        return lambda w, b: torch.func.functional_call(model, {**dict(zip(w_names, w)), **dict(zip(b_names, b))},
                                                       args=(), kwargs=batch).loss
    return at(train), at(val)


def compare(model, names, train, val, lr, inner_update=None):
    """{method: {"cosine": {module: c}, "relative_error": {module: e}}} against exact, and exact's norm."""
    weights = weight_parameters(model)
    betas = [b.beta for b in adapter_branches(model).values()]
    train_loss, val_loss = losses(model, weights, betas, train, val)
    step = {"inner_update": inner_update} if inner_update is not None else {"lr": lr}
    h = {method: hypergrad.unrolled_hypergrad(train_loss, val_loss, weights, betas, method=method, **step)
         for method in ("exact", "finite_difference", "first_order")}
    out = {"exact_norm": {n: float(e.norm()) for n, e in zip(names, h["exact"])}}
    for method in ("finite_difference", "first_order"):
        cos, err = {}, {}
        for name, got, want in zip(names, h[method], h["exact"]):
            scale = float(want.norm())
            # <a, b> / (|a| |b|) without cosine_similarity's eps floor, which swamps hypergradients of norm 1e-11
            cos[name] = float(got.double() @ want.double() / (got.double().norm() * scale)) if scale > 0 else None
            err[name] = float((got - want).norm()) / scale if scale > 0 else None
        out[method] = {"cosine": cos, "relative_error": err}
    return out


def run(args):
    model, tokenizer, names = model_and_parts(args.seed)
    train, val, loader = batches(tokenizer, args.seed)
    started = time.perf_counter()
    record = {"seed": args.seed, "lr": args.lr, "warmup_steps": args.warmup_steps, "modules": names,
              "hardware": f"{cpu_model()}, {os.cpu_count()} cores", "torch": torch.__version__,
              "start": {"sgd": compare(model, names, train, val, args.lr)}}
    weights = weight_parameters(model)
    optimizer = torch.optim.AdamW(weights, lr=args.lr, weight_decay=0.01)
    stream = iter(loader)
    for _ in range(args.warmup_steps):
        grads = torch.autograd.grad(model_loss(model, next(stream)), weights)
        for w, g in zip(weights, grads):
            w.grad = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    adam = hypergrad.AdamWUpdate.from_optimizer(optimizer, weights)
    record["after_warmup"] = {"sgd": compare(model, names, train, val, args.lr),
                              "adam": compare(model, names, train, val, args.lr, inner_update=adam)}
    record["seconds"] = time.perf_counter() - started
    return record


def page(record) -> str:
    """docs/hypergrad_minilm.md from the JSON record."""
    lines = ["# Hypergradient accuracy on all-MiniLM-L6-v2", "",
             "Generated by `python bench/hypergrad_minilm.py` (the record is "
             "`bench/results/hypergrad_minilm.json`); do not edit by hand.", "",
             f"One D_tr and one D_val batch of 16 Rotten Tomatoes sentences (64 tokens), dropout off, k = 8, seed "
             f"{record['seed']}, weights lr {record['lr']} (the SGD lookahead's eta), warm-up "
             f"{record['warmup_steps']} AdamW steps. Machine: {record['hardware']}; torch {record['torch']}. "
             "Per module: cosine between the method's h and exact h, and ||h - h_exact|| / ||h_exact||. "
             "'-' where exact h is 0.", ""]
    for point, lookaheads in (("start", record["start"]), ("after warm-up", record["after_warmup"])):
        for lookahead, result in lookaheads.items():
            lines += [f"## {point}, {lookahead} lookahead", "",
                      "| module | ||h_exact|| | finite_difference cosine | finite_difference rel. error | "
                      "first_order cosine | first_order rel. error |", "|---|---|---|---|---|---|"]
            for name in record["modules"]:
                cells = [f"{result['exact_norm'][name]:.3g}"]
                for method in ("finite_difference", "first_order"):
                    for key in ("cosine", "relative_error"):
                        value = result[method][key][name]
                        cells.append("-" if value is None else f"{value:.4f}")
                layer = name.split(".")[3] + " " + name.split(".")[-1]
                lines.append(f"| {layer} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--page-only", action="store_true", help="rewrite the page from the cached record")
    args = parser.parse_args(argv)
    if not args.page_only:
        record = run(args)
        os.makedirs(os.path.dirname(RESULT), exist_ok=True)
        with open(RESULT, "w") as f:
            json.dump(record, f, indent=1)
    with open(RESULT) as f:
        record = json.load(f)
    with open(PAGE, "w") as f:
        f.write(page(record))
    print(f"wrote {RESULT} and {os.path.normpath(PAGE)}")


if __name__ == "__main__":
    main()
