import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from autolora.plots import (
    _alpha_history_figure,
    _rank_heatmap_figure,
    layer_and_projection,
    plot_alpha_history,
    plot_rank_heatmap,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("bert.encoder.layer.3.attention.self.query", (3, "query")),
        ("roberta.encoder.layer.11.attention.self.value", (11, "value")),
        ("model.layers.0.self_attn.q_proj", (0, "q_proj")),
        ("base_model.model.model.layers.27.self_attn.v_proj", (27, "v_proj")),
        ("transformer.h.5.attn.c_attn.q", (5, "c_attn.q")),
        ("transformer.h.10.attn.c_attn.v", (10, "c_attn.v")),
        ("classifier.dense", (None, "dense")),
        ("score", (None, "score")),
    ],
)
def test_layer_and_projection_of_bert_gpt2_and_llama_names(name, expected):
    assert layer_and_projection(name) == expected


def test_layer_and_projection_rejects_non_strings():
    with pytest.raises(TypeError):
        layer_and_projection("")
    with pytest.raises(TypeError):
        layer_and_projection(3)


def cell_texts(figure):
    """{(row label, column label): text} of the numbers drawn in the heatmap's cells."""
    axes = figure.axes[0]
    rows = [t.get_text() for t in axes.get_yticklabels()]
    columns = [t.get_text() for t in axes.get_xticklabels()]
    return {(rows[round(t.get_position()[1])], columns[round(t.get_position()[0])]): t.get_text()
            for t in axes.texts}


def bert_ranks(seed):
    rng = np.random.default_rng(seed)
    return {f"bert.encoder.layer.{layer}.attention.self.{projection}": int(rng.integers(1, 9))
            for layer in range(12) for projection in ("query", "value")}


def test_heatmap_draws_each_rank_in_its_layer_row_and_projection_column():
    ranks = bert_ranks(0)
    figure = _rank_heatmap_figure(ranks, max_rank=8)
    try:
        expected = {(str(layer_and_projection(n)[0]), layer_and_projection(n)[1]): str(r) for n, r in ranks.items()}
        assert cell_texts(figure) == expected
        assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == [str(i) for i in range(12)]
        image = figure.axes[0].images[0]
        assert image.get_clim() == (0, 8)
        assert image.get_array()[4, 1] == ranks["bert.encoder.layer.4.attention.self.value"]
    finally:
        plt.close(figure)


def test_heatmap_orders_layers_numerically_and_gives_unparsed_names_their_own_row():
    ranks = {"transformer.h.10.attn.c_attn.v": 2, "transformer.h.2.attn.c_attn.q": 5, "lm_head": 3,
             "transformer.h.2.attn.c_attn.v": 1}
    figure = _rank_heatmap_figure(ranks)
    try:
        assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["2", "10", "lm_head"]
        assert cell_texts(figure) == {("2", "c_attn.q"): "5", ("2", "c_attn.v"): "1", ("10", "c_attn.v"): "2",
                                      ("lm_head", "lm_head"): "3"}
        columns = [t.get_text() for t in figure.axes[0].get_xticklabels()]
        assert columns == ["c_attn.v", "c_attn.q", "lm_head"]  # order of first appearance
        assert np.ma.is_masked(figure.axes[0].images[0].get_array()[1, 1])  # layer 10 has no q rank
    finally:
        plt.close(figure)


def test_heatmap_file_is_a_png(tmp_path):
    path = tmp_path / "ranks.png"
    plot_rank_heatmap(bert_ranks(1), path, max_rank=8)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width, channels = matplotlib.image.imread(path).shape
    assert height > 100 and width > 100 and channels in (3, 4)
    assert plt.get_fignums() == []  # the figure was closed


@pytest.mark.parametrize(
    "ranks, max_rank, message",
    [
        ({}, None, "non-empty"),
        ({"layer.0.query": -1}, None, "non-negative"),
        ({"layer.0.query": 2.5}, None, "non-negative ints"),
        ({"layer.0.query": 9}, 8, "max_rank"),
        ({"encoder.layer.0.query": 1, "decoder.layer.0.query": 2}, None, "same cell"),
    ],
)
def test_heatmap_rejects_bad_ranks(ranks, max_rank, message):
    with pytest.raises(ValueError, match=message):
        _rank_heatmap_figure(ranks, max_rank)


