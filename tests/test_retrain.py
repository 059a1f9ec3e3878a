"""autolora.retrain: the retrain model has exactly the searched ranks by module name; training and its resume."""
import pytest
import torch

from autolora.config import AutoLoRAConfig
from autolora.model import adapter_branches, get_autolora_model, ranks, selection_parameters
from autolora.retrain import build_retrain_model, train
from autolora.training import model_loss, weight_parameters
from test_search import synthetic_dataset
from tiny_models import tiny_bert, tiny_gpt2

K = 4


def reversed_ranks(model_factory):
    """Ranks 1, 2, 3, ... assigned to the branch names in REVERSE construction order (a counter in construction
    order would get every one of them wrong)."""
    names = list(adapter_branches(get_autolora_model(model_factory(), AutoLoRAConfig(max_rank=K))))
    return {name: 1 + i % K for i, name in enumerate(reversed(names))}


@pytest.mark.parametrize("factory", [tiny_bert, tiny_gpt2], ids=["bert", "gpt2-fused-qkv"])
def test_retrain_model_has_the_searched_rank_of_each_module(factory):
    searched = reversed_ranks(factory)
    model = build_retrain_model(factory(), AutoLoRAConfig(max_rank=K), searched)
    assert ranks(model) == searched
    for name, branch in adapter_branches(model).items():
        assert branch.lora_A.shape[0] == searched[name] and branch.lora_B.shape[1] == searched[name]
    assert selection_parameters(model) == []


def test_retrain_model_rejects_ranks_that_do_not_fit_the_model():
    searched = reversed_ranks(tiny_bert)
    incomplete = dict(list(searched.items())[1:])
    with pytest.raises(ValueError, match="differ"):
        build_retrain_model(tiny_bert(), AutoLoRAConfig(max_rank=K), incomplete)
    with pytest.raises(ValueError, match="match no adapted layer"):
        build_retrain_model(tiny_bert(), AutoLoRAConfig(max_rank=K), {**searched, "bert.pooler.dense": 2})
    with pytest.raises(ValueError, match="positive integers"):
        build_retrain_model(tiny_bert(), AutoLoRAConfig(max_rank=K), {**searched, next(iter(searched)): 0})


def retrain_model(lora_seed=0):
    torch.manual_seed(lora_seed)
    return build_retrain_model(tiny_bert(num_labels=3), AutoLoRAConfig(max_rank=K), reversed_ranks(tiny_bert))


def mean_loss(model, dataset):
    model.eval()
    with torch.no_grad():
        batch = {k: torch.tensor(v) for k, v in dataset[:].items()}
        return model_loss(model, batch).item()


def test_training_fits_the_data_and_leaves_frozen_parameters_bit_identical():
    model, dataset = retrain_model(), synthetic_dataset(n=12)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = [p.detach().clone() for p in weight_parameters(model)]
    before = mean_loss(model, dataset)
    result = train(model, dataset, steps=40, batch_size=4, lr=1e-2)
    assert len(result.losses) == 40
    assert mean_loss(model, dataset) < 0.9 * before
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    assert all(not torch.equal(p, start) for p, start in zip(weight_parameters(model), trained))


@pytest.mark.parametrize("interrupt_at", [3, 5])
def test_resumed_training_equals_uninterrupted(tmp_path, interrupt_at):
    """Dropout on (RNG restored), 12 examples at batch 5 (epochs of 3 batches wrap), checkpoints every 2 steps."""
    options = dict(steps=7, batch_size=5, lr=1e-2, checkpoint_every=2, seed=2)
    reference = retrain_model()
    reference_losses = train(reference, synthetic_dataset(n=12), **options).losses

    def stop(completed, stats):
        if completed == interrupt_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(retrain_model(), synthetic_dataset(n=12), checkpoint_path=tmp_path / "r.pt", callback=stop, **options)
    model = retrain_model(lora_seed=9)
    torch.manual_seed(321)
    resumed = train(model, synthetic_dataset(n=12), checkpoint_path=tmp_path / "r.pt", resume=True, **options)
    assert resumed.losses == reference_losses
    for p, expected in zip(weight_parameters(model), weight_parameters(reference)):
        assert torch.equal(p, expected)


def test_resume_needs_a_checkpoint_for_the_same_run(tmp_path):
    with pytest.raises(FileNotFoundError):
        train(retrain_model(), synthetic_dataset(), steps=2, checkpoint_path=tmp_path / "none.pt", resume=True)
    train(retrain_model(), synthetic_dataset(), steps=2, checkpoint_path=tmp_path / "r.pt")
    with pytest.raises(ValueError, match="same step count"):
        train(retrain_model(), synthetic_dataset(), steps=3, checkpoint_path=tmp_path / "r.pt", resume=True)
