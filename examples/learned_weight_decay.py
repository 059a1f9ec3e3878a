"""Learn one weight-decay coefficient per input feature on validation data with hypergrad.BilevelOptimizer.

Linear regression on 30 noisy training points with 20 features, of which only the first 5 carry signal. The
training loss is  mean (x w - y)^2 + 0.5 sum_i exp(log_decay_i) w_i^2;  log_decay is a free tensor that the loss
closes over and that an Adam outer optimizer updates with the one-step hypergradient of the validation loss.

    python examples/learned_weight_decay.py [--method exact|finite_difference|first_order] [--steps 300] [--seed 0]

Compare with a run whose decay stays fixed at its initial value (outer learning rate 0). With first_order the
decay never moves: the validation loss does not depend on it directly, only through the weights.
"""
import argparse

import torch
from torch import nn

import hypergrad


def make_data(seed, n_features=20, n_informative=5):
    """Training (30 points), validation (200) and test (2000) sets from one sparse linear model plus unit noise."""
    g = torch.Generator().manual_seed(seed)
    w_true = torch.zeros(n_features)
    w_true[:n_informative] = 2 * torch.randn(n_informative, generator=g)

    def sample(n):
        x = torch.randn(n, n_features, generator=g)
        return x, x @ w_true + torch.randn(n, generator=g)

    return sample(30), sample(200), sample(2000)


def mse(model, batch):
    inputs, targets = batch
    return (model(inputs).squeeze(-1) - targets).pow(2).mean()


def train(method, outer_lr, steps, seed):
    """Run the bilevel loop; return (validation loss, test loss, learned decay)."""
    train_set, val_set, test_set = make_data(seed)
    torch.manual_seed(seed)
    model = nn.Linear(train_set[0].shape[1], 1, bias=False)
    log_decay = torch.full((train_set[0].shape[1],), -3.0, requires_grad=True)

    def regularised_mse(m, batch):
        return mse(m, batch) + 0.5 * (torch.exp(log_decay) * m.weight.squeeze(0).pow(2)).sum()

    optimizer = hypergrad.BilevelOptimizer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.02),
        torch.optim.Adam([log_decay], lr=outer_lr),
        train_loss=regularised_mse,
        val_loss=mse,
        method=method,
    )
    for _ in range(steps):
        optimizer.step(train_set, val_set)
    with torch.no_grad():
        return mse(model, val_set).item(), mse(model, test_set).item(), torch.exp(log_decay)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="exact", choices=hypergrad.UNROLLED_METHODS)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    fixed_val, fixed_test, _ = train(args.method, 0.0, args.steps, args.seed)
    learned_val, learned_test, decay = train(args.method, 0.05, args.steps, args.seed)
    print(f"fixed decay   exp(-3) = {torch.exp(torch.tensor(-3.0)):.3f}: val loss {fixed_val:.3f}, "
          f"test loss {fixed_test:.3f}")
    print(f"learned decay ({args.method}): val loss {learned_val:.3f}, test loss {learned_test:.3f}")
    print(f"mean learned decay on the 5 informative features {decay[:5].mean():.3f}, "
          f"on the 15 others {decay[5:].mean():.3f}")


if __name__ == "__main__":
    main()
