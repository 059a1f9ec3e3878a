import math

import numpy as np
import pytest
import scipy.stats
import torch

from autolora.metrics import compute_metrics, entity_spans
from autolora.tasks import primary_metric


def counts(gold, predicted, positive):
    tp = sum(g == positive and p == positive for g, p in zip(gold, predicted))
    fp = sum(g != positive and p == positive for g, p in zip(gold, predicted))
    fn = sum(g == positive and p != positive for g, p in zip(gold, predicted))
    tn = len(gold) - tp - fp - fn
    return tp, fp, fn, tn


def f1_by_precision_and_recall(gold, predicted, positive):
    tp, fp, fn, _ = counts(gold, predicted, positive)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def matthews_by_one_hot_correlation(gold, predicted, num_classes):
    """MCC as the correlation of the one-hot matrices X, Y: cov(X, Y) / sqrt(cov(X, X) cov(Y, Y))."""
    x = np.eye(num_classes)[gold]
    y = np.eye(num_classes)[predicted]
    x, y = x - x.mean(0), y - y.mean(0)
    return float((x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum()))


# ---------------------------------------------------------------------------------------------- classification


def test_binary_metrics_match_the_confusion_matrix_formulas():
    gold = [1, 1, 1, 0, 0, 0, 1, 0]
    predicted = [1, 0, 1, 0, 1, 0, 1, 1]
    tp, fp, fn, tn = counts(gold, predicted, positive=1)
    assert (tp, fp, fn, tn) == (3, 2, 1, 2)
    result = compute_metrics("classification", predicted, gold)
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["f1"] == pytest.approx(2 / 3)  # 2 * 3 / (2 * 3 + 2 + 1)
    expected_mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert result["matthews_corrcoef"] == pytest.approx(expected_mcc)
    assert result["matthews_corrcoef"] == pytest.approx(4 / math.sqrt(240))


def test_logits_give_the_same_metrics_as_their_argmax_and_ignored_labels_do_not_count():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(30, 3, generator=generator)
    gold = torch.randint(0, 3, (30,), generator=generator)
    from_ids = compute_metrics("classification", logits.argmax(-1).numpy(), gold.numpy())
    assert compute_metrics("classification", logits, gold) == pytest.approx(from_ids)
    padded_logits = torch.cat([logits, torch.randn(5, 3, generator=generator)])
    padded_gold = torch.cat([gold, torch.full((5,), -100)])
    assert compute_metrics("classification", padded_logits, padded_gold) == pytest.approx(from_ids)


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_f1_is_the_macro_mean_and_mcc_the_one_hot_correlation(seed):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 4, size=40)
    predicted = np.where(rng.random(40) < 0.5, gold, rng.integers(0, 4, size=40))
    result = compute_metrics("classification", predicted, gold)
    macro = np.mean([f1_by_precision_and_recall(gold, predicted, c) for c in range(4)])
    assert result["f1"] == pytest.approx(macro)
    assert result["matthews_corrcoef"] == pytest.approx(matthews_by_one_hot_correlation(gold, predicted, 4))
    assert result["accuracy"] == pytest.approx(np.mean(gold == predicted))


def test_macro_f1_averages_only_classes_that_occur():
    # classes 0..3 named, class 3 never appears: mean of the F1 of classes 0, 1, 2
    gold, predicted = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2]
    result = compute_metrics("classification", predicted, gold, label_names=["a", "b", "c", "d"])
    per_class = [f1_by_precision_and_recall(gold, predicted, c) for c in range(3)]
    assert per_class == pytest.approx([0.5, 2 / 3, 0.8])
    assert result["f1"] == pytest.approx(np.mean(per_class))


def test_degenerate_predictions_give_zero_not_nan():
    result = compute_metrics("classification", [0, 0, 0, 0], [0, 1, 0, 1])
    assert result == {"accuracy": 0.5, "f1": 0.0, "matthews_corrcoef": 0.0}