NAMES = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value",
         "bert.encoder.layer.1.attention.self.query"]


def history_values(k=4, records=5):
    alphas = torch.softmax(torch.randn(len(NAMES), records, k, generator=torch.Generator().manual_seed(0)), -1)
    return {name: alphas[i] for i, name in enumerate(NAMES)}


def panel_lines(figure):
    """Per visible panel: (title, [(x, y) of every line])."""
    return [(panel.get_title(), [(np.asarray(line.get_xdata()), np.asarray(line.get_ydata()))
                                 for line in panel.get_lines()])
            for panel in figure.axes if panel.get_visible()]


def test_alpha_history_draws_one_line_per_component_and_the_1_over_k_threshold():
    values, steps = history_values(), [0, 10, 20, 30, 40]
    figure = _alpha_history_figure({"steps": steps, "alphas": values})
    try:
        panels = panel_lines(figure)
        assert [title for title, _ in panels] == ["layer 0 query", "layer 0 value", "layer 1 query"]
        for (_, lines), name in zip(panels, NAMES):
            assert len(lines) == 4 + 1
            for j, (x, y) in enumerate(lines[:4]):
                np.testing.assert_array_equal(x, steps)
                np.testing.assert_allclose(y, values[name][:, j].double().numpy())
            np.testing.assert_allclose(lines[4][1], np.full(5, 1 / 4))
            assert lines[4][0] is not None and figure.axes[0].get_lines()[4].get_linestyle() == "--"
    finally:
        plt.close(figure)


def test_alpha_history_formats_agree():
    values, steps = history_values(), [0, 10, 20, 30, 40]
    as_records = [(step, {name: values[name][i].tolist() for name in NAMES}) for i, step in enumerate(steps)]
    figures = [_alpha_history_figure({"steps": steps, "alphas": values}), _alpha_history_figure(as_records),
               _alpha_history_figure({name: v.numpy() for name, v in values.items()})]
    try:
        reference = panel_lines(figures[0])
        for figure in figures[1:]:
            for (title, lines), (ref_title, ref_lines) in zip(panel_lines(figure), reference):
                assert title == ref_title
                for (x, y), (_, ref_y) in zip(lines, ref_lines):
                    np.testing.assert_allclose(y, ref_y)
        plain_x = panel_lines(figures[2])[0][1][0][0]
        np.testing.assert_array_equal(plain_x, np.arange(5))  # no steps: record index
    finally:
        for figure in figures:
            plt.close(figure)


def test_alpha_history_thresholds_for_sigmoid_and_unconstrained_selection(tmp_path):
    values = history_values(k=3)
    sigmoid = _alpha_history_figure(values, threshold=0.5)
    mean = _alpha_history_figure(values, threshold="mean")
    try:
        np.testing.assert_allclose(panel_lines(sigmoid)[0][1][-1][1], np.full(5, 0.5))
        np.testing.assert_allclose(panel_lines(mean)[1][1][-1][1], values[NAMES[1]].double().mean(1).numpy())
    finally:
        plt.close(sigmoid)
        plt.close(mean)
    with pytest.raises(ValueError, match="threshold"):
        _alpha_history_figure(values, threshold="median")
    path = tmp_path / "alphas.png"
    plot_alpha_history(values, path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_alpha_history_rejects_bad_histories():
    with pytest.raises(ValueError, match="NaN"):
        _alpha_history_figure({"a": [[0.5, float("nan")]]})
    with pytest.raises(ValueError, match="record"):
        _alpha_history_figure({"steps": [0, 1, 2], "alphas": {"a": [[0.5, 0.5]] * 2}})
    with pytest.raises(ValueError, match="shape"):
        _alpha_history_figure({"a": [0.5, 0.5]})
    with pytest.raises(TypeError, match="history must be"):
        _alpha_history_figure("alphas")
    with pytest.raises(ValueError, match="no modules"):
        _alpha_history_figure({})
