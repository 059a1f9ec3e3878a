"""AutoLoRA layers against hand-written float64 formulas; merge/unmerge; rank readout; GPT-2 q/v slices."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers.pytorch_utils import Conv1D

from autolora import AutoLoRAFusedQKV, AutoLoRALinear, rank_from_alpha, selected_components
from autolora.selection import SELECTION_MODES

SEARCH_MODES = ("softmax", "sigmoid", "none")
D_IN, D_OUT, K = 6, 5, 4


def expected_alpha(beta, selection):
    """alpha by hand with numpy (independent of torch.softmax / torch.sigmoid)."""
    b = np.asarray(beta, dtype=np.float64)
    if selection == "softmax":
        e = np.exp(b - b.max())
        return e / e.sum()
    if selection == "sigmoid":
        return 1.0 / (1.0 + np.exp(-b))
    return b


def expected_rank(alpha, selection):
    """#{alpha_j >= lambda} with lambda of the mode, at least 1."""
    a = np.asarray(alpha, dtype=np.float64)
    threshold = {"softmax": 1.0 / len(a), "sigmoid": 0.5, "none": a.sum() / len(a)}[selection]
    return max(1, int((a >= threshold).sum()))


@torch.no_grad()
def randomise_branch(branch):
    """Draw B (zero at initialisation) and, where the mode has them, the logits beta from N(0, 1)."""
    branch.lora_B.normal_()
    if branch.beta is not None:
        branch.beta.normal_()


def randomised_linear(selection, seed=0, r=K, lora_alpha=3.0):
    """An AutoLoRALinear in float64 with random W, b, A, B and beta."""
    torch.manual_seed(seed)
    layer = AutoLoRALinear(nn.Linear(D_IN, D_OUT).double(), r=r, lora_alpha=lora_alpha, selection=selection)
    randomise_branch(layer)
    return layer


@pytest.mark.parametrize("selection", SELECTION_MODES)
def test_linear_equals_hand_formula(selection):
    layer = randomised_linear(selection)
    x = torch.randn(3, 2, D_IN, dtype=torch.float64)
    W, b = layer.base_layer.weight.detach().numpy(), layer.base_layer.bias.detach().numpy()
    A, B = layer.lora_A.detach().numpy(), layer.lora_B.detach().numpy()
    alpha = np.ones(K) if selection == "fixed" else expected_alpha(layer.beta.detach().numpy(), selection)
    xn = x.numpy()
    expected = xn @ W.T + b + (3.0 / K) * ((xn @ A.T) * alpha) @ B.T
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.alpha().detach().numpy(), alpha, rtol=1e-12, atol=1e-14)
    assert layer.scaling == pytest.approx(3.0 / K)


def test_fresh_layer_is_the_base_layer_with_trainable_factors_only():
    torch.manual_seed(0)
    base = nn.Linear(D_IN, D_OUT)
    x = torch.randn(4, D_IN)
    reference = base(x)
    layer = AutoLoRALinear(base, r=K)
    assert torch.equal(layer(x), reference)  # lora_B = 0 at init
    assert torch.equal(layer.alpha(), torch.full((K,), 1.0 / K))
    trainable = {name for name, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B", "beta"}
    bound = 1.0 / math.sqrt(D_IN)  # kaiming_uniform(a=sqrt(5)) bound for fan_in = D_IN
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.std() > 0.2 * bound


def test_fixed_mode_has_no_selection_parameter():
    layer = AutoLoRALinear(nn.Linear(D_IN, D_OUT), r=3, selection="fixed")
    assert layer.beta is None
    assert {name for name, p in layer.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}
    assert torch.equal(layer.alpha(), torch.ones(3)) and layer.rank() == 3


@pytest.mark.parametrize("selection", SEARCH_MODES)
def test_gradients_reach_factors_and_logits_not_base(selection):
    layer = randomised_linear(selection)
    torch.autograd.gradcheck(lambda A, B, beta: _with_params(layer, A, B, beta),
                             (layer.lora_A.detach().clone().requires_grad_(),
                              layer.lora_B.detach().clone().requires_grad_(),
                              layer.beta.detach().clone().requires_grad_()))
    layer(torch.randn(2, D_IN, dtype=torch.float64)).square().sum().backward()
    assert layer.base_layer.weight.grad is None and layer.beta.grad.abs().sum() > 0


def _with_params(layer, A, B, beta):
    x = torch.linspace(-1, 1, 2 * D_IN, dtype=torch.float64).reshape(2, D_IN)
    return torch.func.functional_call(layer, {"lora_A": A, "lora_B": B, "beta": beta}, (x,))


@pytest.mark.parametrize("selection", SELECTION_MODES)
def test_merge_matches_unmerged_and_unmerge_restores_weight(selection):
    layer = randomised_linear(selection)
    x = torch.randn(5, D_IN, dtype=torch.float64)
    before = layer(x)
    weight = layer.base_layer.weight.detach().clone()
    delta = layer.delta_weight().detach()
    alpha = layer.alpha().detach()
    np.testing.assert_allclose(delta.numpy(), (layer.scaling * layer.lora_B * alpha @ layer.lora_A).detach().numpy(),
                               rtol=1e-12, atol=1e-14)
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight, weight + delta, rtol=0, atol=1e-14)
    torch.testing.assert_close(layer(x), before, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        layer.lora_B.mul_(7.0)  # the merged forward must not read the factors any more
    torch.testing.assert_close(layer(x), before, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        layer.lora_B.div_(7.0)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, weight, rtol=0, atol=1e-14)
    torch.testing.assert_close(layer(x), before, rtol=1e-12, atol=1e-12)


def test_merge_state_errors():
    layer = randomised_linear("softmax")
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()


# ----------------------------------------------------------------------------------------------- rank readout


@pytest.mark.parametrize("selection", SELECTION_MODES)
@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 8, 11, 13, 16])
def test_untrained_layer_reads_out_full_rank(selection, k):
    layer = AutoLoRALinear(nn.Linear(4, 4), r=k, selection=selection)  # float32: uniform alpha must pass exactly
    assert layer.rank() == k


