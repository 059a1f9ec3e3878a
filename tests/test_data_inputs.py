"""The data inputs search() and train() accept (autolora/data/inputs.py): every kind gives the result of the
equivalent tokenised datasets.Dataset; the built-in padding equals transformers' collators; DataLoader semantics;
clear errors for bad inputs."""
import random

import datasets
import pytest
import torch
from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

from autolora.checkpoint import isolated_rng, seed_rng
from autolora.data import collate_padded, infer_task_type, model_inputs, raw_task_from_datasets, split_in_two
from autolora.rank_search import RankSearcher, search
from autolora.retrain import train
from autolora.training import batch_stream
from test_search import autolora_bert
from tiny_tokenizer import WORDS, tiny_tokenizer

SEARCH = dict(steps=4, batch_size=4, selection_lr=0.05, warmup_steps=0, seed=2)
MAX_LENGTH = 10
WORD_LIST = [w for w in WORDS if w.isalpha()]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def sentences(n, seed=0):
    """n ragged sentences (2 to 12 words, so that some are truncated at MAX_LENGTH tokens) and 3-class labels."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORD_LIST) for _ in range(rng.randint(2, 12))) for _ in range(n)]
    return texts, [len(t.split()) % 3 for t in texts]


def pretokenised(tokenizer, texts, labels, pairs=None):
    """The oracle: the tokenizer called directly, truncated to MAX_LENGTH, as a clean datasets.Dataset."""
    encoded = tokenizer(texts, pairs, truncation=True, max_length=MAX_LENGTH)
    return datasets.Dataset.from_dict({**{k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                                       "labels": labels})


def assert_same_search(result, reference):
    assert result.train_losses == reference.train_losses and result.val_losses == reference.val_losses
    assert result.ranks == reference.ranks
    for name, alpha in reference.alphas.items():
        assert torch.equal(result.alphas[name], alpha), name


@pytest.fixture(scope="module")
def reference(tokenizer):
    """Search on the pre-tokenised dataset of 20 sentences."""
    texts, labels = sentences(20)
    return search(autolora_bert(), pretokenised(tokenizer, texts, labels), tokenizer=tokenizer, **SEARCH)


# ------------------------------------------------------------------------------------------- padding semantics


def ragged_rows(token_labels):
    lengths = (3, 6, 4)
    rows = []
    for i, n in enumerate(lengths):
        row = {"input_ids": [2] + [10 + i + j for j in range(n - 2)] + [3], "attention_mask": [1] * n,
               "token_type_ids": [0] * (n // 2) + [1] * (n - n // 2)}
        row["labels"] = [-100] + [j % 3 for j in range(n - 2)] + [-100] if token_labels else i % 3
        rows.append(row)
    return rows


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("collator_class, token_labels", [(DataCollatorWithPadding, False),
                                                          (DataCollatorForTokenClassification, True)])
def test_built_in_padding_equals_the_transformers_collators(tmp_path, side, collator_class, token_labels):
    """collate_padded pads input_ids with the pad id, attention_mask and token_type_ids with 0 and tag labels with
    -100, on the tokenizer's side: exactly what DataCollatorWithPadding / DataCollatorForTokenClassification
    produce from the same rows (also when the rows hold tensors). A pad id other than 0 ([MASK] = 4) tells the pad
    id from the mask's 0."""
    tokenizer = tiny_tokenizer(tmp_path)
    tokenizer.pad_token, tokenizer.padding_side = "[MASK]", side
    rows = ragged_rows(token_labels)
    expected = collator_class(tokenizer)(rows)
    for given in (rows, [{k: torch.tensor(v) for k, v in row.items()} for row in rows]):
        ours = collate_padded(given, tokenizer.pad_token_id, padding_side=side)
        assert ours.keys() == expected.keys()
        for key, value in expected.items():
            assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


# ----------------------------------------------------------------------------------- each kind, same search


