"""The experiment suite of docs/results.md: AutoLoRA against uniform LoRA, the shuffled-histogram control, EVA and
AdaLoRA at one trainable-parameter budget, on Rotten Tomatoes and WNUT-16 (full size and 500 training examples).

    python -m bench.experiments.run [--filter task=...,method=...,seed=...] [--seeds ...] [--max-minutes M]
    python -m bench.experiments.report

* :mod:`.tasks`    the four tasks and the model/tokenizer/task loaders (MiniLM, offline data packages).
* :mod:`.methods`  the retrain recipe and every method (its rank allocation, then the same retraining).
* :mod:`.cache`    one JSON per (task, method, seed) cell under ``results/``, written atomically.
* :mod:`.run`      the one command: iterates over cells, skips cached ones, stops starting cells after a deadline.
* :mod:`.stats`    mean +- std, paired-t intervals of differences, rank stability (Spearman between seeds).
* :mod:`.report`   docs/results.md and its figures, only from the cached JSON.
"""
