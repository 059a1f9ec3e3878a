"""autolora.data.planted: the planted-rank teacher-student task has exactly the planted ranks and a student with
those LoRA updates fits it exactly; float-vector labels batch as a float32 matrix."""
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from autolora.config import AutoLoRAConfig
from autolora.data import collate_padded, make_loader
from autolora.data.planted import plant_ranks, planted_rank_dataset
from autolora.model import adapter_branches, get_autolora_model
from autolora.training import model_loss

PLANTED = {"bert.encoder.layer.0.attention.self.query": 0, "bert.encoder.layer.0.attention.self.value": 3,
           "bert.encoder.layer.1.attention.self.query": 1, "bert.encoder.layer.1.attention.self.value": 5}


def regression_bert(seed=0):
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=6, problem_type="regression",
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BertForSequenceClassification(config).double().eval()


def test_teacher_differs_from_the_base_by_updates_of_exactly_the_planted_ranks():
    base = regression_bert()
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    teacher = plant_ranks(base, PLANTED, sigma=0.7, seed=3)
    for name, p in base.named_parameters():
        assert torch.equal(p, before[name]), f"the base model was modified: {name}"
    for name, rank in PLANTED.items():
        delta = teacher.get_submodule(name).weight - base.get_submodule(name).weight
        singular = torch.linalg.svdvals(delta.detach())
        torch.testing.assert_close(singular[:rank], torch.full((rank,), 0.7, dtype=torch.float64))
        assert bool((singular[rank:] < 1e-12).all())
    untouched = [n for n, _ in base.named_parameters() if not any(n.startswith(m) for m in PLANTED)]
    teacher_params = dict(teacher.named_parameters())
    assert all(torch.equal(teacher_params[n], before[n]) for n in untouched)


def test_a_student_with_the_planted_updates_fits_the_labels_exactly():
    base = regression_bert()
    data = planted_rank_dataset(base, PLANTED, num_examples=40, seq_len=5, sigma=0.7, seed=3)
    teacher = plant_ranks(base, PLANTED, sigma=0.7, seed=3)
    student = get_autolora_model(regression_bert(), AutoLoRAConfig(max_rank=8, selection="fixed",
                                                                    modules_to_save=[], lora_alpha=8.0))
    with torch.no_grad():  # LoRA update B A (scaling lora_alpha / r = 1) set to the teacher's delta, rank <= 8
        for name, branch in adapter_branches(student).items():
            delta = teacher.get_submodule(name).weight - branch.base_layer.weight
            u, s, vh = torch.linalg.svd(delta)
            branch.lora_B.copy_(u[:, :8] * s[:8])
            branch.lora_A.copy_(vh[:8])
    batch = next(iter(make_loader(data, 40, shuffle=False, pad_token_id=0)))
    assert batch["labels"].shape == (40, 6) and batch["labels"].dtype == torch.float32
    assert batch["labels"].std() > 0.1
    assert model_loss(student.float(), batch).item() < 1e-9
    assert model_loss(regression_bert().float(), batch).item() > 1e-3  # the base model alone does not fit


