"""One-command CUDA validation of the fused op: build, CUDA tests, compute-sanitizer, benchmarks, one summary.

    bash bench/gpu_check.sh [--out DIR] [--budget SECONDS] [--only STAGE,...] [--dry-run]      (make gpu-check)

Stages, in this order, each a subprocess with its own time limit inside one overall budget (default 480 s, so the
whole run fits one 10-minute remote call). A stage that fails or runs out of time is recorded and the next one runs;
the summary is written at the end whatever happened:

  dependencies  the modules the package and its tests import; wheels in $GPU_CHECK_WHEELS are installed first (into
                a folder on PYTHONPATH, no index, no dependencies), for a machine without network
  build         autolora._C with the CUDA kernel, in place (python setup.py build_ext --inplace) against the machine's
                own torch, for its GPU's architecture only; skipped when the tree already holds such a build
  cuda_tests    pytest tests/test_ops_cuda.py
  memcheck      compute-sanitizer --tool memcheck on a small selection of the CUDA tests (SANITIZER_CASES), with
                PyTorch's caching allocator off so that an access past a tensor lands outside its allocation
  racecheck     compute-sanitizer --tool racecheck on the same selection
  op_benchmark  bench/ops_table.py's candidates (plain frozen linear, PEFT-style composition, reference, fused,
                fused with lora_x) in bfloat16 and float16 at GPU_SHAPES, fwd+bwd and fwd, CUDA events, median
  meta_step     one AutoLoRA meta step per hypergradient method against a plain LoRA step (bench/meta_step_cost.py's
                steps) on randomly initialised BERT-base and LLaMA-style (1B widths, 2 layers) models
  test_suite    pytest tests, except tests/test_ops_cuda.py (run above)

Without CUDA, or with --dry-run, the stages that need it are skipped with the reason; op_benchmark and meta_step then
run their code at tiny sizes on the CPU (a smoke run, its timings mean nothing), so a broken benchmark shows before a
GPU is at hand. The output folder (--out, else $GPU_CHECK_OUT, else runs/gpu_check) receives summary.md (tables and
the raw JSON), summary.json and stages.log (every stage's output). The exit status is 1 when a stage failed or ran out
of time, else 0.

    bash bench/gpu_check.sh --fetch-wheels DIR   (on a machine with the package index: the wheels the GPU machine
                                                   lacks, at this machine's versions, for its Python 3.12)
"""
import argparse
import datetime
import functools
import glob
import importlib.machinery
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
TESTS_DIR = os.path.join(REPO_ROOT, "tests")

DEFAULT_BUDGET_S = 480
SUMMARY_RESERVE_S = 5
MIN_STAGE_S = 10
TAIL_CHARS = 3000
LOG_CHARS = 200_000

GPU_SHAPES = ((2048, 768, 8), (2048, 384, 8), (4096, 1024, 16), (8192, 4096, 16), (16384, 4096, 64))
SMOKE_SHAPES = ((64, 32, 4),)
BENCH_REPEATS = {"gpu": (5, 20), "smoke": (1, 2)}  # (warm-up, timed) repetitions
META_REPEATS = {"gpu": (1, 5), "smoke": (0, 1)}

# Modules imported by the package or its tests; the GPU image lacks some (datasets and its dill, multiprocess).
REQUIRED_MODULES = ("torch", "numpy", "scipy", "transformers", "peft", "datasets", "dill", "multiprocess",
                    "safetensors", "tqdm", "matplotlib", "pytest", "hypothesis", "expecttest")
WHEEL_PACKAGES = ("datasets", "dill", "multiprocess", "expecttest")
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")

# (test function of tests/test_ops_cuda.py, arguments): every custom kernel and launch path at small sizes, for the
# sanitizers (which slow each instrumented kernel by orders of magnitude). Written as names so this module imports
# without torch; resolved inside the sanitized process.
SANITIZER_CASES = (
    *(("test_cuda_matches_oracle", (dtype, "SHAPES[1]", lora_x))
      for dtype in ("float32", "bfloat16", "float16", "float64") for lora_x in (False, True)),
    ("test_cuda_matches_oracle", ("bfloat16", "SHAPES[3]", False)),
    ("test_cuda_transposed_weight_and_sliced_operands", ("float32",)),
    ("test_cuda_transposed_weight_and_sliced_operands", ("bfloat16",)),
    *(("test_cuda_no_rows_or_zero_rank", ("float32", f"EMPTY_SHAPES[{i}]", True)) for i in range(3)),
    ("test_cuda_forward_with_zero_width", (0, 4)),
    ("test_cuda_half_precision_input_gradient_is_rounded_once", ("bfloat16",)),
)


