"""The task data model (:class:`RawTask`, :class:`RawSplit`, :class:`TaskData`) and tokenisation with
word-to-sub-token label alignment."""
from __future__ import annotations

from dataclasses import dataclass

import datasets

from ..tasks import IGNORE_INDEX, METRIC_NAMES, check_task_type

SPLITS = ("train", "validation", "test")


@dataclass
class TaskData:
    """A tokenised task: splits ready for :func:`make_loader`, plus what the model head and metrics need."""

    task_type: str
    num_labels: int
    label_names: list[str] | None
    train: datasets.Dataset
    validation: datasets.Dataset | None
    test: datasets.Dataset | None
    metric_names: tuple[str, ...]


@dataclass
class RawSplit:
    """One untokenised split.

    ``texts[i]`` is a string, or for token classification the list of words of sentence ``i``;
    ``text_pairs`` the second segments of sentence-pair tasks (else ``None``); ``labels[i]`` a class id, a float,
    or the list of tag ids of sentence ``i``.
    """

    texts: list
    labels: list
    text_pairs: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices) -> RawSplit:
        """The examples at ``indices``, in that order."""
        pairs = None if self.text_pairs is None else [self.text_pairs[i] for i in indices]
        return RawSplit([self.texts[i] for i in indices], [self.labels[i] for i in indices], pairs)


@dataclass
class RawTask:
    """An untokenised task: its label space and the splits present (keys among ``SPLITS``)."""

    task_type: str
    num_labels: int
    label_names: list[str] | None
    splits: dict[str, RawSplit]
    metric_names: tuple[str, ...] = ()

    def __post_init__(self):
        check_task_type(self.task_type)
        if not self.metric_names:
            self.metric_names = METRIC_NAMES[self.task_type]


def tokenize_task(raw: RawTask, tokenizer, *, max_length: int = 128) -> TaskData:
    """Tokenise every split of ``raw`` with ``tokenizer(text, [text_pair], truncation=True, max_length=...)``.

    Token classification uses ``is_split_into_words=True`` and aligns labels through ``word_ids()``: the first
    sub-token of each word carries the word's tag id, later sub-tokens and special tokens carry ``-100``.
    """
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be a callable Hugging Face tokenizer, got {type(tokenizer).__name__}")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2 (room for the special tokens), got {max_length!r}")
    if raw.task_type == "token-classification" and not getattr(tokenizer, "is_fast", False):
        raise TypeError("token classification needs a fast tokenizer (word_ids() aligns tags to sub-tokens)")
    if "train" not in raw.splits or len(raw.splits["train"]) == 0:
        raise ValueError("the task has no training examples")
    encoded = {name: _encode_split(split, raw.task_type, tokenizer, max_length) for name, split in raw.splits.items()}
    return TaskData(
        task_type=raw.task_type,
        num_labels=raw.num_labels,
        label_names=raw.label_names,
        train=encoded["train"],
        validation=encoded.get("validation"),
        test=encoded.get("test"),
        metric_names=tuple(raw.metric_names),
    )


def _encode_split(split: RawSplit, task_type: str, tokenizer, max_length: int) -> datasets.Dataset:
    if task_type == "token-classification":
        enc = tokenizer(split.texts, is_split_into_words=True, truncation=True, max_length=max_length)
        labels = [_align_word_labels(enc.word_ids(i), tags) for i, tags in enumerate(split.labels)]
        label_feature = datasets.Sequence(datasets.Value("int64"))
    else:
        enc = tokenizer(split.texts, split.text_pairs, truncation=True, max_length=max_length)
        labels = list(split.labels)
        label_feature = datasets.Value("float32" if task_type == "regression" else "int64")
    columns = {key: enc[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in enc}
    features = {key: datasets.Sequence(datasets.Value("int64")) for key in columns}
    columns["labels"] = labels
    features["labels"] = label_feature
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _align_word_labels(word_ids: list[int | None], word_tags: list[int]) -> list[int]:
    """Tag of word w on its first sub-token, -100 on special tokens and on continuation sub-tokens."""
    aligned, previous = [], None
    for word in word_ids:
        aligned.append(IGNORE_INDEX if word is None or word == previous else word_tags[word])
        previous = word
    return aligned