@pytest.mark.parametrize("selection,beta,rank", [
    ("softmax", [np.log(4), np.log(3), np.log(2), np.log(1)], 2),    # alpha = .4 .3 .2 .1, lambda = .25
    ("softmax", [12.0, 0.0, 0.0, 0.0], 1),                          # one dominant component
    ("sigmoid", [2.2, 0.41, -0.41, -2.2], 2),                       # alpha ~ .90 .60 .40 .10, lambda = .5
    ("sigmoid", [-5.0, -4.0, -6.0, -7.0], 1),                       # nothing passes: argmax kept
    ("none", [3.0, 1.0, 1.0, -1.0], 3),                             # lambda = mean = 1
    ("none", [0.1, -2.0, 0.2, 0.3], 3),                             # lambda = -0.35
])
def test_threshold_of_each_mode(selection, beta, rank):
    layer = AutoLoRALinear(nn.Linear(4, 4).double(), r=4, selection=selection)
    with torch.no_grad():
        layer.beta.copy_(torch.tensor(beta, dtype=torch.float64))
    assert layer.rank() == rank == expected_rank(expected_alpha(beta, selection), selection)


def test_argmax_is_the_kept_component_when_nothing_passes():
    mask = selected_components(torch.tensor([0.1, 0.3, 0.2]), "sigmoid")
    assert mask.tolist() == [False, True, False]


@settings(max_examples=60, deadline=None)
@given(selection=st.sampled_from(SEARCH_MODES),
       beta=st.lists(st.floats(-8, 8, allow_nan=False, allow_subnormal=False), min_size=1, max_size=12))
def test_rank_readout_matches_independent_count(selection, beta):
    alpha = expected_alpha(beta, selection)
    rank = rank_from_alpha(torch.tensor(alpha, dtype=torch.float64), selection)
    assert 1 <= rank <= len(beta)
    assert rank == expected_rank(alpha, selection)


@pytest.mark.parametrize("selection", SELECTION_MODES)
def test_readout_thresholds_the_alpha_the_forward_uses(selection):
    """With W = 0, b = 0, A = B = I, the layer maps e_j to s * alpha_j: read alpha back from the forward."""
    k = 6
    layer = AutoLoRALinear(nn.Linear(k, k).double(), r=k, lora_alpha=2.0, selection=selection)
    with torch.no_grad():
        layer.base_layer.weight.zero_()
        layer.base_layer.bias.zero_()
        layer.lora_A.copy_(torch.eye(k))
        layer.lora_B.copy_(torch.eye(k))
        if layer.beta is not None:
            layer.beta.copy_(torch.tensor([2.0, -1.0, 0.5, 0.4, -3.0, 1.0]))
    alpha_seen = (layer(torch.eye(k, dtype=torch.float64)).diagonal() / layer.scaling).detach()
    torch.testing.assert_close(alpha_seen, layer.alpha().detach(), rtol=1e-12, atol=1e-14)
    expected = k if selection == "fixed" else expected_rank(alpha_seen.numpy(), selection)
    assert layer.rank() == expected