def test_a_larger_draw_extends_a_smaller_one_so_held_out_examples_share_the_teacher():
    base = regression_bert()
    small = planted_rank_dataset(base, PLANTED, num_examples=20, seq_len=5, sigma=0.7, seed=3)
    large = planted_rank_dataset(base, PLANTED, num_examples=50, seq_len=5, sigma=0.7, seed=3)
    assert large.select(range(20)).to_dict() == small.to_dict()
    held_out = large.select(range(20, 50))
    assert set(map(tuple, held_out["input_ids"])).isdisjoint(map(tuple, small["input_ids"]))
    teacher = plant_ranks(base, PLANTED, sigma=0.7, seed=3)  # the held-out labels are the same teacher's outputs
    ids = torch.tensor(held_out["input_ids"])
    with torch.no_grad():
        expected = teacher(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
    torch.testing.assert_close(torch.tensor(held_out["labels"]), expected)


def test_planted_task_refuses_bad_input():
    with pytest.raises(ValueError, match="problem_type='regression'"):
        planted_rank_dataset(BertForSequenceClassification(BertConfig(vocab_size=20, hidden_size=8,
                                                                       num_hidden_layers=1, num_attention_heads=1,
                                                                       intermediate_size=8)),
                             {}, num_examples=2, seq_len=2, sigma=1.0)
    with pytest.raises(ValueError, match="not modules"):
        planted_rank_dataset(regression_bert(), {"nope": 1}, num_examples=2, seq_len=2, sigma=1.0)
    with pytest.raises(ValueError, match="exceeds"):
        plant_ranks(regression_bert(), {"bert.encoder.layer.0.attention.self.query": 17}, sigma=1.0)


def test_float_vector_labels_batch_as_a_float32_matrix():
    batch = collate_padded([{"input_ids": [3, 4], "labels": [0.5, -1.0]}, {"input_ids": [5], "labels": [2.0, 0.0]}],
                           pad_id=0)
    assert torch.equal(batch["labels"], torch.tensor([[0.5, -1.0], [2.0, 0.0]]))
    assert torch.equal(batch["input_ids"], torch.tensor([[3, 4], [5, 0]]))
    with pytest.raises(ValueError, match="different lengths"):
        collate_padded([{"labels": [0.5, 1.0]}, {"labels": [2.0]}], pad_id=0)


def test_search_reads_back_planted_ranks_when_the_components_span_them():
    """A known answer for the selection machinery (hypergradient sign, softmax, readout). The student's factors are
    frozen (weight_lr = 0, so W' = W and h = grad_beta Lval): in every module the first r components are the planted
    directions, scaled so that alpha_j = 1/r on them reproduces the teacher exactly, and the other k - r are random
    directions of the same size that only hurt. The validation loss is then minimised, at 0, by alpha = 1/r on the
    planted components and 0 elsewhere, so the per-layer threshold 1/k must read back exactly the planted ranks."""
    from autolora.rank_search import search
    planted = {"bert.encoder.layer.0.attention.self.query": 1, "bert.encoder.layer.0.attention.self.value": 2,
               "bert.encoder.layer.1.attention.self.query": 4, "bert.encoder.layer.1.attention.self.value": 6}
    base = regression_bert().float()
    data = planted_rank_dataset(base, planted, num_examples=128, seq_len=6, sigma=2.0, seed=3)
    teacher = plant_ranks(base, planted, sigma=2.0, seed=3)
    student = get_autolora_model(regression_bert().float(), AutoLoRAConfig(max_rank=8, modules_to_save=[]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, branch in adapter_branches(student).items():
            r = planted[name]
            u, s, vh = torch.linalg.svd(teacher.get_submodule(name).weight - branch.base_layer.weight)
            noise_u = torch.linalg.qr(torch.randn(u.shape[0], 8, generator=generator))[0]
            noise_v = torch.linalg.qr(torch.randn(vh.shape[1], 8, generator=generator))[0]
            for j in range(8):
                planted_j = j < r
                branch.lora_A[j] = vh[j] if planted_j else noise_v[:, j]
                branch.lora_B[:, j] = (r / branch.scaling) * (s[j] * u[:, j] if planted_j else s[0] * noise_u[:, j])
    result = search(student, data, steps=200, batch_size=16, method="first_order", weight_lr=0.0,
                    selection_lr=0.1, warmup_steps=0, seed=0)
    assert result.ranks == planted
    assert result.val_losses[-1] < 0.05 * result.val_losses[0]


def planted_order_recovery(selection: str, steps: int, seeds=(0, 1, 2)) -> list[float]:
    """Per seed, Spearman between the planted ranks and those a whole search reads: factors and selection learned
    together from random initialisation (the default preset, first order), ranks read by the default budget readout
    (update energies) at the planted total, rank 0 counted as 1."""
    from scipy.stats import spearmanr
    from autolora.rank_search import search
    data = planted_rank_dataset(regression_bert().float(), PLANTED, num_examples=256, seq_len=6, sigma=1.0, seed=0)
    budget = sum(max(r, 1) for r in PLANTED.values())
    correlations = []
    for seed in seeds:
        torch.manual_seed(seed)
        student = get_autolora_model(regression_bert().float(),
                                     AutoLoRAConfig(max_rank=8, selection=selection, modules_to_save=[]))
        ranks = search(student, data, steps=steps, seed=seed).budget_ranks(budget)
        correlations.append(spearmanr([PLANTED[n] for n in ranks], list(ranks.values()))[0])
    return correlations


def test_default_search_read_by_the_default_budget_score_recovers_the_planted_order():
    """The default search (softmax selection) and readout, only longer than the default 300 steps: over three seeds
    the read ranks must be ordered like the planted ones, mean Spearman >= 0.8 (at 300 steps these seeds give 0.15:
    the search needs the length; docs/planted_ranks.md has the larger task)."""
    correlations = planted_order_recovery("softmax", steps=500)
    assert sum(correlations) / 3 >= 0.8, correlations


def test_sigmoid_search_read_by_update_energies_recovers_the_planted_order():
    """The same with sigmoid selection (the paper's ablation, which recovers more on the larger task)."""
    correlations = planted_order_recovery("sigmoid", steps=500)
    assert sum(correlations) / 3 >= 0.8, correlations
