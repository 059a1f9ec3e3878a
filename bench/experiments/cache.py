"""The result cache: one JSON file per (task, method, seed) cell, ``<root>/<task>/<method>/seed<k>.json``.

A result is serialised in memory first, then written to a temporary file in the same folder and renamed onto its
path, so an interrupted run leaves either the complete file or none (and no temporary file).
"""
from __future__ import annotations

import json
import os
import re
import tempfile

RESULTS_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
RESULT_NAME = re.compile(r"^seed(\d+)\.json$")


def result_path(root: str, task: str, method: str, seed: int) -> str:
    """``<root>/<task>/<method>/seed<seed>.json``."""
    return os.path.join(root, task, method, f"seed{seed}.json")


def write_result(root: str, record: dict) -> str:
    """Write ``record`` (with keys task, method, seed) atomically to its path; return the path."""
    path = result_path(root, record["task"], record["method"], record["seed"])
    text = json.dumps(record, indent=2) + "\n"
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".seed", suffix=".part")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def read_result(root: str, task: str, method: str, seed: int) -> dict | None:
    """The cached result of a cell, or None when it has not been run."""
    path = result_path(root, task, method, seed)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_results(root: str) -> list[dict]:
    """Every cached result under ``root``, sorted by (task, method, seed). ValueError when a file's task, method
    or seed differs from its path (a file copied to the wrong place)."""
    results = []
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            match = RESULT_NAME.match(name)
            if not match:
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
            missing = [key for key in ("task", "method", "seed") if key not in record]
            if missing:
                raise ValueError(f"{path} is not a suite result: it lacks {missing}")
            expected = result_path(root, record["task"], record["method"], record["seed"])
            if os.path.normpath(expected) != os.path.normpath(path):
                raise ValueError(f"{path} holds task={record['task']!r} method={record['method']!r} "
                                 f"seed={record['seed']!r}; it belongs at {expected}")
            results.append(record)
    return sorted(results, key=lambda r: (r["task"], r["method"], r["seed"]))
