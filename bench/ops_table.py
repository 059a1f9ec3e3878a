"""Time of the fused LoRA linear against a plain frozen linear, side by side in one run.

For each (N, d, r) with d_in = d_out = d, float32, four ways to compute y = x W^T + b [+ s ((x A^T) alpha) B^T]:

    plain      F.linear(x, W, b)                                          (frozen linear, the 1.00x baseline)
    peft       F.linear(x, W, b) + F.linear(F.linear(x, A) * alpha, B) * s   (PEFT-style composition)
    reference  autolora.ops.lora_linear_reference
    fused      autolora.ops.lora_linear  (the autolora._C kernel when built)

"fwd+bwd" times the forward and torch.autograd.grad of <y, G> for x, A, B, alpha (W, b frozen; plain: x only);
"fwd" times the forward under torch.no_grad(). The candidates run interleaved, one repetition each in turn, and
the table reports each one's median divided by plain's median.

    python bench/ops_table.py [--repeats 30] [--seed 0] [--threads T] [--clock wall|cpu]

``--clock cpu`` measures the process's CPU time (time.process_time) instead of wall-clock time: with ``--threads 1``
it counts only this process's work, a steadier measure when other processes share the cores.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from autolora import ops
from hardware import cpu_model

SHAPES = ((2048, 768, 8), (2048, 384, 8), (4096, 1024, 16))
SCALING = 2.0


def make_problem(n, d, r, seed):
    """x (n, d), frozen W (d, d) and b (d), LoRA factors A (r, d), B (d, r), alpha (r), upstream gradient G (n, d)."""
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(n, d, generator=g).requires_grad_(), weight=torch.randn(d, d, generator=g) / d ** 0.5,
                bias=torch.randn(d, generator=g), lora_A=(torch.randn(r, d, generator=g) / d ** 0.5).requires_grad_(),
                lora_B=torch.randn(d, r, generator=g).requires_grad_(),
                alpha=torch.softmax(torch.randn(r, generator=g), 0).requires_grad_(),
                grad_y=torch.randn(n, d, generator=g))


def plain(p):
    return F.linear(p["x"], p["weight"], p["bias"])


def peft(p):
    lora = F.linear(F.linear(p["x"], p["lora_A"]) * p["alpha"], p["lora_B"]) * SCALING
    return F.linear(p["x"], p["weight"], p["bias"]) + lora


def reference(p):
    return ops.lora_linear_reference(p["x"], p["weight"], p["bias"], p["lora_A"], p["lora_B"], p["alpha"], SCALING)


def fused(p):
    return ops.lora_linear(p["x"], p["weight"], p["bias"], p["lora_A"], p["lora_B"], p["alpha"], SCALING)


CANDIDATES = {"plain": plain, "peft": peft, "reference": reference, "fused": fused}
TRAINABLE = {"plain": ("x",), "peft": ("x", "lora_A", "lora_B", "alpha"),
             "reference": ("x", "lora_A", "lora_B", "alpha"), "fused": ("x", "lora_A", "lora_B", "alpha")}


def forward_backward(name, problem):
    """One training-style call: forward, then gradients of <y, G> for the candidate's trainable tensors."""
    y = CANDIDATES[name](problem)
    return torch.autograd.grad(y, [problem[k] for k in TRAINABLE[name]], problem["grad_y"])


def forward_only(name, problem):
    with torch.no_grad():
        return CANDIDATES[name](problem)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved_medians(step, problem, repeats, clock, warmup=3):
    """Median seconds of step(name, problem) per candidate, candidates alternating within each repetition."""
    times = {name: [] for name in CANDIDATES}
    for rep in range(warmup + repeats):
        for name in CANDIDATES:
            start = clock()
            step(name, problem)
            if rep >= warmup:
                times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall-clock or process CPU time")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, backend {ops.backend()}, {torch.get_num_threads()} threads, CPU: {cpu_model()}")
    print(f"float32, seed {args.seed}, {args.repeats} interleaved repetitions, {args.clock} clock, median; "
          "ratios to plain")
    header = "| N | d | r | mode | plain ms | peft | reference | fused |"
    print(header + "\n" + "|---" * (header.count("|") - 1) + "|")
    for n, d, r in SHAPES:
        problem = make_problem(n, d, r, args.seed)
        for mode, step in (("fwd+bwd", forward_backward), ("fwd", forward_only)):
            medians = interleaved_medians(step, problem, args.repeats, CLOCKS[args.clock])
            base = medians["plain"]
            ratios = " | ".join(f"{medians[name] / base:.3f}x" for name in ("peft", "reference", "fused"))
            print(f"| {n} | {d} | {r} | {mode} | {base * 1e3:.2f} | {ratios} |")


if __name__ == "__main__":
    main()
