"""Data: readers -> tokens/values -> memory-mapped stores -> batches.

readers/     one streaming interface for text, JSON Lines, CSV/TSV, Parquet (.gz too)
prepare      `seqfit prepare` for text (lm token streams, classify sequences); prepare_numeric for numbers
chunks       work units and what a worker process does with one; parallel: the ordered pool
store        TokenStore (token streams); sequences: SequenceStore; series: SeriesStore (+ stats)
shards       size-capped shard files and checked memory maps
vocab, tokenize, subword, embeddings   vocabulary, tokenizers (word/char/BPE), pretrained vectors
batching     LM stream layout; buckets: token-budget sampler; dataset: DataLoader-ready sequences
"""

_EXPORTS = {"TokenStore": "store", "TokenArray": "store", "SequenceStore": "sequences", "SeriesStore": "series",
            "StreamBatches": "batching", "TokenBudgetSampler": "buckets", "SequenceDataset": "dataset",
            "Vocab": "vocab"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    # loaded on first use: prepare's worker processes import this package and need none of torch
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"seqfit.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'seqfit.data' has no attribute {name!r}")
