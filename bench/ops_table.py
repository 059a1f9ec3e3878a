"""Time of the fused LoRA linear against a plain frozen linear, side by side in one run.

For each (N, d, r) with d_in = d_out = d, float32, five ways to compute y = x W^T + b [+ s ((x A^T) alpha) B^T]:

    plain      F.linear(x, W, b)                                          (frozen linear, the 1.00x baseline)
    peft       F.linear(x, W, b) + F.linear(F.linear(x, A) * alpha, B) * s   (PEFT-style composition)
    reference  autolora.ops.lora_linear_reference
    fused      autolora.ops.lora_linear  (the autolora._C kernel when built)
    fused_lx   autolora.ops.lora_linear(..., lora_x=x): the path taken with dropout on the LoRA input (the CPU
               kernel then applies the rank-r term per row instead of folding it into the weight)

"fwd+bwd" times the forward and torch.autograd.grad of <y, G> for x, A, B, alpha (W, b frozen; plain: x only);
"fwd" times the forward under torch.no_grad(). The candidates run interleaved, one repetition each in turn, and
each table reports one statistic of each candidate's times (median, or min) divided by the same statistic of
plain's times. With several ``--statistic`` values the tables come from the same measurements.

    python bench/ops_table.py [--repeats 30] [--seed 0] [--threads T] [--clock wall|cpu] [--statistic median min]
                              [--heap default|steady]

``--clock cpu`` measures the process's CPU time (time.process_time) instead of wall-clock time: with ``--threads 1``
it counts only this process's work, a steadier measure when other processes share the cores.

``--heap steady`` (glibc only) serves every allocation up to 32 MiB from malloc's heap and never returns freed heap
memory to the system. With glibc's defaults, whether a freed multi-MiB buffer is handed back (and its pages
faulted in and zeroed again on the next call) depends on the exact sizes and order of the allocations, so one
candidate can pay thousands of page faults per call while another with the same arithmetic pays none. The setting
applies to all candidates alike.
"""
import argparse
import ctypes
import ctypes.util
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


def fused_lx(p):
    return ops.lora_linear(p["x"], p["weight"], p["bias"], p["lora_A"], p["lora_B"], p["alpha"], SCALING,
                           lora_x=p["x"])


CANDIDATES = {"plain": plain, "peft": peft, "reference": reference, "fused": fused, "fused_lx": fused_lx}
TRAINABLE = {name: ("x",) if name == "plain" else ("x", "lora_A", "lora_B", "alpha") for name in CANDIDATES}


def forward_backward(name, problem):
    """One training-style call: forward, then gradients of <y, G> for the candidate's trainable tensors."""
    y = CANDIDATES[name](problem)
    return torch.autograd.grad(y, [problem[k] for k in TRAINABLE[name]], problem["grad_y"])


def forward_only(name, problem):
    with torch.no_grad():
        return CANDIDATES[name](problem)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def use_steady_heap():
    """glibc malloc: allocations up to 32 MiB (its maximum mmap threshold) come from the heap, which is never
    trimmed."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not (libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)):
        raise SystemExit("--heap steady needs glibc's mallopt")


STATISTICS = {"median": statistics.median, "min": min}


def interleaved_times(step, problem, repeats, clock, warmup=3):
    """Seconds of each repetition of step(name, problem) per candidate, candidates alternating within a repetition."""
    times = {name: [] for name in CANDIDATES}
    for rep in range(warmup + repeats):
        for name in CANDIDATES:
            start = clock()
            step(name, problem)
            if rep >= warmup:
                times[name].append(clock() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall-clock or process CPU time")
    parser.add_argument("--statistic", nargs="+", choices=sorted(STATISTICS), default=["median"],
                        help="statistic(s) of each candidate's times to report, one table each")
    parser.add_argument("--heap", choices=("default", "steady"), default="default",
                        help="glibc malloc as configured, or a heap that is never trimmed (no page-fault churn)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.heap == "steady":
        use_steady_heap()
    print(f"torch {torch.__version__}, backend {ops.backend()}, {torch.get_num_threads()} threads, CPU: {cpu_model()}")
    print(f"float32, seed {args.seed}, {args.repeats} interleaved repetitions, {args.clock} clock, {args.heap} heap")
    rows = {statistic: [] for statistic in args.statistic}
    for n, d, r in SHAPES:
        problem = make_problem(n, d, r, args.seed)
        for mode, step in (("fwd+bwd", forward_backward), ("fwd", forward_only)):
            times = interleaved_times(step, problem, args.repeats, CLOCKS[args.clock])
            for statistic in args.statistic:
                value = {name: STATISTICS[statistic](samples) for name, samples in times.items()}
                ratios = " | ".join(f"{value[name] / value['plain']:.3f}x" for name in list(CANDIDATES)[1:])
                rows[statistic].append(f"| {n} | {d} | {r} | {mode} | {value['plain'] * 1e3:.2f} | {ratios} |")
    header = "| N | d | r | mode | plain ms | " + " | ".join(list(CANDIDATES)[1:]) + " |"
    for statistic, lines in rows.items():
        print(f"\n{statistic} per candidate, as ratio to plain's {statistic}\n")
        print("\n".join([header, "|---" * (header.count("|") - 1) + "|", *lines]))


if __name__ == "__main__":
    main()
