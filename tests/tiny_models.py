"""Tiny random transformers models for tests: hidden 32, 2 layers, vocab 100, seeded, in eval mode.

Each factory builds its weights under ``torch.random.fork_rng`` with the given seed, so the same seed gives the same
model and the caller's RNG state is left untouched.
"""
import torch
from transformers import (BertConfig, BertForQuestionAnswering, BertForSequenceClassification,
                          BertForTokenClassification, DistilBertConfig, DistilBertForSequenceClassification, GPT2Config,
                          GemmaConfig, GemmaForSequenceClassification, GPT2ForSequenceClassification, GPT2LMHeadModel,
                          LlamaConfig, LlamaForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

VOCAB_SIZE = 100
HIDDEN = 32
LAYERS = 2
PAD_TOKEN_ID = 1


def _build(model_cls, config, seed, dtype):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model.to(dtype).eval()


def _bert_config(num_labels):
    return BertConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                      pad_token_id=PAD_TOKEN_ID)


def tiny_bert(num_labels=3, seed=0, dtype=torch.float32):
    """BertForSequenceClassification; adapted targets ``bert.encoder.layer.{0,1}.attention.self.{query,value}``."""
    return _build(BertForSequenceClassification, _bert_config(num_labels), seed, dtype)


def tiny_bert_token_classifier(num_labels=5, seed=0, dtype=torch.float32):
    """BertForTokenClassification (sequence labelling), same body as :func:`tiny_bert`."""
    return _build(BertForTokenClassification, _bert_config(num_labels), seed, dtype)


def tiny_bert_question_answering(seed=0, dtype=torch.float32):
    """BertForQuestionAnswering (span start/end head ``qa_outputs``), same body as :func:`tiny_bert`."""
    return _build(BertForQuestionAnswering, _bert_config(2), seed, dtype)


def tiny_distilbert(num_labels=3, seed=0, dtype=torch.float32):
    """DistilBertForSequenceClassification; head ``pre_classifier`` then ``classifier``, targets ``q_lin``/``v_lin``."""
    config = DistilBertConfig(vocab_size=VOCAB_SIZE, dim=HIDDEN, n_layers=LAYERS, n_heads=2, hidden_dim=64,
                              max_position_embeddings=64, num_labels=num_labels, pad_token_id=PAD_TOKEN_ID)
    return _build(DistilBertForSequenceClassification, config, seed, dtype)


def tiny_roberta(num_labels=3, seed=0, dtype=torch.float32):
    """RobertaForSequenceClassification; head ``classifier`` has ``dense`` and ``out_proj``."""
    config = RobertaConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                           pad_token_id=PAD_TOKEN_ID, bos_token_id=0, eos_token_id=2)
    return _build(RobertaForSequenceClassification, config, seed, dtype)


def _gpt2_config(num_labels):
    return GPT2Config(vocab_size=VOCAB_SIZE, n_embd=HIDDEN, n_layer=LAYERS, n_head=2, n_positions=64,
                      num_labels=num_labels, pad_token_id=PAD_TOKEN_ID, bos_token_id=0, eos_token_id=2)


def tiny_gpt2(num_labels=3, seed=0, dtype=torch.float32):
    """GPT2ForSequenceClassification; fused qkv ``transformer.h.{0,1}.attn.c_attn`` (Conv1D, weight 32 x 96)."""
    return _build(GPT2ForSequenceClassification, _gpt2_config(num_labels), seed, dtype)


def tiny_gpt2_lm(seed=0, dtype=torch.float32, tie_word_embeddings=True):
    """GPT2LMHeadModel (language modelling head tied to the token embeddings unless ``tie_word_embeddings=False``),
    same body as :func:`tiny_gpt2`."""
    config = _gpt2_config(2)
    config.tie_word_embeddings = tie_word_embeddings
    return _build(GPT2LMHeadModel, config, seed, dtype)


def tiny_llama(num_labels=3, seed=0, dtype=torch.float32):
    """LlamaForSequenceClassification (4 query heads, 2 key/value heads); targets ``model.layers.{0,1}.self_attn.*``."""
    config = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         num_labels=num_labels, pad_token_id=PAD_TOKEN_ID, bos_token_id=0, eos_token_id=2)
    return _build(LlamaForSequenceClassification, config, seed, dtype)


def tiny_gemma(num_labels=3, seed=0, dtype=torch.float32):
    """GemmaForSequenceClassification (4 query heads of width 8, 2 key/value heads); targets
    ``model.layers.{0,1}.self_attn.*``."""
    config = GemmaConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=64,
                         num_labels=num_labels, pad_token_id=PAD_TOKEN_ID, bos_token_id=0, eos_token_id=2)
    return _build(GemmaForSequenceClassification, config, seed, dtype)


TINY_SEQUENCE_CLASSIFIERS = {"bert": tiny_bert, "roberta": tiny_roberta, "gpt2": tiny_gpt2, "llama": tiny_llama}


def tiny_batch(batch_size=2, seq_len=7, seed=0):
    """Random token ids in [3, VOCAB_SIZE) (no pad/bos/eos ids) and an all-ones attention mask."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB_SIZE, (batch_size, seq_len), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
