"""Heads trained in full (modules_to_save) and LoRA targets never overlap; the default heads are the modules a task
model adds to its pretrained body; a head tied to the input embeddings is refused."""
import datasets
import pytest
import torch

import autolora
from autolora import AutoLoRAConfig, AutoLoRALinear, get_autolora_model
from autolora.rank_search import search
from tiny_models import (VOCAB_SIZE, tiny_bert, tiny_bert_question_answering, tiny_bert_token_classifier,
                         tiny_distilbert, tiny_gpt2, tiny_gpt2_lm, tiny_llama, tiny_roberta)

ADAPTER_PARAMETERS = ("lora_A", "lora_B", "beta")


def trainable_outside_adapters(model):
    return {n for n, p in model.named_parameters() if p.requires_grad and n.rsplit(".", 1)[-1] not in
            ADAPTER_PARAMETERS}


def parameters_added_to_the_body(factory, tmp_path):
    """Oracle: the parameters transformers initialises afresh when the task model loads its pretrained body."""
    model = factory()
    model.base_model.save_pretrained(tmp_path)
    _, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    return set(info["missing_keys"])


@pytest.mark.parametrize("factory", [tiny_bert, tiny_bert_token_classifier, tiny_bert_question_answering,
                                     tiny_roberta, tiny_distilbert, tiny_gpt2, tiny_llama, tiny_gpt2_lm],
                         ids=lambda f: f.__name__)
def test_default_heads_train_exactly_what_the_task_model_adds_to_its_body(factory, tmp_path):
    """BERT/RoBERTa classifier (RoBERTa's holds dense and out_proj), DistilBERT pre_classifier + classifier,
    GPT-2/LLaMA score, qa_outputs; GPT-2's LM head is the tied embedding matrix, which loads with the body."""
    model = get_autolora_model(factory(), AutoLoRAConfig(max_rank=2))
    assert trainable_outside_adapters(model) == parameters_added_to_the_body(factory, tmp_path)


def roberta_dense(**config):
    return get_autolora_model(tiny_roberta(), AutoLoRAConfig(target_modules=["dense"], max_rank=2, **config))


def test_target_inside_a_head_is_left_to_the_head():
    """``dense`` matches the body's dense layers and the head's ``classifier.dense``: the head is trained in full,
    so only the body's dense layers get adapters, and every parameter has one role."""
    model = roberta_dense()
    body_dense = {n for n, m in tiny_roberta().named_modules() if n.endswith(".dense") and n.startswith("roberta.")}
    assert len(body_dense) == 3 * 2
    assert set(autolora.ranks(model)) == body_dense
    assert type(model.classifier.dense) is torch.nn.Linear
    assert trainable_outside_adapters(model) == {f"classifier.{m}.{p}" for m in ("dense", "out_proj")
                                                 for p in ("weight", "bias")}
    lora, heads = autolora.lora_parameters(model), autolora.head_parameters(model)
    assert not {id(p) for p in lora} & {id(p) for p in heads}


def test_search_runs_on_a_model_targeted_inside_its_head():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB_SIZE, (8, 5), generator=generator)
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 3).tolist()})
    model = roberta_dense()
    heads = [p.detach().clone() for p in autolora.head_parameters(model)]
    search(model, data, steps=2, batch_size=4, weight_lr=1e-2, warmup_steps=0)
    assert all(not torch.equal(p, before) for p, before in zip(autolora.head_parameters(model), heads))


def test_target_only_inside_heads_needs_the_head_out_of_modules_to_save():
    with pytest.raises(ValueError, match=r"\['out_proj'\] match only modules inside heads trained in full "
                                         r"\['classifier'\].*modules_to_save"):
        get_autolora_model(tiny_roberta(), AutoLoRAConfig(target_modules=["out_proj"]))
    model = get_autolora_model(tiny_roberta(), AutoLoRAConfig(target_modules=["out_proj"], modules_to_save=[]))
    assert isinstance(model.classifier.out_proj, AutoLoRALinear)
    assert trainable_outside_adapters(model) == set()


def test_head_tied_to_the_input_embeddings_is_refused():
    with pytest.raises(ValueError, match=r"lm_head.*shares.*transformer\.wte.*tie_word_embeddings"):
        get_autolora_model(tiny_gpt2_lm(), AutoLoRAConfig(modules_to_save=["lm_head"]))
    model = get_autolora_model(tiny_gpt2_lm(tie_word_embeddings=False), AutoLoRAConfig(modules_to_save=["lm_head"]))
    assert trainable_outside_adapters(model) == {"lm_head.weight"}
    model = get_autolora_model(tiny_gpt2_lm(), AutoLoRAConfig(target_modules=["lm_head"]))  # LoRA on the tied head
    assert set(autolora.ranks(model)) == {"lm_head"} and trainable_outside_adapters(model) == set()
