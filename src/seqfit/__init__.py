"""seqfit: train recurrent sequence models on data and models larger than memory.

    seqfit.prepare(*inputs, out=DIR, **options)  `seqfit prepare`: a memory-mapped store, streamed
    seqfit.plan(data_dir, **options)        predicted peak memory, part by part; the fastest plan under budget=
    seqfit.estimate(data_dir, **options)    the same for the config exactly as given
    seqfit.train(data_dir, out, **options)  `seqfit train`, returning its summary
    seqfit.translate(run_dir, lines, beam=5)  `seqfit translate`: decodes of an encoder-decoder, in order
    seqfit.nn                               LSTM/GRU/RNN drop-ins with checkpoint_time=; chunked_cross_entropy
    seqfit.data                             TokenStore and the batch samplers

Attributes load on first use, so `import seqfit` (and the CLI's start) stays light.
"""

from seqfit.version import __version__

__all__ = ["__version__", "prepare", "plan", "estimate", "train", "translate", "nn", "data"]


def __getattr__(name: str):
    if name in ("prepare", "plan", "estimate", "train", "translate"):
        from seqfit import api

        return getattr(api, name)
    if name in ("nn", "data"):
        import importlib

        return importlib.import_module(f"seqfit.{name}")
    raise AttributeError(f"module 'seqfit' has no attribute {name!r}")
