"""Accuracy and cost of hypergrad's one-step methods on an MLP with softmax-gated hidden units.

    python bench/hypergrad_table.py [--seeds 0 1 2 3 4] [--lr 0.1] [--repeats 30] [--threads 1] [--tables a b c]

(a) accuracy: finite_difference (per fd_radius) and first_order, and exact itself in float32, against the exact
    hypergradient in float64 on the same problem (functional API, one SGD step of size --lr);
(b) cost: one BilevelOptimizer.step per method (inner step + meta step) against one plain training step
    (forward, backward, SGD update), timed round-robin in one loop (medians of --repeats, wall-clock and process
    CPU time, --threads torch intra-op threads), and the peak bytes held by autograd graphs (saved tensors, model
    parameters excluded), recorded with saved_tensors_hooks;
(c) mixed-term share: ||h_exact - h_first_order|| / ||h_exact|| along a real AdamW run of the weights, with the Adam
    lookahead (the AdamW step from the optimizer's state) and with the SGD lookahead W - lr g at the same lr.
"""
import argparse
import os
import statistics
import time

import torch
from torch import nn
from torch.func import functional_call

import hypergrad
from hypergrad.tensor_tuples import dot, global_norm
from hardware import cpu_model

RADII = (1e-1, 1e-2, 1e-3, 1e-4)


class GatedMLP(nn.Module):
    """x -> tanh(Linear(x)) * k softmax(gate) per hidden layer (k units) -> Linear -> logits."""

    def __init__(self, d_in, hidden, layers, n_out):
        super().__init__()
        widths = [d_in] + [hidden] * layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.gates = nn.ParameterList(nn.Parameter(0.5 * torch.randn(hidden)) for _ in range(layers))
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x):
        for linear, gate in zip(self.hidden, self.gates):
            x = torch.tanh(linear(x)) * torch.softmax(gate, dim=0) * gate.numel()
        return self.head(x)

    def weight_names(self):
        return [name for name, _ in self.named_parameters() if not name.startswith("gates.")]


def make_problem(seed, dtype, d_in=16, hidden=32, layers=2, n_out=4, batch=64):
    """A seeded GatedMLP and random classification batches (train, val) in ``dtype``."""
    torch.manual_seed(seed)
    model = GatedMLP(d_in, hidden, layers, n_out).to(dtype)
    batches = tuple((torch.randn(batch, d_in, dtype=dtype), torch.randint(0, n_out, (batch,))) for _ in range(2))
    return model, batches[0], batches[1]


