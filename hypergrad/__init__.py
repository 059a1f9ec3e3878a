"""hypergrad: second-order hypergradients for bilevel optimisation  min_A Lval(W*(A), A),  W*(A) from Ltr.

Functional core (pure functions of tensor sequences):
  unrolled_hypergrad   d Lval(W_K, A)/dA through K SGD steps, or one step of a pluggable inner update:
                       "exact" | "finite_difference" | "first_order"
  SGDUpdate, AdamWUpdate (AdamWState), InnerUpdate   differentiable models of the inner optimiser's step
  implicit_hypergrad   implicit-function-theorem hypergradient with "cg" | "neumann" inverse-Hessian products
  hvp, mixed_vp, mixed_vp_fd, conjugate_gradient, neumann_series   building blocks usable alone
  training_gradients   g = grad_W Ltr, checking that every weight and hyper-parameter reaches Ltr
Object API:
  BilevelOptimizer     alternating inner/meta steps on a torch.nn.Module with two torch optimizers,
                       lookahead "sgd" | "adam" (the AdamW state of the inner optimizer)
"""
from ._validation import NonFiniteHypergradError
from .bilevel import LOOKAHEADS, BilevelOptimizer
from .inner_updates import AdamWState, AdamWUpdate, InnerUpdate, SGDUpdate
from .implicit import IMPLICIT_METHODS, implicit_hypergrad
from .linear_solvers import conjugate_gradient, neumann_series
from .products import hvp, mixed_vp, mixed_vp_fd, training_gradients
from .rng import RngState, capture_rng_state, replay_rng_state
from .unrolled import UNROLLED_METHODS, OneStepHypergrad, one_step_hypergrad, unrolled_hypergrad

__all__ = [
    "AdamWState", "AdamWUpdate", "BilevelOptimizer", "IMPLICIT_METHODS", "InnerUpdate", "LOOKAHEADS",
    "NonFiniteHypergradError", "RngState", "SGDUpdate", "UNROLLED_METHODS",
    "capture_rng_state", "conjugate_gradient", "hvp", "implicit_hypergrad", "mixed_vp", "mixed_vp_fd",
    "neumann_series", "one_step_hypergrad", "replay_rng_state", "training_gradients", "unrolled_hypergrad",
]
