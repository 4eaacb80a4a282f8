"""Subword tokens: a byte-pair encoding learned from the corpus with HF `tokenizers` (optional extra).

Words are marked SentencePiece-style: a piece starting a word carries "▁" (Metaspace), so the text
comes back by joining pieces and turning "▁" into spaces. Training streams the texts: the trainer keeps
word counts (memory ~ distinct words), never the corpus. The trained model is saved as tokenizer.json
in DATA_DIR so prompts are tokenized the same way later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from seqfit.errors import SeqfitError

__all__ = ["WORD_MARK", "require_tokenizers", "train_bpe", "load_bpe", "TOKENIZER_FILE"]

WORD_MARK = "\u2581"  # "▁"
TOKENIZER_FILE = "tokenizer.json"


def require_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise SeqfitError("--level subword needs the HF tokenizers package: pip install 'seqfit[subword]' "
                          "(or pip install tokenizers)") from None
    return tokenizers


def train_bpe(texts: Iterable[str], *, vocab_size: int, min_frequency: int = 2):
    """A BPE model trained on ``texts`` (streamed); returns a ``tokenizers.Tokenizer``."""
    tk = require_tokenizers()
    if vocab_size < 50:
        raise SeqfitError(f"--bpe-vocab {vocab_size} is too small (at least 50)")
    tokenizer = tk.Tokenizer(tk.models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Metaspace(replacement=WORD_MARK, prepend_scheme="always")
    tokenizer.decoder = tk.decoders.Metaspace(replacement=WORD_MARK, prepend_scheme="always")
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=["<unk>"],
                                     show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load_bpe(source: str | Path):
    """A tokenizer from its JSON text or a tokenizer.json path."""
    tk = require_tokenizers()
    text = str(source)
    if not text.lstrip().startswith("{"):
        path = Path(source)
        if not path.is_file():
            raise SeqfitError(f"{path} not found: a subword store needs its tokenizer.json; re-run `seqfit prepare`")
        text = path.read_text(encoding="utf-8")
    return tk.Tokenizer.from_str(text)
