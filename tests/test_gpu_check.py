"""bench/gpu_check.sh (make gpu-check): its dry run on a machine without CUDA, and the parts of bench/gpu_check.py
that read pytest and compute-sanitizer results, enforce the time budget and pick the sanitizer's test cases."""
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = importlib.util.spec_from_file_location("gpu_check", os.path.join(REPO_ROOT, "bench", "gpu_check.py"))
gpu_check = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_check)

STAGES = ["dependencies", "build", "cuda_tests", "memcheck", "racecheck", "op_benchmark", "meta_step", "test_suite"]
CUDA_ONLY_STAGES = ["build", "cuda_tests", "memcheck", "racecheck", "test_suite"]
SMOKE_STAGES = ["op_benchmark", "meta_step"]
SUMMARY_KEYS = {"schema", "created", "dry_run", "cuda", "budget_s", "wall_s", "environment", "wheels", "stages"}
STAGE_KEYS = {"name", "status", "reason", "seconds", "command", "returncode", "details", "output_tail"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run (as on a machine without CUDA) into a fresh folder: (completed process, output folder)."""
    out = tmp_path_factory.mktemp("gpu_check")
    result = subprocess.run(["bash", os.path.join(REPO_ROOT, "bench", "gpu_check.sh"), "--dry-run", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHON=sys.executable))
    return result, out


def test_dry_run_exits_0_and_says_where_the_summary_is(dry_run):
    result, out = dry_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"summary: {out / 'summary.md'}" in result.stdout
    assert {p.name for p in out.iterdir()} == {"summary.md", "summary.json", "stages.log"}


def test_dry_run_summary_json_lists_every_stage_and_skips_the_cuda_ones(dry_run):
    _, out = dry_run
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == SUMMARY_KEYS
    assert summary["dry_run"] is True and summary["cuda"] is False
    assert summary["environment"]["cuda_available"] is False
    assert [stage["name"] for stage in summary["stages"]] == STAGES
    stages = {stage["name"]: stage for stage in summary["stages"]}
    assert all(set(stage) == STAGE_KEYS for stage in stages.values())
    assert stages["dependencies"]["status"] == "passed"
    for name in CUDA_ONLY_STAGES + SMOKE_STAGES:
        assert stages[name]["status"] == "skipped", stages[name]
        assert stages[name]["reason"].startswith("needs CUDA"), stages[name]["reason"]


def test_dry_run_exercises_the_benchmarks_on_the_cpu(dry_run):
    """Both benchmarks ran at tiny sizes: every candidate of the op benchmark in both modes, and the meta step of
    every hypergradient method next to a plain step (exact only with eager attention, which can differentiate
    twice)."""
    _, out = dry_run
    stages = {stage["name"]: stage for stage in json.loads((out / "summary.json").read_text())["stages"]}
    ops_rows = stages["op_benchmark"]["details"]["rows"]
    assert stages["op_benchmark"]["details"]["smoke"] == "passed"
    assert {row["mode"] for row in ops_rows} == {"fwd+bwd", "fwd"}
    for row in ops_rows:
        assert set(row["median_ms"]) == {"plain", "peft", "reference", "fused", "fused_lx"}
        assert all(ms > 0 for ms in row["median_ms"].values())
    meta_rows = stages["meta_step"]["details"]["rows"]
    assert stages["meta_step"]["details"]["smoke"] == "passed"
    for model in {row["model"] for row in meta_rows}:
        steps = {(row["attention"], row["step"]) for row in meta_rows if row["model"] == model}
        assert steps == {("sdpa", "plain"), ("sdpa", "finite_difference"), ("sdpa", "first_order"),
                         ("eager", "plain"), ("eager", "finite_difference"), ("eager", "first_order"),
                         ("eager", "exact")}
    assert {row["model"].split(" ")[0] for row in meta_rows} == {"bert-tiny", "llama-tiny"}


def test_dry_run_markdown_has_the_stage_table_and_the_raw_json(dry_run):
    _, out = dry_run
    markdown = (out / "summary.md").read_text()
    for name in STAGES:
        assert re.search(rf"^\| {name} \| (passed|skipped) \|", markdown, re.MULTILINE), name
    assert "## op_benchmark" in markdown and "## meta_step" in markdown
    raw = re.search(r"```json\n(.*)\n```", markdown, re.DOTALL).group(1)
    assert json.loads(raw) == json.loads((out / "summary.json").read_text())


def test_junit_counts_of_a_planted_report(tmp_path):
    report = tmp_path / "report.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest" tests="5" failures="1" errors="1" skipped="1">'
        '<testcase classname="tests.a" name="ok1"/><testcase classname="tests.a" name="ok2"/>'
        '<testcase classname="tests.a" name="bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.b" name="broken"><error message="y"/></testcase>'
        '<testcase classname="tests.b" name="skip"><skipped message="z"/></testcase></testsuite></testsuites>')
    assert gpu_check.junit_counts(str(report)) == dict(tests=5, passed=2, failed=1, errors=1, skipped=1,
                                                       failing=["tests.a::bad", "tests.b::broken"])
    assert gpu_check.junit_counts(str(tmp_path / "missing.xml")) == {}


def test_sanitizer_judge_reads_the_summary_lines():
    clean = "ok   case\n0 sanitizer case(s) failed of 16\n========= ERROR SUMMARY: 0 errors\n"
    assert gpu_check.sanitizer_judge(0, clean) == ("passed", "", dict(summary="ERROR SUMMARY: 0 errors",
                                                                       cases_failed=0))
    dirty = "========= Invalid __global__ read of size 4\n2 sanitizer case(s) failed of 16\n" \
            "========= RACECHECK SUMMARY: 3 hazards displayed (3 errors, 0 warnings)\n"
    status, reason, details = gpu_check.sanitizer_judge(1, dirty)
    assert (status, reason) == ("failed", "exit status 1")
    assert details == dict(summary="RACECHECK SUMMARY: 3 hazards displayed (3 errors, 0 warnings)", cases_failed=2)


def test_stage_is_skipped_when_the_budget_is_spent(tmp_path):
    run = gpu_check.Run(str(tmp_path), budget_s=1, dry_run=True)
    stage = gpu_check.run_stage(run, "late", 100, [sys.executable, "-c", "raise SystemExit(3)"],
                                gpu_check.exit_status_judge)
    assert (stage["status"], stage["reason"], stage["returncode"]) == ("skipped", "time budget exhausted (1 s)", None)


def test_run_command_stops_a_command_at_its_time_limit(tmp_path):
    run = gpu_check.Run(str(tmp_path), budget_s=100, dry_run=True)
    command = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    assert gpu_check.run_command(run, command, timeout_s=1) == (None, "started\n")


def test_sanitizer_cases_call_existing_cuda_tests_with_valid_arguments():
    """Each case names a test of tests/test_ops_cuda.py and binds to its parameters; together they cover the four
    dtypes, lora_x, strided operands, empty and zero-width shapes."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
    import test_ops_cuda

    cases = gpu_check.sanitizer_cases(test_ops_cuda)
    for label, test, args in cases:
        assert getattr(test_ops_cuda, test.__name__) is test
        inspect.signature(test).bind(*args)
    names = {test.__name__ for _, test, _ in cases}
    assert {"test_cuda_matches_oracle", "test_cuda_transposed_weight_and_sliced_operands",
            "test_cuda_no_rows_or_zero_rank", "test_cuda_forward_with_zero_width"} <= names
    dtypes = {arg for _, _, args in cases for arg in args if isinstance(arg, torch.dtype)}
    assert dtypes == {torch.float32, torch.float64, torch.float16, torch.bfloat16}