def cross_entropy(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def functional_losses(model, train_batch, val_batch):
    """train_loss(W, A), val_loss(W, A) for the functional API: W substituted, A = the model's live gates."""
    names = model.weight_names()

    def at(batch):
        return lambda w, a: nn.functional.cross_entropy(functional_call(model, dict(zip(names, w)), (batch[0],)),
                                                        batch[1])
    return at(train_batch), at(val_batch), [dict(model.named_parameters())[n] for n in names], list(model.gates)


def hypergradient(seed, dtype, method, lr, fd_radius=0.01):
    model, train_batch, val_batch = make_problem(seed, torch.float64)
    model = model.to(dtype)
    train, val, weights, gates = functional_losses(model, (train_batch[0].to(dtype), train_batch[1]),
                                                   (val_batch[0].to(dtype), val_batch[1]))
    h = hypergrad.unrolled_hypergrad(train, val, weights, gates, lr=lr, method=method, fd_radius=fd_radius)
    return tuple(t.double() for t in h)


def accuracy_rows(seeds, lr):
    """(method, dtype, radius, median relative error, max relative error, max 1 - cosine) vs float64 exact."""
    reference = {s: hypergradient(s, torch.float64, "exact", lr) for s in seeds}
    cases = [("exact", torch.float32, None), ("first_order", torch.float64, None)]
    cases += [("finite_difference", dtype, r) for dtype in (torch.float64, torch.float32) for r in RADII]
    rows = []
    for method, dtype, radius in cases:
        errors, cosines = [], []
        for s in seeds:
            h = hypergradient(s, dtype, method, lr, radius or 0.01)
            ref = reference[s]
            diff = tuple(a - b for a, b in zip(h, ref))
            errors.append((global_norm(diff) / global_norm(ref)).item())
            cosines.append((dot(h, ref) / (global_norm(h) * global_norm(ref))).item())
        rows.append((method, str(dtype).replace("torch.", ""), radius, statistics.median(errors), max(errors),
                     1 - min(cosines)))
    return rows


def _mixed_share(train, val, weights, gates, update):
    """||h_exact - h_first_order|| / ||h_exact|| for one inner update."""
    exact, first = (hypergrad.unrolled_hypergrad(train, val, weights, gates, method=m, inner_update=update)
                    for m in ("exact", "first_order"))
    return (global_norm([a - b for a, b in zip(exact, first)]) / global_norm(exact)).item()


def mixed_share_rows(seed, lrs, checkpoints):
    """(lr, step, rms of g, mixed share with the Adam lookahead, with the SGD lookahead of step lr) at each of
    ``checkpoints`` along AdamW training (float64 GatedMLP 16-32-32-4, default betas, eps and weight decay)."""
    rows = []
    for lr in lrs:
        model, train_batch, val_batch = make_problem(seed, torch.float64)
        train, val, weights, gates = functional_losses(model, train_batch, val_batch)
        optimizer = torch.optim.AdamW(weights, lr=lr)
        for step in range(max(checkpoints) + 1):
            grads = torch.autograd.grad(train(weights, gates), weights)
            if step in checkpoints:
                rms = (global_norm(grads) / sum(g.numel() for g in grads) ** 0.5).item()
                rows.append((lr, step, rms,
                             _mixed_share(train, val, weights, gates,
                                          hypergrad.AdamWUpdate.from_optimizer(optimizer, weights)),
                             _mixed_share(train, val, weights, gates, hypergrad.SGDUpdate(lr))))
            for w, g in zip(weights, grads):
                w.grad = g
            optimizer.step()
    return rows


class SavedTensorMeter:
    """Live and peak bytes of distinct storages saved by autograd for backward, excluding ``skip`` storages.

    Saved tensors are held through a handle whose deletion releases the bytes, so the count follows the graphs'
    lifetime. Transient tensors that autograd does not save (e.g. gradients being accumulated) are not counted."""

    def __init__(self, skip_tensors):
        self.skip = {t.untyped_storage().data_ptr() for t in skip_tensors}
        self.refs, self.live, self.peak = {}, 0, 0

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.skip:
            return tensor
        if key in self.refs:
            self.refs[key][0] += 1
        else:
            self.refs[key] = [1, storage.nbytes()]
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        return _SavedHandle(tensor.detach(), self, key)

    @staticmethod
    def unpack(packed):
        return packed.tensor if isinstance(packed, _SavedHandle) else packed

    def release(self, key):
        entry = self.refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.refs[key]


class _SavedHandle:
    __slots__ = ("tensor", "meter", "key")

    def __init__(self, tensor, meter, key):
        self.tensor, self.meter, self.key = tensor, meter, key

    def __del__(self):
        self.meter.release(self.key)


def step_function(kind, seed, d_in, hidden, layers, batch):
    """A fresh model and a zero-argument callable doing one step of ``kind`` ("plain" or a method)."""
    model, train_batch, val_batch = make_problem(seed, torch.float32, d_in, hidden, layers, 10, batch)
    weights = [p for n, p in model.named_parameters() if not n.startswith("gates.")]
    inner = torch.optim.SGD(weights, lr=0.01)
    if kind == "plain":
        def plain_step():
            grads = torch.autograd.grad(cross_entropy(model, train_batch), weights)
            for w, g in zip(weights, grads):
                w.grad = g
            inner.step()
        return model, plain_step
    opt = hypergrad.BilevelOptimizer(model, inner, torch.optim.SGD(model.gates, lr=0.01), cross_entropy,
                                     method=kind)
    return model, lambda: opt.step(train_batch, val_batch)


KINDS = ("plain", "first_order", "finite_difference", "exact")
PASSES = {"plain": "1", "first_order": "2", "finite_difference": "4", "exact": "3-4"}


def cost_rows(seed, repeats, d_in, hidden, layers, batch):
    """(kind, wall s, wall ratio, CPU s, CPU ratio, peak saved MiB, memory ratio); ratios to the plain step,
    times are medians over ``repeats``; CPU time (process_time) is less sensitive to other load on the machine."""
    steps = {kind: step_function(kind, seed, d_in, hidden, layers, batch) for kind in KINDS}
    peaks = {}
    for kind, (model, step) in steps.items():
        meter = SavedTensorMeter(model.parameters())
        with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
            step()
        peaks[kind] = meter.peak
    wall, cpu = {kind: [] for kind in KINDS}, {kind: [] for kind in KINDS}
    for _ in range(3):  # warm-up
        for _, step in steps.values():
            step()
    for _ in range(repeats):
        for kind, (_, step) in steps.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            step()
            wall[kind].append(time.perf_counter() - start_wall)
            cpu[kind].append(time.process_time() - start_cpu)
    wall = {k: statistics.median(v) for k, v in wall.items()}
    cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return [(k, wall[k], wall[k] / wall["plain"], cpu[k], cpu[k] / cpu["plain"], peaks[k] / 2**20,
             peaks[k] / peaks["plain"]) for k in KINDS]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--lr", type=float, default=0.1, help="unrolled step size eta in table (a)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for table (b)")
    parser.add_argument("--size", type=int, nargs=4, default=[256, 512, 2, 128], metavar=("D_IN", "HIDDEN", "LAYERS",
                                                                                          "BATCH"))
    parser.add_argument("--tables", nargs="+", choices="abc", default=list("abc"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"hardware: {cpu_model()}, {args.threads} torch threads; torch {torch.__version__}")
    if "a" in args.tables:
        print(f"\n(a) accuracy vs exact float64; GatedMLP 16-32-32-4, batch 64, eta={args.lr}, seeds {args.seeds}")
        print("| method | dtype | fd_radius | rel. error (median) | rel. error (max) | 1 - cosine (max) |")
        print("|---|---|---|---|---|---|")
        for method, dtype, radius, median, worst, angle in accuracy_rows(args.seeds, args.lr):
            print(f"| {method} | {dtype} | {radius if radius else '-'} | {median:.2e} | {worst:.2e} | {angle:.1e} |")
    if "b" in args.tables:
        print_cost_table(args)
    if "c" in args.tables:
        print(f"\n(c) mixed-term share along AdamW training; GatedMLP 16-32-32-4 float64, batch 64, "
              f"seed {args.seeds[0]}")
        print("| AdamW lr | steps taken | rms(g) | share, Adam lookahead | share, SGD lookahead (eta = lr) |")
        print("|---|---|---|---|---|")
        for lr, step, rms, adam, sgd in mixed_share_rows(args.seeds[0], (1e-3, 1e-4), (0, 1, 10, 100, 1000)):
            print(f"| {lr:g} | {step} | {rms:.1e} | {adam:.1e} | {sgd:.1e} |")
    print(f"load average during the run: {os.getloadavg()}")


def print_cost_table(args):
    d_in, hidden, layers, batch = args.size
    print(f"\n(b) cost per call; GatedMLP {d_in}-{hidden}x{layers}-10 float32, batch {batch}, seed {args.seeds[0]}, "
          f"median of {args.repeats} round-robin repeats")
    print("| step | passes (theory) | wall ms | wall / plain | CPU ms | CPU / plain | saved-tensor peak MiB "
          "| memory / plain |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, wall, wall_ratio, cpu, cpu_ratio, mib, mem_ratio in cost_rows(args.seeds[0], args.repeats, d_in, hidden,
                                                                             layers, batch):
        print(f"| {kind} | {PASSES[kind]} | {wall * 1e3:.2f} | {wall_ratio:.2f} | {cpu * 1e3:.2f} | {cpu_ratio:.2f} "
              f"| {mib:.2f} | {mem_ratio:.2f} |")


if __name__ == "__main__":
    main()