# ---------------------------------------------------------------------------------------------------- orchestration

class Run:
    """The state of one gpu-check run: output folder, deadline, child environment, stage records, log."""

    def __init__(self, out_dir, budget_s, dry_run):
        self.out_dir, self.budget_s, self.dry_run = out_dir, budget_s, dry_run
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.scratch = tempfile.mkdtemp(prefix="gpu_check_")
        self.env = child_environment(dry_run)
        self.stages, self.log = [], []
        self.facts = {}

    def remaining(self):
        return self.deadline - time.monotonic() - SUMMARY_RESERVE_S

    def scratch_file(self, name):
        return os.path.join(self.scratch, name)


def child_environment(dry_run):
    """os.environ with the repository (and bench/) first on PYTHONPATH, unbuffered output; no GPU for a dry run."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", AUTOLORA_REQUIRE_EXT="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, BENCH_DIR, env.get("PYTHONPATH")) if p)
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_command(run, command, timeout_s, extra_env=None):
    """Run ``command`` in its own process group from the repository root, killing the group after ``timeout_s``.
    Returns (returncode or None on timeout, combined stdout and stderr)."""
    env = dict(run.env, **(extra_env or {}))
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return None, output


def record(run, name, status, reason="", seconds=0.0, command=None, returncode=None, output="", details=None):
    """Append one stage record (status: passed, failed, timeout or skipped) and its output to the run's log."""
    stage = dict(name=name, status=status, reason=reason, seconds=round(seconds, 1),
                 command=None if command is None else " ".join(command), returncode=returncode,
                 details=details or {}, output_tail=output[-TAIL_CHARS:])
    run.stages.append(stage)
    run.log.append(f"===== {name}: {status} ({stage['seconds']} s) {reason}\n$ {stage['command'] or '-'}\n"
                   f"{output[-LOG_CHARS:]}\n")
    print(f"[gpu-check] {name}: {status} ({stage['seconds']} s){' - ' + reason if reason else ''}", flush=True)
    return stage


def run_stage(run, name, cap_s, command, judge, extra_env=None):
    """Run one stage's command within min(cap_s, time left); ``judge(returncode, output)`` gives (status, reason,
    details) for a command that finished."""
    timeout_s = min(cap_s, run.remaining())
    if timeout_s < MIN_STAGE_S:
        return record(run, name, "skipped", f"time budget exhausted ({run.budget_s} s)")
    started = time.monotonic()
    returncode, output = run_command(run, command, timeout_s, extra_env)
    seconds = time.monotonic() - started
    if returncode is None:
        return record(run, name, "timeout", f"stopped after {timeout_s:.0f} s", seconds, command, None, output)
    status, reason, details = judge(returncode, output)
    return record(run, name, status, reason, seconds, command, returncode, output, details)


def worker_command(subcommand, *args):
    return [sys.executable, os.path.join(BENCH_DIR, "gpu_check.py"), subcommand, *map(str, args)]


def exit_status_judge(returncode, output):
    return ("passed", "", {}) if returncode == 0 else ("failed", f"exit status {returncode}", {})


def json_result_judge(path, smoke):
    """Judge of a worker that writes JSON to ``path``: its content becomes the stage's details."""
    def judge(returncode, output):
        details = read_json(path)
        if returncode != 0 or details is None:
            return "failed", f"exit status {returncode}", details or {}
        if smoke:
            return "skipped", "needs CUDA: ran at tiny sizes on the CPU only (smoke run, timings not meaningful)", \
                dict(details, smoke="passed")
        return "passed", "", details
    return judge