def test_extra_columns_are_dropped_and_label_is_renamed(tokenizer, reference):
    """A tokenised dataset that also holds its raw text, an idx column and 'label' instead of 'labels' searches
    exactly as the clean one."""
    texts, labels = sentences(20)
    clean = pretokenised(tokenizer, texts, labels)
    messy = clean.rename_column("labels", "label").add_column("text", texts).add_column("idx", list(range(20)))
    assert_same_search(search(autolora_bert(), messy, tokenizer=tokenizer, **SEARCH), reference)


def test_raw_dataset_with_a_tokenizer_equals_the_pretokenised_dataset(tokenizer, reference):
    """Untokenised 'sentence' column with ClassLabel labels, tokenised by search() and truncated to max_length."""
    texts, labels = sentences(20)
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["a", "b", "c"])})
    raw = datasets.Dataset.from_dict({"sentence": texts, "label": labels}, features=features)
    result = search(autolora_bert(), raw, tokenizer=tokenizer, max_length=MAX_LENGTH, **SEARCH)
    assert_same_search(result, reference)


def test_torch_dataset_of_tensor_dicts_equals_the_datasets_dataset(tokenizer, reference):
    """A torch Dataset whose items are dicts of tensors (plus a key the model does not take) holding the same rows."""
    texts, labels = sentences(20)
    rows = pretokenised(tokenizer, texts, labels)

    class TensorRows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return {**{k: torch.tensor(v) for k, v in rows[i].items()}, "idx": i}

    assert_same_search(search(autolora_bert(), TensorRows(), tokenizer=tokenizer, **SEARCH), reference)


def test_data_collator_gives_the_same_search_as_the_built_in_padding(tokenizer, reference):
    texts, labels = sentences(20)
    result = search(autolora_bert(), pretokenised(tokenizer, texts, labels), tokenizer=tokenizer,
                    data_collator=DataCollatorWithPadding(tokenizer), **SEARCH)
    assert_same_search(result, reference)


def test_sentence_pairs_and_named_text_columns_are_tokenised_as_the_tokenizer_does(tokenizer):
    firsts, labels = sentences(6, seed=1)
    seconds, _ = sentences(6, seed=2)
    pairs = datasets.Dataset.from_dict({"sentence1": firsts, "sentence2": seconds, "label": labels, "idx": [0] * 6})
    expected = pretokenised(tokenizer, firsts, labels, seconds)
    assert model_inputs(pairs, tokenizer=tokenizer, max_length=MAX_LENGTH).to_list() == expected.to_list()
    named = datasets.Dataset.from_dict({"review": firsts, "other": seconds, "labels": labels})
    rows = model_inputs(named, tokenizer=tokenizer, text_column=("review", "other"), max_length=MAX_LENGTH)
    assert rows.to_list() == expected.to_list()
    single = model_inputs(named, tokenizer=tokenizer, text_column="review", max_length=MAX_LENGTH)
    assert single.to_list() == pretokenised(tokenizer, firsts, labels).to_list()


def test_split_in_two_splits_a_torch_dataset_as_the_same_rows_in_a_datasets_dataset():
    rows = [{"input_ids": [2, 10 + i, 3], "labels": i % 3} for i in range(9)]
    from_torch = [[part[i] for i in range(len(part))] for part in split_in_two(model_inputs(rows), seed=4)]
    from_datasets = [part.to_list() for part in split_in_two(model_inputs(datasets.Dataset.from_list(rows)), 4)]
    assert from_torch == from_datasets
    assert sorted(r["input_ids"][1] for part in from_datasets for r in part) == list(range(10, 19))