def test_readout_rejects_bad_alpha():
    with pytest.raises(ValueError, match="NaN"):
        rank_from_alpha(torch.tensor([0.5, float("nan")]), "softmax")
    with pytest.raises(ValueError, match="1-D"):
        rank_from_alpha(torch.ones(2, 2), "softmax")
    with pytest.raises(TypeError, match="torch.Tensor"):
        rank_from_alpha([0.5, 0.5], "softmax")
    with pytest.raises(ValueError, match="selection must be one of"):
        rank_from_alpha(torch.ones(2), "relu")


# ------------------------------------------------------------------------------------------ GPT-2 fused qkv


def randomised_qkv(d=4, r_q=2, r_v=3, selection="softmax", seed=0):
    torch.manual_seed(seed)
    conv = Conv1D(3 * d, d).double()
    with torch.no_grad():
        conv.weight.normal_()
        conv.bias.normal_()
    layer = AutoLoRAFusedQKV(conv, r_q=r_q, r_v=r_v, lora_alpha=5.0, selection=selection)
    randomise_branch(layer.q)
    randomise_branch(layer.v)
    return layer


@pytest.mark.parametrize("selection", SELECTION_MODES)
def test_fused_qkv_equals_hand_formula(selection):
    d = 4
    layer = randomised_qkv(d=d, selection=selection)
    x = torch.randn(2, 3, d, dtype=torch.float64).numpy()
    W, b = layer.base_layer.weight.detach().numpy(), layer.base_layer.bias.detach().numpy()  # W is d x 3d
    expected = x @ W + b
    for branch, start in ((layer.q, 0), (layer.v, 2 * d)):
        A, B = branch.lora_A.detach().numpy(), branch.lora_B.detach().numpy()
        alpha = np.ones(branch.r) if selection == "fixed" else expected_alpha(branch.beta.detach().numpy(), selection)
        expected[..., start:start + d] += (5.0 / branch.r) * ((x @ A.T) * alpha) @ B.T
    np.testing.assert_allclose(layer(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_fused_qkv_perturbing_q_changes_only_q_columns_and_k_is_never_touched():
    d = 4
    layer = randomised_qkv(d=d)
    x = torch.randn(5, d, dtype=torch.float64)
    base_out = layer.base_layer(x).detach()
    out = layer(x).detach()
    torch.testing.assert_close(out[:, d:2 * d], base_out[:, d:2 * d], rtol=0, atol=0)
    for branch, changed in ((layer.q, slice(0, d)), (layer.v, slice(2 * d, 3 * d))):
        before = layer(x).detach()
        with torch.no_grad():
            branch.lora_B.add_(torch.randn_like(branch.lora_B))
        after = layer(x).detach()
        moved = (after - before).abs().amax(dim=0) > 1e-9
        assert moved.tolist() == [changed.start <= j < changed.stop for j in range(3 * d)]


def test_fused_qkv_branches_have_their_own_ranks_and_merge_round_trip():
    layer = randomised_qkv(r_q=2, r_v=5)
    assert (layer.q.lora_A.shape, layer.v.lora_A.shape) == ((2, 4), (5, 4))
    x = torch.randn(3, 4, dtype=torch.float64)
    before, weight = layer(x), layer.base_layer.weight.detach().clone()
    delta = layer.delta_weight().detach()
    assert delta.shape == weight.shape and torch.equal(delta[:, 4:8], torch.zeros(4, 4, dtype=torch.float64))
    layer.merge()
    torch.testing.assert_close(layer(x), before, rtol=1e-12, atol=1e-12)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, weight, rtol=0, atol=1e-14)


def test_fused_qkv_gradcheck_through_both_branches():
    layer = randomised_qkv(d=3, r_q=2, r_v=2)
    x = torch.randn(2, 3, dtype=torch.float64)
    names = ["q.lora_A", "q.lora_B", "q.beta", "v.lora_A", "v.lora_B", "v.beta"]
    params = dict(layer.named_parameters())

    def forward(*tensors):
        return torch.func.functional_call(layer, dict(zip(names, tensors)), (x,))

    torch.autograd.gradcheck(forward, tuple(params[n].detach().clone().requires_grad_() for n in names))


# ---------------------------------------------------------------------------------------------------- dtypes


# (base weight dtype, autocast_adapter_dtype) -> dtype of the factors and logits: float32 for a half base by default.
ADAPTER_DTYPES = {
    (torch.bfloat16, True): torch.float32, (torch.float16, True): torch.float32,
    (torch.bfloat16, False): torch.bfloat16, (torch.float16, False): torch.float16,
    (torch.float32, True): torch.float32, (torch.float64, True): torch.float64,
    (torch.float32, False): torch.float32, (torch.float64, False): torch.float64,
}


@pytest.mark.parametrize("base_dtype,autocast_adapter_dtype", list(ADAPTER_DTYPES))
def test_adapter_dtype_of_linear_and_fused_qkv(base_dtype, autocast_adapter_dtype):
    expected = ADAPTER_DTYPES[base_dtype, autocast_adapter_dtype]
    linear = AutoLoRALinear(nn.Linear(D_IN, D_OUT).to(base_dtype), r=K, autocast_adapter_dtype=autocast_adapter_dtype)
    qkv = AutoLoRAFusedQKV(Conv1D(3 * D_IN, D_IN).to(base_dtype), r_q=2, r_v=3,
                           autocast_adapter_dtype=autocast_adapter_dtype)
    for branch in (linear, qkv.q, qkv.v):
        assert (branch.lora_A.dtype, branch.lora_B.dtype, branch.beta.dtype) == (expected,) * 3
        assert branch.alpha().dtype == expected
    for layer in (linear, qkv):
        assert layer.base_layer.weight.dtype == base_dtype
        assert layer(torch.ones(2, D_IN, dtype=base_dtype)).dtype == base_dtype


def test_merge_rounds_the_float32_update_into_a_bfloat16_weight_once():
    """W0 = 1 (bfloat16, spacing 2^-7 above 1) and Delta W = 2^-8 + 2^-20 (float32): W0 + Delta W lies just above the
    midpoint between 1 and 1 + 2^-7, so one rounding gives 1 + 2^-7. Rounding Delta W to bfloat16 first (2^-8) would
    make the sum a tie, rounded to even: 1. Unmerging subtracts in float32 and rounds once: back to 1."""
    layer = AutoLoRALinear(nn.Linear(2, 3).to(torch.bfloat16), r=1, lora_alpha=1.0, selection="fixed")
    delta = 2.0 ** -8 + 2.0 ** -20
    with torch.no_grad():
        layer.base_layer.weight.fill_(1.0)
        layer.lora_A.fill_(1.0)
        layer.lora_B.fill_(delta)
    assert layer.lora_B.dtype == torch.float32 and layer.lora_B[0, 0].item() == delta
    layer.merge()
    assert layer.base_layer.weight.dtype == torch.bfloat16
    assert (layer.base_layer.weight == 1.0 + 2.0 ** -7).all()
    layer.unmerge()
    assert (layer.base_layer.weight == 1.0).all()


# ---------------------------------------------------------------------------------------------------- dropout


def test_dropout_acts_on_the_lora_input_only_in_training():
    layer = randomised_linear("softmax")
    layer.lora_dropout.p = 0.5
    x = torch.randn(8, D_IN, dtype=torch.float64)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    w = layer.scaling * layer.alpha()
    torch.testing.assert_close(layer.eval()(x), x @ W.T + b + ((x @ layer.lora_A.T) * w) @ layer.lora_B.T)
    torch.manual_seed(3)
    y = layer.train()(x)
    torch.manual_seed(3)
    dropped = nn.functional.dropout(x, 0.5, training=True)
    assert (dropped == 0).any()
    torch.testing.assert_close(y, x @ W.T + b + ((dropped @ layer.lora_A.T) * w) @ layer.lora_B.T)


# ----------------------------------------------------------------------------------------------- bad inputs


def test_layer_constructor_errors():
    with pytest.raises(TypeError, match="nn.Linear"):
        AutoLoRALinear(nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match="r must be an integer >= 1"):
        AutoLoRALinear(nn.Linear(2, 2), r=0)
    with pytest.raises(ValueError, match="lora_alpha"):
        AutoLoRALinear(nn.Linear(2, 2), lora_alpha=-1.0)
    with pytest.raises(ValueError, match="lora_dropout"):
        AutoLoRALinear(nn.Linear(2, 2), lora_dropout=1.0)
    with pytest.raises(ValueError, match="selection must be one of"):
        AutoLoRALinear(nn.Linear(2, 2), selection="gumbel")
    with pytest.raises(TypeError, match="fused qkv"):
        AutoLoRAFusedQKV(Conv1D(8, 8))  # GPT-2 c_proj shape (d x d), not a qkv projection
    with pytest.raises(TypeError, match="Conv1D"):
        AutoLoRAFusedQKV(nn.Linear(4, 12))
