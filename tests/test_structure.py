"""Dependency direction: hypergrad never imports autolora; nothing in autolora imports the CLI; the rank search and
the retraining are siblings over autolora.training and neither imports the other."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def imported_modules(path):
    """Absolute names of the modules a source file imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def sources(package):
    return sorted((ROOT / package).rglob("*.py"))


def test_the_import_helper_resolves_relative_imports(tmp_path):
    assert "autolora.training" in imported_modules(ROOT / "autolora" / "retrain.py")
    assert "autolora.readout.budget_ranks" in imported_modules(ROOT / "autolora" / "rank_search.py")


@pytest.mark.parametrize("path", sources("hypergrad"), ids=lambda p: p.name)
def test_hypergrad_never_imports_autolora(path):
    assert not any(name.split(".")[0] == "autolora" for name in imported_modules(path))


@pytest.mark.parametrize("path", [p for p in sources("autolora") if p.name != "cli.py"], ids=lambda p: p.name)
def test_no_autolora_module_imports_the_cli(path):
    assert not any(name == "autolora.cli" or name.startswith("autolora.cli.") for name in imported_modules(path))


def test_search_and_retrain_do_not_import_each_other():
    search = imported_modules(ROOT / "autolora" / "rank_search.py")
    retrain = imported_modules(ROOT / "autolora" / "retrain.py")
    assert not any(name.startswith("autolora.retrain") for name in search)
    assert not any(name.startswith("autolora.rank_search") for name in retrain)


@pytest.mark.parametrize("path", sources("autolora/data"), ids=lambda p: p.name)
def test_data_package_takes_its_task_taxonomy_from_tasks_not_from_metrics(path):
    imported = imported_modules(path)
    assert not any(name == "autolora.metrics" or name.startswith("autolora.metrics.") for name in imported)


@pytest.mark.parametrize("path", sources("bench") + sources("examples"), ids=lambda p: p.name)
def test_benchmarks_and_examples_do_not_import_the_cli(path):
    assert not any(name == "autolora.cli" or name.startswith("autolora.cli.") for name in imported_modules(path))


def test_search_and_retrain_run_the_one_resumable_loop_of_training():
    for module in ("rank_search", "retrain"):
        assert "autolora.training.run_resumable" in imported_modules(ROOT / "autolora" / f"{module}.py")
    elsewhere = [path for path in sources("autolora") if path.name != "training.py"]
    assert not any("def run_resumable" in path.read_text() for path in elsewhere)
