"""AutoLoRA on a half-precision base model: float32 LoRA factors and selection logits (PEFT's
``autocast_adapter_dtype``), one search step against a float32 reference model, logits that move by steps a
bfloat16 number could not hold, and the finite-difference hypergradient against the exact one.

Tolerances start from bfloat16's unit roundoff u = 2^-8 (8 significand bits): a rounding to bfloat16 multiplies a
value by (1 + d) with |d| <= u. The float32 reference model holds the bf16 model's weights exactly (upcast), so the
two differ only by the rounding of the base activations.
"""
import copy

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import hypergrad
from autolora import AutoLoRAConfig, get_autolora_model
from autolora.model import adapter_branches, lora_parameters, selection_parameters
from autolora.rank_search import search
from test_search import synthetic_dataset, without_dropout
from tiny_models import tiny_bert, tiny_gpt2

BF16_UNIT_ROUNDOFF = 2.0 ** -8
K = 4
HALF = (torch.bfloat16, torch.float16)


def half_precision_bert(dtype=torch.bfloat16, **config):
    """Tiny BERT in ``dtype`` (eager attention: the exact hypergradient needs its double backward) with AutoLoRA."""
    base = tiny_bert(num_labels=3, dtype=dtype)
    base.set_attn_implementation("eager")
    torch.manual_seed(0)
    return get_autolora_model(base, AutoLoRAConfig(max_rank=K, **config))


def bf16_model_and_float32_reference(**config):
    """(bf16 model, float32 model) with identical weights: the reference's base is the bf16 base upcast, both get the
    same LoRA factors, and B is drawn non-zero so that every term of the hypergradient is non-trivial."""
    model = without_dropout(half_precision_bert(**config))
    reference = without_dropout(copy.deepcopy(model).float())
    with torch.no_grad():
        for net in (model, reference):
            generator = torch.Generator().manual_seed(5)
            for branch in adapter_branches(net).values():
                branch.lora_B.copy_(0.1 * torch.randn(branch.lora_B.shape, generator=generator))
    return model, reference


# ------------------------------------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("factory", [tiny_bert, tiny_gpt2], ids=["bert", "gpt2_fused_qkv"])
def test_factors_and_logits_are_float32_and_the_fresh_model_is_the_base_model(factory, dtype):
    """get_autolora_model with the default config on a half-precision model: every LoRA factor and logit is float32,
    the frozen base weights keep their dtype, and (B = 0 at initialisation) the outputs are bit-identical to the
    plain half-precision model's: the base product stays in the base dtype and the sum is rounded once."""
    base = factory(num_labels=3, dtype=dtype)
    base.set_attn_implementation("eager")
    inputs = {"input_ids": torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))}
    with torch.no_grad():
        expected = base(**inputs).logits
    model = get_autolora_model(base, AutoLoRAConfig(max_rank=K))
    adapters = lora_parameters(model) + selection_parameters(model)
    assert len(adapters) == 12 and all(p.dtype == torch.float32 for p in adapters)
    frozen = [p for n, p in model.named_parameters() if "base_layer" in n]
    assert frozen and all(p.dtype == dtype and not p.requires_grad for p in frozen)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.dtype == dtype
    assert torch.equal(logits, expected)


# ------------------------------------------------------------------------------------------------ search

# Relative error of a loss or gradient of the bf16 model against the float32 one: the n ~ 60 roundings along the
# forward and backward pass of 2 layers (q, k, v, scores, softmax, context, output, residual, LayerNorm, feed-forward
# and activation, each way) add up like a random walk, sqrt(n) u ~ 8 u (3%).
MODEL_ROUNDING = 8 * BF16_UNIT_ROUNDOFF


def search_recording_gradients(model, **options):
    """search(model, ...) -> (result, [{parameter name: gradient}] in the order the optimiser steps consumed them)."""
    names = {id(p): n for n, p in model.named_parameters()}
    consumed = []

    def record(optimizer, args, kwargs):
        consumed.append({names[id(p)]: p.grad.detach().double().clone()
                         for group in optimizer.param_groups for p in group["params"]})

    handle = register_optimizer_step_pre_hook(record)
    try:
        return search(model, synthetic_dataset(), **{"warmup_steps": 0, **options}), consumed
    finally:
        handle.remove()


