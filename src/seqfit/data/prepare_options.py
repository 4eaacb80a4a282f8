"""What `seqfit prepare` is asked to do, checked before anything is read or written (shared by the text and
numeric paths)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seqfit.data.readers import FORMATS
from seqfit.data.shards import DEFAULT_SHARD_BYTES
from seqfit.data.vocab import SPECIALS
from seqfit.errors import SeqfitError

__all__ = ["TASKS", "PrepareOptions", "check_options", "check_out", "sort_labels"]

TASKS = ("lm", "classify", "series", "seq2seq")


@dataclass(frozen=True)
class PrepareOptions:
    out: Path
    inputs: tuple[str, ...] = ()  # split by --valid-fraction
    train: tuple[str, ...] = ()  # explicit split files
    valid: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    task: str = "lm"  # "lm" token stream | "classify" labelled sequences | "series" numeric columns
    fmt: str = "auto"  # reader: auto (by extension) | text | jsonl | csv | parquet
    text_field: str = "text"  # JSONL/CSV/Parquet field holding the text
    label_field: str = ""  # field holding the class (classify)
    target_field: str = ""  # field holding the target text (seq2seq: source/target pairs)
    separate_vocab: bool = False  # seq2seq: a source and a target vocabulary (default: one for both sides)
    columns: tuple[str, ...] = ()  # numeric columns (series; numeric classify)
    group_field: str = ""  # numeric classify: consecutive rows with one value form one sequence; series: one series
    time_field: str = ""  # series: field whose values (numbers or ISO times) are kept beside each split
    static_fields: tuple[str, ...] = ()  # series with --group-field: per-series category columns (constant within one)
    dtype: str = "float32"  # numeric storage: float32 | float16
    nan: str = "error"  # NaN/inf in numeric columns: error | drop | fill-zero | ffill
    level: str = "word"  # word | char | subword
    bpe_vocab: int = 8000  # subword: BPE merges + alphabet
    min_freq: int = 1
    max_vocab: int = 0
    lowercase: bool = False
    valid_fraction: float = 0.05  # used only without explicit --valid (classify: of each class's records)
    pattern: str = "*"
    encoding_errors: str = "strict"
    shard_bytes: int = DEFAULT_SHARD_BYTES  # split arrays into files of at most this many bytes
    workers: int = 0  # encoding processes (0: all cores for large inputs, 1 for small)
    chunk_bytes: int = 1 << 20  # bytes of a plain text/JSONL file per work unit (a worker holds ~5x this; small keeps the peak flat)
    embeddings: str = ""  # GloVe / word2vec text file to restrict to the vocabulary
    embeddings_dtype: str = "float32"
    seed: int = 0  # random rows of embeddings missing from the file; where each class's held-out records fall
    overwrite: bool = False


def check_options(opts: PrepareOptions) -> None:
    if opts.task not in TASKS:
        raise SeqfitError(f"unknown task {opts.task!r}; choose one of {', '.join(TASKS)}")
    if opts.fmt not in FORMATS:
        raise SeqfitError(f"unknown format {opts.fmt!r}; choose one of {', '.join(FORMATS)}")
    if opts.shard_bytes < 1024:
        raise SeqfitError(f"--shard-size must be at least 1KB, got {opts.shard_bytes} bytes")
    if opts.workers < 0:
        raise SeqfitError("--workers must be >= 0")
    if not 0 <= opts.valid_fraction < 1:  # also catches NaN
        raise SeqfitError(f"--valid-fraction must be in [0, 1), got {opts.valid_fraction}")
    if opts.min_freq < 1:
        raise SeqfitError(f"--min-freq must be >= 1, got {opts.min_freq}")
    if 0 < opts.max_vocab <= len(SPECIALS) or opts.max_vocab < 0:
        raise SeqfitError(f"--max-vocab must be 0 (no limit) or more than the {len(SPECIALS)} special tokens, "
                          f"got {opts.max_vocab}")
    if opts.level == "subword" and opts.bpe_vocab < 50:
        raise SeqfitError(f"--bpe-vocab must be >= 50, got {opts.bpe_vocab}")
    if opts.seed < 0:
        raise SeqfitError(f"--seed must be >= 0, got {opts.seed}")
    if (opts.task == "seq2seq") != bool(opts.target_field):
        raise SeqfitError("source/target pairs need both --task seq2seq and --target-field (the target text's field)")
    if opts.time_field and opts.task != "series":
        raise SeqfitError("--time-field applies to --task series only")
    if opts.static_fields and (opts.task != "series" or not opts.group_field):
        raise SeqfitError("--static-field applies to --task series with --group-field (a category per series)")
    if opts.separate_vocab and opts.task != "seq2seq":
        raise SeqfitError("--separate-vocab applies to --task seq2seq (a source and a target vocabulary)")
    if opts.task == "seq2seq" and opts.columns:
        raise SeqfitError("--task seq2seq reads text pairs; --columns (numeric) does not apply")


def check_out(opts: PrepareOptions) -> Path:
    out = Path(opts.out)
    if (out / "meta.json").exists() and not opts.overwrite:
        raise SeqfitError(f"{out} already holds a prepared store; use --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise SeqfitError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not opts.overwrite:
        raise SeqfitError(f"{out} is not empty; choose a new --out or use --overwrite")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SeqfitError(f"cannot create {out.parent}: {e.strerror}") from None
    return out


def sort_labels(names) -> list[str]:
    """Numeric labels in numeric order ("2" before "10"), others alphabetically."""
    def key(name: str):
        try:
            return (0, float(name), name)
        except ValueError:
            return (1, 0.0, name)
    return sorted(names, key=key)