def test_classification_rejects_bad_inputs():
    with pytest.raises(ValueError, match="outside"):
        compute_metrics("classification", [0, 2], [0, 1], label_names=["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics("classification", torch.tensor([[0.0, float("nan")]]), [1])
    with pytest.raises(ValueError, match="every label is -100"):
        compute_metrics("classification", [1, 0], [-100, -100])
    with pytest.raises(TypeError, match="not class ids"):
        compute_metrics("classification", [0.3, 0.9], [0, 1])
    with pytest.raises(ValueError, match="unknown task_type"):
        compute_metrics("ranking", [0], [0])


# -------------------------------------------------------------------------------------------------- regression


@pytest.mark.parametrize("seed", range(3))
def test_regression_metrics_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = np.round(rng.normal(size=50), 1)  # rounding makes ties
    predictions = np.round(labels + rng.normal(scale=0.7, size=50), 1)
    result = compute_metrics("regression", torch.tensor(predictions).unsqueeze(1), labels)
    assert result["pearson"] == pytest.approx(scipy.stats.pearsonr(predictions, labels)[0], abs=1e-12)
    assert result["spearman"] == pytest.approx(scipy.stats.spearmanr(predictions, labels)[0], abs=1e-12)
    assert result["mse"] == pytest.approx(np.mean((predictions - labels) ** 2), abs=1e-12)


def test_regression_hand_case_and_constant_predictions():
    # y = (1, 2, 3), x = (2, 4, 7): centred (-1, 0, 1) and (-7/3, -1/3, 8/3) -> r = 5 / sqrt(2 * 38/3)
    result = compute_metrics("regression", [2.0, 4.0, 7.0], [1.0, 2.0, 3.0])
    assert result["pearson"] == pytest.approx(5 / math.sqrt(2 * 38 / 3))
    assert result["spearman"] == pytest.approx(1.0)
    assert result["mse"] == pytest.approx((1 + 4 + 16) / 3)
    constant = compute_metrics("regression", [1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert constant["pearson"] == 0.0 and constant["spearman"] == 0.0


def test_regression_rejects_nan_and_shape_mismatch():
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics("regression", [1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="shape|\\(n,\\)"):
        compute_metrics("regression", [1.0, 2.0, 3.0], [1.0, 2.0])


# ----------------------------------------------------------------------------------------- token classification


@pytest.mark.parametrize(
    "tags, spans",
    [
        (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 2), ("LOC", 3, 4)}),
        (["O", "I-PER", "I-PER", "O"], {("PER", 1, 3)}),  # I without B starts an entity
        (["I-ORG"], {("ORG", 0, 1)}),
        (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 1), ("LOC", 1, 3)}),  # type change ends the entity
        (["B-PER", "I-PER", "B-PER"], {("PER", 0, 2), ("PER", 2, 3)}),  # B ends the open entity
        (["B-geo-loc", "I-geo-loc"], {("geo-loc", 0, 2)}),  # types may hold hyphens
        (["O", "O"], set()),
        ([], set()),
    ],
)
def test_entity_spans_follow_conlleval(tags, spans):
    assert entity_spans(tags) == spans


@pytest.mark.parametrize("tag", ["X", "E-PER", "B-", "b-PER"])
def test_entity_spans_reject_non_bio_tags(tag):
    with pytest.raises(ValueError, match="not BIO"):
        entity_spans(["O", tag])


NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
# sentence 1: gold {PER 0-2, LOC 3-4}, predicted {PER 0-2 (I without B), PER 3-4 (wrong type)} -> 1 correct
# sentence 2: gold {LOC 1-3, PER 4-5 (I without B)}, predicted {LOC 1-2 (wrong span), PER 4-5} -> 1 correct
# sentence 3: gold {}, predicted {LOC 0-1} -> 0 correct
GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC", "O", "I-PER"], ["O", "O"]]
PREDICTED = [["I-PER", "I-PER", "O", "B-PER"], ["O", "B-LOC", "O", "O", "B-PER"], ["B-LOC", "O"]]
# 2 correct of 5 predicted and 4 gold entities; tokens right: 2 of 4, 3 of 5, 1 of 2
EXPECTED = {"precision": 2 / 5, "recall": 2 / 4, "f1": 2 * (2 / 5) * (2 / 4) / (2 / 5 + 2 / 4), "accuracy": 6 / 11}


def ids(tags):
    return [NAMES.index(t) for t in tags]


def test_entity_metrics_hand_example_as_ragged_lists():
    result = compute_metrics("token-classification", [ids(p) for p in PREDICTED], [ids(g) for g in GOLD],
                             label_names=NAMES)
    assert result == pytest.approx(EXPECTED)


def test_entity_metrics_ignore_minus_100_positions_of_padded_logits():
    width = 8
    labels = torch.full((3, width), -100)
    logits = torch.randn(3, width, len(NAMES), generator=torch.Generator().manual_seed(0))
    for row, (gold, predicted) in enumerate(zip(GOLD, PREDICTED)):
        positions = [1 + 2 * i if row == 0 else 1 + i for i in range(len(gold))]  # row 0 skips sub-tokens
        labels[row, positions] = torch.tensor(ids(gold))
        logits[row, positions] = 0.0
        logits[row, positions, ids(predicted)] = 10.0
    result = compute_metrics("token-classification", logits, labels, label_names=NAMES)
    assert result == pytest.approx(EXPECTED)


def test_token_metrics_need_label_names_and_matching_lengths():
    with pytest.raises(ValueError, match="label_names"):
        compute_metrics("token-classification", [[0]], [[0]])
    with pytest.raises(ValueError, match="sentence 0"):
        compute_metrics("token-classification", [[0, 1]], [[0]], label_names=NAMES)
    with pytest.raises(ValueError, match="sentences"):
        compute_metrics("token-classification", [[0], [0]], [[0]], label_names=NAMES)


def test_primary_metrics():
    assert [primary_metric(t) for t in ("classification", "regression", "token-classification")] == [
        "accuracy", "spearman", "f1"]
    with pytest.raises(ValueError):
        primary_metric("generation")