def flat(tensors):
    return torch.cat([t.flatten() for t in tensors])


@pytest.mark.parametrize("selection", ["softmax", "none"])
@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_search_step_on_bf16_model_matches_float32_reference_and_moves_the_logits(method, selection):
    """One search step on the bf16 model and on the float32 model with the same weights: the losses, the weights'
    gradient g (LoRA factors and head) and the hypergradient h agree to MODEL_ROUNDING, and every logit takes
    AdamW's full first step beta - lr * h / (|h| + eps). With selection "none" the logits start at 1.0, where the
    step (1e-3 for |h| >> eps) is below half the bfloat16 spacing: a bf16 logit would not move."""
    lr, eps = 1e-3, 1e-8
    model, reference = bf16_model_and_float32_reference(selection=selection)
    start = [beta.detach().clone() for beta in selection_parameters(model)]
    options = dict(steps=1, method=method, batch_size=4, weight_lr=1e-3, selection_lr=lr, weight_decay=0.0, seed=1)
    result, (g, h) = search_recording_gradients(model, **options)
    expected, (g_ref, h_ref) = search_recording_gradients(reference, **options)
    for losses in ("train_losses", "val_losses"):
        torch.testing.assert_close(getattr(result, losses), getattr(expected, losses), rtol=MODEL_ROUNDING, atol=0)
    assert all(name.endswith(".beta") for name in h) and not any(name.endswith(".beta") for name in g)
    for got, want in ((g, g_ref), (h, h_ref)):
        assert got.keys() == want.keys()
        assert (flat(got.values()) - flat(want.values())).norm() <= MODEL_ROUNDING * flat(want.values()).norm()
    if selection == "none":
        assert torch.tensor(1.0 - lr, dtype=torch.bfloat16) == 1.0
    for beta, beta_0, grad in zip(selection_parameters(model), start, h.values()):
        assert (beta != beta_0).all()
        torch.testing.assert_close(beta.detach().double(), beta_0.double() - lr * grad / (grad.abs() + eps),
                                   rtol=0, atol=2.0 ** -24 * 2)
        assert beta.dtype == torch.float32


# ------------------------------------------------------------------------------------------------ hypergradient


def model_loss_at(model, weights, batch):
    """W -> task loss of ``model`` with the tensors ``weights`` substituted for its LoRA factors (logits live)."""
    names = {id(p): n for n, p in model.named_parameters()}
    weight_names = [names[id(w)] for w in weights]
    return lambda w, _: torch.func.functional_call(model, dict(zip(weight_names, w)), args=(), kwargs=batch).loss


def batch_of(dataset, rows):
    return {key: torch.tensor(dataset[rows][key]) for key in ("input_ids", "attention_mask", "labels")}


def mixed_term_problem():
    """The bf16 model's LoRA factors W, logits beta, Ltr, grad_W Ltr (with graph), v = grad_W Lval(W - eta g) and
    the finite-difference step e = 0.01 / ||v|| of mixed_vp_fd with its default radius."""
    model, _ = bf16_model_and_float32_reference()
    dataset = synthetic_dataset()
    weights, betas = lora_parameters(model), selection_parameters(model)
    train_loss = model_loss_at(model, weights, batch_of(dataset, slice(0, 8)))
    val_loss = model_loss_at(model, weights, batch_of(dataset, slice(8, 16)))
    grads = torch.autograd.grad(train_loss(weights, betas), weights, create_graph=True)
    lookahead = [(w - 1e-3 * g).detach().requires_grad_() for w, g in zip(weights, grads)]
    v = torch.autograd.grad(val_loss(lookahead, betas), lookahead)
    return weights, betas, train_loss, grads, v, 0.01 / flat(v).norm()


def test_finite_difference_perturbation_of_the_factors_is_exact_to_float32_rounding():
    """mixed_vp_fd evaluates Ltr at W + e v and W - e v. With float32 factors the realised shift (W + e v) - W is
    e v up to float32 rounding of W + e v (2^-24 relative); on bfloat16 factors most of it rounds away."""
    weights, _, _, _, v, step = mixed_term_problem()
    for w, direction in zip(weights, v):
        for sign in (1.0, -1.0):
            shifted = w.detach() + sign * step * direction
            torch.testing.assert_close(shifted - w.detach(), sign * step * direction, rtol=0,
                                       atol=2.0 ** -24 * shifted.abs().max().item())