def test_train_takes_a_raw_dataset_and_a_dataloader_like_the_tokenised_dataset(tokenizer):
    """train() losses: raw dataset + tokenizer, and a DataLoader shuffled by its own generator seeded like train()'s
    and collated by DataCollatorWithPadding, equal those of the pre-tokenised dataset (3 batches per epoch: the
    5 steps cross an epoch)."""
    texts, labels = sentences(12)
    options = dict(steps=5, lr=1e-2, seed=3)
    expected = train(autolora_bert(), pretokenised(tokenizer, texts, labels), batch_size=4, tokenizer=tokenizer,
                     **options).losses
    raw = datasets.Dataset.from_dict({"text": texts, "label": labels})
    assert train(autolora_bert(), raw, batch_size=4, tokenizer=tokenizer, max_length=MAX_LENGTH,
                 **options).losses == expected
    loader = torch.utils.data.DataLoader(pretokenised(tokenizer, texts, labels), batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(3),
                                         collate_fn=DataCollatorWithPadding(tokenizer))
    assert train(autolora_bert(), loader, **options).losses == expected


# ---------------------------------------------------------------------------------------------- DataLoaders


def sequential_loader(tokenizer, n=10, batch_size=2, generator_seed=None, shuffle=False):
    texts, labels = sentences(n)
    generator = None if generator_seed is None else torch.Generator().manual_seed(generator_seed)
    return torch.utils.data.DataLoader(pretokenised(tokenizer, texts, labels), batch_size=batch_size,
                                       shuffle=shuffle, generator=generator,
                                       collate_fn=DataCollatorWithPadding(tokenizer))


def test_dataloader_batches_alternate_between_d_tr_and_d_val(tokenizer):
    """Step t trains on the loader's batch 2t and takes its meta step on batch 2t + 1, epoch after epoch (5 batches
    per epoch: the roles of the batches swap in the second epoch). Oracle: RankSearcher stepped by hand on those
    batches under the loop's seeded random state. The loader has its own generator, so that starting an epoch does
    not draw its workers' base seed from the global RNG, which would shift the loop's dropout masks."""
    result = search(autolora_bert(), sequential_loader(tokenizer, generator_seed=0), **SEARCH)
    batches = list(sequential_loader(tokenizer))
    assert len(batches) == 5
    searcher = RankSearcher(autolora_bert(), selection_lr=SEARCH["selection_lr"], warmup_steps=0)
    with isolated_rng():
        seed_rng(SEARCH["seed"])
        for t in range(SEARCH["steps"]):
            searcher.step(batches[2 * t % 5], batches[(2 * t + 1) % 5])
    assert_same_search(result, searcher.result())


def test_a_dataloader_without_generator_streams_its_batches_epoch_after_epoch(tokenizer):
    """Not checkpointed, a loader without its own generator is read as it comes: 5 batches per epoch, so 12 draws
    are the epoch's batches twice and then two more; an empty loader is an error."""
    stream = batch_stream(None, sequential_loader(tokenizer), 4, seed=0)
    epoch = list(sequential_loader(tokenizer))
    drawn = [next(stream) for _ in range(12)]
    assert [b["input_ids"].tolist() for b in drawn] == [b["input_ids"].tolist() for b in (epoch * 3)[:12]]
    empty = batch_stream(None, torch.utils.data.DataLoader([]), 4, seed=0)
    with pytest.raises(ValueError, match="yields no batches"):
        next(empty)


def test_dataloader_checkpointing_needs_its_own_generator_and_then_resumes_exactly(tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"reproducible batch order.*generator=torch\.Generator\(\)"):
        search(autolora_bert(), sequential_loader(tokenizer, shuffle=True), checkpoint_path=tmp_path / "no.pt",
               **SEARCH)
    options = dict(SEARCH, steps=5, checkpoint_every=2)

    def loader():
        return sequential_loader(tokenizer, generator_seed=7, shuffle=True)

    uninterrupted = search(autolora_bert(), loader(), **options)

    def stop(completed, stats):
        if completed == 3:
            raise KeyboardInterrupt

    path = tmp_path / "search.pt"
    with pytest.raises(KeyboardInterrupt):
        search(autolora_bert(), loader(), checkpoint_path=path, callback=stop, **options)
    resumed = search(autolora_bert(lora_seed=5), loader(), checkpoint_path=path, resume=True, **options)
    assert_same_search(resumed, uninterrupted)


