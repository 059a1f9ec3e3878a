"""The README's hypergrad quick start runs as printed, and its numbers equal the closed forms of its ridge problem."""
import contextlib
import io
import pathlib
import re

import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _quick_start_namespace() -> dict:
    code = re.search(r"## Quick start: hypergrad\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, str(README), "exec"), namespace)
    return namespace


def test_readme_quick_start_matches_ridge_closed_forms():
    ns = _quick_start_namespace()
    X, y, Xv, yv, w, log_lam = (ns[k].detach() for k in ("X", "y", "Xv", "yv", "w", "log_lam"))
    n, lam, lr = X.shape[0], log_lam.exp(), 0.1
    grad_val = lambda u: Xv.T @ (Xv @ u - yv) / Xv.shape[0]
    # One SGD step: w' = w - lr (X^T (X w - y) / n + lam w)  =>  dw'/dlog(lam) = -lr lam w.
    w_step = w - lr * (X.T @ (X @ w - y) / n + lam * w)
    unrolled = grad_val(w_step) @ (-lr * lam * w)
    # Inner optimum: (X^T X / n + lam I) w* = X^T y / n  =>  dw*/dlog(lam) = -lam (X^T X / n + lam I)^-1 w*.
    hessian = X.T @ X / n + lam * torch.eye(X.shape[1], dtype=X.dtype)
    implicit = grad_val(w) @ (-lam * torch.linalg.solve(hessian, w))
    torch.testing.assert_close(ns["h_exact"], unrolled, rtol=1e-10, atol=0)
    torch.testing.assert_close(ns["h_fd"], unrolled, rtol=1e-6, atol=0)
    torch.testing.assert_close(ns["h_ift"], implicit, rtol=1e-8, atol=0)