def read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def pytest_judge(junit_path):
    """Judge of a pytest run: counts and failing tests from its JUnit XML."""
    def judge(returncode, output):
        details = junit_counts(junit_path)
        if returncode == 0:
            return "passed", "", details
        return "failed", f"pytest exit status {returncode}", details
    return judge


def junit_counts(path):
    """{tests, passed, failed, errors, skipped, failing: [names]} from a pytest JUnit XML file ({} if unreadable)."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return {}
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failing = [f"{case.get('classname')}::{case.get('name')}" for s in suites for case in s.iter("testcase")
               if case.find("failure") is not None or case.find("error") is not None]
    return dict(tests=counts["tests"], passed=counts["tests"] - counts["failures"] - counts["errors"] -
                counts["skipped"], failed=counts["failures"], errors=counts["errors"], skipped=counts["skipped"],
                failing=failing[:50])


def sanitizer_judge(returncode, output):
    """compute-sanitizer run with --error-exitcode 1 over the sanitizer workload: clean iff both exited 0."""
    summary = re.findall(r"(ERROR SUMMARY: .*|RACECHECK SUMMARY: .*)", output)
    details = dict(summary=summary[-1] if summary else "no sanitizer summary line",
                   cases_failed=int(m.group(1)) if (m := re.search(r"(\d+) sanitizer case\(s\) failed", output)) else 0)
    return ("passed", "", details) if returncode == 0 else ("failed", f"exit status {returncode}", details)


# ---------------------------------------------------------------------------------------------------- stages

def install_wheels(run, folder):
    """pip install every wheel in ``folder`` into a scratch folder put first on the children's PYTHONPATH (no index,
    no dependencies). Returns "" or what went wrong."""
    target = run.scratch_file("site")
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target",
               target, *sorted(glob.glob(os.path.join(folder, "*.whl")))]
    returncode, output = run_command(run, command, max(MIN_STAGE_S, min(60, run.remaining())))
    run.log.append(f"===== wheels from {folder}: exit {returncode}\n$ {' '.join(command)}\n{output}\n")
    if returncode != 0:
        return f"installing the wheels of {folder} failed: {(output.strip().splitlines() or ['timeout'])[-1]}"
    run.env["PYTHONPATH"] = os.pathsep.join((target, run.env["PYTHONPATH"]))
    return ""


def stage_dependencies(run):
    """Install the wheels of $GPU_CHECK_WHEELS (if set), then report which REQUIRED_MODULES are installed."""
    wheels = run.facts["wheels"] = os.environ.get("GPU_CHECK_WHEELS")
    wheel_error = install_wheels(run, wheels) if wheels else ""
    path = run.scratch_file("modules.json")
    judge = json_result_judge(path, smoke=False)

    def modules_judge(returncode, output):
        status, reason, details = judge(returncode, output)
        modules = details.get("modules", {})
        missing = sorted(name for name, ok in modules.items() if not ok)
        if status == "passed" and (missing or wheel_error):
            problems = [wheel_error] if wheel_error else []
            if missing:
                problems.append(f"missing: {', '.join(missing)} (carry wheels: bench/gpu_check.sh --fetch-wheels)")
            return "failed", "; ".join(problems), details
        return status, reason or f"all {len(modules)} modules found", details
    return run_stage(run, "dependencies", 60, worker_command("modules", "--json", path), modules_judge)


def stage_build(run):
    """In-place build with the CUDA kernel, unless there is no CUDA or the tree already has such a build."""
    extension = run.facts["environment"].get("extension", {})
    if not run.facts["cuda"]:
        return record(run, "build", "skipped", f"needs CUDA; autolora._C here: {extension.get('status')}, "
                                               "not rebuilt")
    if extension.get("cuda_kernel") and not extension.get("stale"):
        return record(run, "build", "skipped", "autolora._C in this tree already has the CUDA kernel and is newer "
                                               "than csrc/; not rebuilt")
    if shutil.which("nvcc") is None:
        return record(run, "build", "failed", "nvcc not on PATH")
    arch = run.facts["environment"].get("capability", "")
    extra_env = dict(TORCH_CUDA_ARCH_LIST=arch, MAX_JOBS=str(os.cpu_count() or 4))
    stage = run_stage(run, "build", 300, [sys.executable, "setup.py", "build_ext", "--inplace"],
                      exit_status_judge, extra_env)
    extension = probe_environment(run).get("extension", {})
    stage["details"]["extension"] = extension
    if stage["status"] == "passed" and not extension.get("cuda_kernel"):
        stage.update(status="failed", reason="built, but autolora._C registers no CUDA kernel")
    return stage


def cuda_requirement(run, sanitizer=False):
    """Why a CUDA stage cannot run here ("" when it can)."""
    if not run.facts["cuda"]:
        return "needs CUDA: " + ("--dry-run" if run.dry_run else "torch.cuda.is_available() is False")
    if not run.facts["cuda_kernel"]:
        return "autolora._C has no CUDA kernel (see the build stage)"
    if sanitizer and shutil.which("compute-sanitizer") is None:
        return "compute-sanitizer not on PATH"
    return ""


def stage_pytest(run, name, cap_s, args):
    junit = run.scratch_file(f"{name}.xml")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *args]
    return run_stage(run, name, cap_s, command, pytest_judge(junit))


def stage_cuda_tests(run):
    reason = cuda_requirement(run)
    if reason:
        return record(run, "cuda_tests", "skipped", reason)
    return stage_pytest(run, "cuda_tests", 150, ["tests/test_ops_cuda.py"])


def stage_sanitizer(run, tool):
    reason = cuda_requirement(run, sanitizer=True)
    if reason:
        return record(run, tool, "skipped", reason)
    command = ["compute-sanitizer", "--tool", tool, "--error-exitcode", "1", "--print-limit", "20"]
    if "--kernel-name" in run.facts.get("sanitizer_help", ""):
        command += ["--kernel-name", "kns=autolora"]  # instrument this extension's kernels only
    extra_env = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"} if tool == "memcheck" else {}
    return run_stage(run, tool, 150 if tool == "memcheck" else 120, command + worker_command("sanitizer-workload"),
                     sanitizer_judge, extra_env)


def stage_worker(run, name, subcommand, cap_s):
    """op_benchmark / meta_step: full on CUDA, a CPU smoke run otherwise."""
    smoke = not (run.facts["cuda"] and run.facts["cuda_kernel"])
    path = run.scratch_file(f"{name}.json")
    command = worker_command(subcommand, "--json", path, *(["--smoke"] if smoke else []))
    return run_stage(run, name, cap_s, command, json_result_judge(path, smoke))


def stage_test_suite(run):
    if not run.facts["cuda"]:
        return record(run, "test_suite", "skipped", cuda_requirement(run) + " (without CUDA the suite is the "
                                                                           "usual `python -m pytest` step)")
    return stage_pytest(run, "test_suite", 300, ["tests", "--ignore=tests/test_ops_cuda.py",
                                                 "--continue-on-collection-errors"])


STAGES = {
    "dependencies": stage_dependencies,
    "build": stage_build,
    "cuda_tests": stage_cuda_tests,
    "memcheck": functools.partial(stage_sanitizer, tool="memcheck"),
    "racecheck": functools.partial(stage_sanitizer, tool="racecheck"),
    "op_benchmark": functools.partial(stage_worker, name="op_benchmark", subcommand="ops", cap_s=150),
    "meta_step": functools.partial(stage_worker, name="meta_step", subcommand="meta", cap_s=180),
    "test_suite": stage_test_suite,
}


def probe_environment(run):
    """Facts about the machine from a child process (the ``environment`` worker); refreshes run.facts."""
    path = run.scratch_file("environment.json")
    returncode, output = run_command(run, worker_command("environment", "--json", path), 120)
    facts = read_json(path) or dict(error=f"environment probe failed (exit {returncode}): {output[-500:]}")
    run.facts.update(environment=facts, cuda=bool(facts.get("cuda_available")),
                     cuda_kernel=bool(facts.get("extension", {}).get("cuda_kernel")))
    return facts


def orchestrate(args):
    out_dir = os.path.abspath(args.out or os.environ.get("GPU_CHECK_OUT") or os.path.join("runs", "gpu_check"))
    os.makedirs(out_dir, exist_ok=True)
    only = set(args.only.split(",")) if args.only else set(STAGES)
    unknown = only - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGES)}")
    run = Run(out_dir, args.budget, args.dry_run)
    probe_environment(run)
    if shutil.which("compute-sanitizer"):
        run.facts["sanitizer_help"] = run_command(run, ["compute-sanitizer", "--help"], 30)[1]
    for name, stage in STAGES.items():
        if name in only:
            stage(run)
        else:
            record(run, name, "skipped", "not selected (--only)")
    summary = write_summary(run)
    shutil.rmtree(run.scratch, ignore_errors=True)
    print(f"[gpu-check] summary: {summary} (also summary.json, stages.log) after {time.monotonic() - run.start:.0f} s")
    return 1 if any(stage["status"] in ("failed", "timeout") for stage in run.stages) else 0


# ---------------------------------------------------------------------------------------------------- summary

def summary_json(run):
    env = run.facts.get("environment", {})
    return dict(schema=1, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                dry_run=run.dry_run, cuda=run.facts["cuda"], budget_s=run.budget_s,
                wall_s=round(time.monotonic() - run.start, 1), environment=env, wheels=run.facts.get("wheels"),
                stages=run.stages)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def stage_detail(stage):
    """One line per stage: pytest counts, sanitizer summary, or the reason."""
    details = stage["details"]
    if "tests" in details:
        text = ", ".join(f"{details[k]} {k}" for k in ("passed", "failed", "errors", "skipped") if details[k])
        failing = "; failing: " + ", ".join(details["failing"][:5]) if details["failing"] else ""
        return text + failing
    if "summary" in details:
        return details["summary"]
    return stage["reason"]


def op_table(rows):
    names = ("plain", "peft", "reference", "fused", "fused_lx")
    header = ["N", "d", "r", "dtype", "mode", "plain ms", *(f"{n} / plain" for n in names[1:]), "peft / fused"]
    body = [[row["n"], row["d"], row["r"], row["dtype"], row["mode"], f"{row['median_ms']['plain']:.3f}",
             *(f"{row['median_ms'][n] / row['median_ms']['plain']:.3f}" for n in names[1:]),
             f"{row['median_ms']['peft'] / row['median_ms']['fused']:.2f}"] for row in rows]
    return markdown_table(header, body)


def meta_table(rows):
    header = ["model", "attention", "step", "median ms", "x plain step", "peak MiB"]
    return markdown_table(header, [[row["model"], row["attention"], row["step"], f"{row['median_ms']:.1f}",
                                    f"{row['x_plain']:.2f}", row.get("peak_mib", "-")] for row in rows])


def write_summary(run):
    """summary.json, summary.md (environment, stage table, benchmark tables, raw JSON) and stages.log."""
    data = summary_json(run)
    env = data["environment"]
    lines = [f"# gpu-check {data['created']}", "",
             f"GPU: {env.get('gpu') or 'none'}; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}); "
             f"nvcc: {env.get('nvcc')}; Python {env.get('python')}; commit {env.get('commit')}; "
             f"{'dry run; ' if run.dry_run else ''}budget {run.budget_s} s, wall {data['wall_s']} s", "",
             "## Stages", "",
             markdown_table(["stage", "status", "s", "detail"],
                            [[s["name"], s["status"], s["seconds"], stage_detail(s).replace("|", "/")]
                             for s in run.stages])]
    for stage in run.stages:
        rows = stage["details"].get("rows")
        if rows:
            table = op_table if stage["name"] == "op_benchmark" else meta_table
            smoke = " - CPU smoke run, timings not meaningful" if stage["details"].get("smoke") else ""
            lines += ["", f"## {stage['name']} ({stage['details'].get('description', '')}){smoke}", "", table(rows)]
    lines += ["", "## Raw JSON", "", "```json", json.dumps(data, indent=1), "```", ""]
    with open(os.path.join(run.out_dir, "summary.json"), "w") as handle:
        json.dump(data, handle, indent=1)
    with open(os.path.join(run.out_dir, "stages.log"), "w") as handle:
        handle.write("\n".join(run.log))
    path = os.path.join(run.out_dir, "summary.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines))
    return path


# ---------------------------------------------------------------------------------------------------- workers

def write_json(path, data):
    with open(path, "w") as handle:
        json.dump(data, handle, indent=1)


def command_output(command):
    """Last line of a command's output, or "absent"."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.strip()
        return out.splitlines()[-1] if out else "absent"
    except (OSError, subprocess.SubprocessError):
        return "absent"