# ------------------------------------------------------------------------------------------- label features


def test_task_type_and_label_names_come_from_the_label_feature():
    tags = datasets.ClassLabel(names=["O", "B-x", "I-x"])
    assert infer_task_type(datasets.ClassLabel(names=["n", "p"])) == "classification"
    assert infer_task_type(datasets.Value("int64")) == "classification"
    assert infer_task_type(datasets.Sequence(tags)) == "token-classification"
    assert infer_task_type(datasets.Value("float32")) == "regression"
    with pytest.raises(ValueError, match=r"cannot infer the task type from column 'score'.*task_type"):
        infer_task_type(datasets.Sequence(datasets.Value("float32")), "score")
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(tags)})
    words = datasets.Dataset.from_dict({"tokens": [["new", "york"], ["hi"]], "ner_tags": [[1, 2], [0]]},
                                       features=features)
    raw = raw_task_from_datasets({"train": words})
    assert (raw.task_type, raw.num_labels, raw.label_names) == ("token-classification", 3, ["O", "B-x", "I-x"])
    assert raw.splits["train"].texts == [["new", "york"], ["hi"]] and raw.splits["train"].labels == [[1, 2], [0]]
    strings = raw_task_from_datasets({"train": datasets.Dataset.from_dict({"text": ["a", "b", "c"],
                                                                           "label": ["pos", "neg", "pos"]})})
    assert strings.label_names == ["neg", "pos"] and strings.splits["train"].labels == [1, 0, 1]


# --------------------------------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors(tokenizer):
    texts, labels = sentences(4)
    raw = datasets.Dataset.from_dict({"text": texts, "label": labels})
    with pytest.raises(ValueError, match=r"no input_ids column \(columns: \['text', 'label'\]\).*tokenizer="):
        search(autolora_bert(), raw, steps=1)
    unnamed = datasets.Dataset.from_dict({"body": texts, "label": labels})
    with pytest.raises(ValueError, match=r"found no text column .*\['body', 'label'\].*text_column"):
        model_inputs(unnamed, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"no labels \(columns: \['input_ids'\]\)"):
        model_inputs(datasets.Dataset.from_dict({"input_ids": [[2, 3]]}))
    with pytest.raises(TypeError, match=r"DatasetDict.*dataset\['train'\]"):
        model_inputs(datasets.DatasetDict({"train": raw}))
    with pytest.raises(TypeError, match="item 0 is a tuple"):
        model_inputs([([2, 3], 1)])
    with pytest.raises(TypeError, match="DataLoader over it"):
        model_inputs(raw.to_iterable_dataset())
    with pytest.raises(TypeError, match="got dict"):
        model_inputs({"input_ids": [[2, 3]], "labels": [0]})
    with pytest.raises(ValueError, match="text_column='text' is for an untokenised"):
        model_inputs(pretokenised(tokenizer, texts, labels), text_column="text")
    with pytest.raises(ValueError, match="collates its batches itself"):
        search(autolora_bert(), sequential_loader(tokenizer), data_collator=DataCollatorWithPadding(tokenizer),
               steps=1)
    int_tags = datasets.Dataset.from_dict({"tokens": [["a", "b"]], "ner_tags": [[0, 1]]})
    with pytest.raises(ValueError, match=r"'ner_tags' holds integer tags without names.*ClassLabel"):
        raw_task_from_datasets({"train": int_tags})


def test_split_in_two_splits_a_bare_torch_dataset_into_subsets_of_the_same_indices():
    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 9

        def __getitem__(self, i):
            return {"input_ids": [2, 10 + i, 3], "labels": i % 3}

    from_torch = [[part[i]["input_ids"][1] for i in range(len(part))] for part in split_in_two(Rows(), seed=4)]
    listed = datasets.Dataset.from_list([Rows()[i] for i in range(9)])
    assert from_torch == [[r["input_ids"][1] for r in part.to_list()] for part in split_in_two(listed, 4)]
