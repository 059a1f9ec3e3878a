"""A tiny WordPiece tokenizer built offline from a written vocab.txt, for tests."""
from __future__ import annotations

import os
import tempfile

from transformers import BertTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [
    "the", "a", "movie", "film", "is", "was", "good", "bad", "great", "awful", "fun", "dull", "not", "very",
    "i", "love", "hate", "it", "and", "new", "york", "paris", "john", "smith", "visited", "in", "at", "on",
    "today", "apple", "google", "play", "##s", "##ed", "##ing", "##er", ".", ",", "!", "?",
]
VOCAB = SPECIAL_TOKENS + WORDS


def tiny_tokenizer(tmp_path=None) -> BertTokenizerFast:
    """Lower-casing fast BERT tokenizer over :data:`VOCAB` (ids in list order; [PAD] = 0, [UNK] = 1).

    ``vocab.txt`` is written to ``tmp_path`` (a fresh temporary folder when None) and loaded with
    ``from_pretrained`` of that folder; the ``vocab_file=`` constructor argument is not used because newer
    transformers versions ignore it.
    """
    folder = os.fspath(tmp_path) if tmp_path is not None else tempfile.mkdtemp(prefix="tiny-tokenizer-")
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(VOCAB) + "\n")
    return BertTokenizerFast.from_pretrained(folder)