@pytest.mark.parametrize("radius", [0.01, 0.1])
def test_finite_difference_mixed_term_agrees_with_exact_on_bf16_model(radius):
    """The only difference between the two hypergradients is the mixed term [d^2 Ltr / d beta dW] v: exact by double
    backward, finite difference [grad_beta Ltr(W + e v) - grad_beta Ltr(W - e v)] / (2 e), e = r / ||v||.
    (Compared on the hypergradient h = direct - eta * mixed itself the difference would vanish under eta ~ 1e-3.)

    The perturbation is exact in float32 (test above); the two passes still run the bf16 base, whose rounding puts an
    error of relative size kappa u, kappa = 4 (2 layers x attention and feed-forward outputs), into each grad_beta,
    and the difference quotient divides it by 2 e: |fd - exact| <= kappa u ||grad_beta Ltr|| ||v|| / r, plus the
    O(r^2) truncation (at most 0.25 r^2 relative on the float32 model; 0.5 r^2 allowed). The rounding term falls as
    1/r: about 40% of the mixed term at the default r = 0.01, 4% at r = 0.1. A cosine >= sqrt(1 - rho^2) follows
    from a relative error rho."""
    weights, betas, train_loss, grads, v, _ = mixed_term_problem()
    exact = flat(hypergrad.mixed_vp(grads, betas, v))
    fd = flat(hypergrad.mixed_vp_fd(train_loss, weights, betas, v, radius=radius))
    grad_beta = flat(torch.autograd.grad(train_loss(weights, betas), betas))
    rho = (4 * BF16_UNIT_ROUNDOFF * grad_beta.norm() * flat(v).norm() / radius) / exact.norm() + 0.5 * radius ** 2
    assert rho < 0.5  # the bound says something
    assert (fd - exact).norm() <= rho * exact.norm()
    assert torch.nn.functional.cosine_similarity(exact, fd, dim=0) >= (1 - rho ** 2) ** 0.5
    assert exact.dtype == fd.dtype == torch.float32


@pytest.mark.parametrize("autocast, expected", [(True, torch.float32), (False, torch.bfloat16)])
def test_config_flag_reaches_the_injected_layers(autocast, expected):
    model = get_autolora_model(tiny_bert(dtype=torch.bfloat16), AutoLoRAConfig(max_rank=2,
                                                                               autocast_adapter_dtype=autocast))
    for branch in adapter_branches(model).values():
        assert branch.lora_A.dtype == branch.lora_B.dtype == branch.beta.dtype == expected
    with pytest.raises(TypeError, match="autocast_adapter_dtype"):
        AutoLoRAConfig(autocast_adapter_dtype="yes")


def test_object_api_runs_the_finite_difference_passes_in_float32():
    """BilevelOptimizer on the bf16 model substitutes float32 copies of the frozen base in the two finite-difference
    passes, so their quotient estimates the mixed term of the float32 model: it agrees with the exact (double
    backward) mixed term of the float32 reference to within what the bf16 lookahead direction v and the O(r^2)
    truncation leave (a few percent), far inside the error of bf16 passes (tens of percent at r = 0.01, above)."""
    dataset = synthetic_dataset()
    train, val = batch_of(dataset, slice(0, 8)), batch_of(dataset, slice(8, 16))
    mixed = {}
    for name, net, method in (("bf16", 0, "finite_difference"), ("float32", 1, "exact")):
        model = bf16_model_and_float32_reference()[net]
        inner = torch.optim.SGD(lora_parameters(model), lr=1e-3)
        outer = torch.optim.SGD(selection_parameters(model), lr=0.0)
        opt = hypergrad.BilevelOptimizer(model, inner, outer, lambda m, b: m(**b).loss, method=method)
        opt.step(train, val)
        mixed[name] = flat(opt.last_result.mixed)
    error = (mixed["bf16"] - mixed["float32"]).norm() / mixed["float32"].norm()
    assert error < 0.05, f"relative error {error:.3f}"