def extension_status():
    """Load autolora/_C (built for this interpreter) with torch.ops.load_library, without importing the autolora
    package (which needs every runtime dependency), and say which kernels it registers."""
    import torch
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    paths = [p for p in glob.glob(os.path.join(REPO_ROOT, "autolora", "_C*")) if p.endswith(tuple(suffixes))]
    if not paths:
        return dict(status="not built in this tree", cuda_kernel=False)
    try:
        torch.ops.load_library(paths[0])
    except OSError as err:
        return dict(status=f"not loadable ({err})", cuda_kernel=False, path=paths[0])
    cuda = torch._C._dispatch_has_kernel_for_dispatch_key("autolora::lora_linear", "CUDA")
    sources = glob.glob(os.path.join(REPO_ROOT, "csrc", "**", "*.*"), recursive=True)
    stale = any(os.path.getmtime(source) > os.path.getmtime(paths[0]) for source in sources)
    return dict(status="imports" + (" with the CUDA kernel" if cuda else " (CPU kernel only)") +
                (", older than csrc/" if stale else ""), cuda_kernel=cuda, stale=stale,
                path=os.path.relpath(paths[0], REPO_ROOT))


def environment_worker(args):
    import torch
    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    facts = dict(python=platform.python_version(), executable=sys.executable, torch=torch.__version__,
                 torch_cuda=torch.version.cuda, cuda_available=cuda, host=platform.node(), cpus=os.cpu_count(),
                 gpu=props.name if cuda else None, sms=props.multi_processor_count if cuda else None,
                 memory_gib=round(props.total_memory / 2 ** 30, 1) if cuda else None,
                 capability="%d.%d" % (props.major, props.minor) if cuda else None,
                 nvcc=command_output(["nvcc", "--version"]),
                 compute_sanitizer=command_output(["compute-sanitizer", "--version"]),
                 commit=command_output(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"]),
                 extension=extension_status())
    write_json(args.json, facts)


def modules_worker(args):
    """Which REQUIRED_MODULES are installed (found on the path; not imported, which would take seconds each)."""
    import importlib.util
    write_json(args.json, dict(modules={name: importlib.util.find_spec(name) is not None
                                        for name in REQUIRED_MODULES}))


def interleaved_times(calls, warmup, repeats, cuda):
    """Seconds of each timed repetition of every zero-argument callable in ``calls`` (name -> callable), the
    callables alternating within a repetition, the first ``warmup`` repetitions discarded. On CUDA a pair of CUDA
    events on the current stream brackets each call, read after one synchronisation per repetition."""
    import torch
    times = {name: [] for name in calls}
    for rep in range(warmup + repeats):
        marks = {}
        for name, call in calls.items():
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                call()
                end.record()
                marks[name] = (start, end)
            else:
                started = time.perf_counter()
                call()
                marks[name] = time.perf_counter() - started
        if cuda:
            torch.cuda.synchronize()
        if rep >= warmup:
            for name, mark in marks.items():
                times[name].append(mark[0].elapsed_time(mark[1]) / 1e3 if cuda else mark)
    return times


def worker_device(smoke):
    """"cpu" with one thread for a smoke run (at its tiny sizes more threads only contend), else "cuda"."""
    import torch
    if smoke:
        torch.set_num_threads(1)
        return "cpu"
    return "cuda"


def ops_worker(args):
    """bench/ops_table.py's problem and candidates on the GPU in bfloat16 and float16 (CPU float32 when smoke)."""
    import statistics

    import torch
    import ops_table

    device = worker_device(args.smoke)
    dtypes = (torch.float32,) if args.smoke else (torch.bfloat16, torch.float16)
    warmup, repeats = BENCH_REPEATS["smoke" if args.smoke else "gpu"]
    rows = []
    for n, d, r in SMOKE_SHAPES if args.smoke else GPU_SHAPES:
        problem32 = ops_table.make_problem(n, d, r, seed=0)
        for dtype in dtypes:
            problem = {k: v.detach().to(device, dtype).requires_grad_(v.requires_grad) for k, v in problem32.items()}
            for mode, step in (("fwd+bwd", ops_table.forward_backward), ("fwd", ops_table.forward_only)):
                calls = {name: functools.partial(step, name, problem) for name in ops_table.CANDIDATES}
                times = interleaved_times(calls, warmup, repeats, cuda=device == "cuda")
                rows.append(dict(n=n, d=d, r=r, dtype=str(dtype).replace("torch.", ""), mode=mode,
                                 median_ms={k: statistics.median(v) * 1e3 for k, v in times.items()},
                                 min_ms={k: min(v) * 1e3 for k, v in times.items()}))
    description = (f"{device}, median of {repeats} interleaved repetitions after {warmup} warm-up, "
                   f"{'CUDA events' if device == 'cuda' else 'perf_counter'}; candidates of bench/ops_table.py")
    write_json(args.json, dict(description=description, rows=rows))


# (transformers config class, keyword arguments, batch size, sequence length) per model.
META_MODELS = {
    "gpu": {"bert-base": ("BertConfig", {}, 16, 128),
            "llama-1B-widths-2-layers": ("LlamaConfig", dict(hidden_size=2048, intermediate_size=8192,
                                                             num_hidden_layers=2, num_attention_heads=32,
                                                             num_key_value_heads=8, vocab_size=32000), 8, 256)},
    "smoke": {"bert-tiny": ("BertConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=64, vocab_size=100), 2, 8),
              "llama-tiny": ("LlamaConfig", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, num_key_value_heads=2, vocab_size=100), 2, 8)},
}
# attention implementation -> steps timed with it; the exact method differentiates twice, which SDPA cannot.
META_ROWS = (("sdpa", ("plain", "finite_difference", "first_order")),
             ("eager", ("plain", "finite_difference", "first_order", "exact")))


def random_autolora_model(config_name, config_kwargs, attention, device, seed):
    """A randomly initialised sequence classifier (2 labels) with AutoLoRA (k = 8) on its default targets."""
    import torch
    import transformers

    from autolora.config import AutoLoRAConfig
    from autolora.model import get_autolora_model

    torch.manual_seed(seed)
    config = getattr(transformers, config_name)(num_labels=2, pad_token_id=0, **config_kwargs)
    with torch.device(device):
        base = transformers.AutoModelForSequenceClassification.from_config(config, attn_implementation=attention)
    return get_autolora_model(base, AutoLoRAConfig(max_rank=8)).to(device).train()


def random_batches(vocab_size, batch, length, device, seed):
    """Two batches (train, val) of random token ids in [1, vocab_size) with random binary labels."""
    import torch
    g = torch.Generator().manual_seed(seed)
    return [dict(input_ids=torch.randint(1, vocab_size, (batch, length), generator=g).to(device),
                 attention_mask=torch.ones(batch, length, dtype=torch.long, device=device),
                 labels=torch.randint(0, 2, (batch,), generator=g).to(device)) for _ in range(2)]


def with_peak_memory(call, peaks, key, cuda):
    """call() and the largest CUDA memory allocated during it, kept in peaks[key] (in MiB)."""
    import torch
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    call()
    if cuda:
        peaks[key] = max(peaks.get(key, 0), round(torch.cuda.max_memory_allocated() / 2 ** 20))


def meta_worker(args):
    """bench/meta_step_cost.py's plain and bilevel steps on random models, timed side by side per model."""
    import statistics

    import meta_step_cost

    device, size = worker_device(args.smoke), "smoke" if args.smoke else "gpu"
    warmup, repeats = META_REPEATS[size]
    rows = []
    for model_name, (config_name, kwargs, batch, length) in META_MODELS[size].items():
        calls, peaks = {}, {}
        for attention, steps in META_ROWS:
            model = random_autolora_model(config_name, kwargs, attention, device, seed=0)
            train_batch, val_batch = random_batches(model.config.vocab_size, batch, length, device, seed=1)
            for step in steps:
                fn = meta_step_cost.plain_step(model) if step == "plain" else meta_step_cost.bilevel_step(model, step)
                call = functools.partial(fn, train_batch, val_batch)
                calls[(attention, step)] = functools.partial(with_peak_memory, call, peaks, (attention, step),
                                                             device == "cuda")
        times = interleaved_times(calls, warmup, repeats, cuda=device == "cuda")
        for (attention, step), samples in times.items():
            plain = statistics.median(times[(attention, "plain")])
            rows.append(dict(model=f"{model_name} ({batch} x {length})", attention=attention, step=step,
                             median_ms=statistics.median(samples) * 1e3, x_plain=statistics.median(samples) / plain,
                             peak_mib=peaks.get((attention, step), "-")))
    description = (f"{device}, float32 weights, AutoLoRA k=8 on the default targets, median of {repeats} "
                   f"interleaved repetitions after {warmup} warm-up")
    write_json(args.json, dict(description=description, rows=rows))


def sanitizer_cases(test_module):
    """SANITIZER_CASES as (case label, test function, arguments) with the names resolved: torch dtypes by name,
    "NAME[i]" as item i of the test module's list NAME."""
    import torch

    def resolve(arg):
        if not isinstance(arg, str):
            return arg
        if hasattr(torch, arg):
            return getattr(torch, arg)
        name, index = re.fullmatch(r"(\w+)\[(\d+)\]", arg).groups()
        return getattr(test_module, name)[int(index)]
    return [(f"{name}{tuple(args)}", getattr(test_module, name), [resolve(arg) for arg in args])
            for name, args in SANITIZER_CASES]


def sanitizer_workload(args):
    """Run SANITIZER_CASES (bodies of tests/test_ops_cuda.py); exit 1 if any of them raised."""
    import traceback

    import torch

    sys.path.insert(0, TESTS_DIR)
    import test_ops_cuda

    failed = 0
    for label, test, case_args in sanitizer_cases(test_ops_cuda):
        try:
            test(*case_args)
            print(f"ok   {label}", flush=True)
        except Exception:  # noqa: BLE001  (report every failing case, then fail)
            failed += 1
            print(f"FAIL {label}\n{traceback.format_exc()}", flush=True)
    torch.cuda.synchronize()
    print(f"{failed} sanitizer case(s) failed of {len(SANITIZER_CASES)}")
    raise SystemExit(1 if failed else 0)


def fetch_wheels(args):
    """pip download WHEEL_PACKAGES at this machine's versions, for CPython 3.12 on x86-64 Linux, into args.dir."""
    from importlib.metadata import version
    pins = [f"{name}=={version(name)}" for name in WHEEL_PACKAGES]
    platforms = [flag for p in WHEEL_PLATFORMS for flag in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", *platforms, "-d", args.dir, *pins]
    print(" ".join(command), flush=True)
    raise SystemExit(subprocess.call(command))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="all stages and the summary")
    run.add_argument("--out", help="output folder (default $GPU_CHECK_OUT, else runs/gpu_check)")
    run.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", DEFAULT_BUDGET_S)),
                     help="seconds for all stages together (default $GPU_CHECK_BUDGET_S, else 480)")
    run.add_argument("--only", help=f"comma-separated stages to run, of: {', '.join(STAGES)}")
    run.add_argument("--dry-run", action="store_true", help="behave as on a machine without CUDA")
    for name in ("environment", "modules", "ops", "meta"):
        worker = sub.add_parser(name)
        worker.add_argument("--json", required=True)
        worker.add_argument("--smoke", action="store_true")
    sub.add_parser("sanitizer-workload")
    wheels = sub.add_parser("fetch-wheels")
    wheels.add_argument("dir")
    args = parser.parse_args(argv)
    handlers = dict(environment=environment_worker, modules=modules_worker, ops=ops_worker, meta=meta_worker,
                    **{"sanitizer-workload": sanitizer_workload, "fetch-wheels": fetch_wheels})
    if args.command == "run":
        raise SystemExit(orchestrate(args))
    handlers[args.command](args)


if __name__ == "__main__":
    main()
