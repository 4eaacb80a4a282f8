"""Line -> tokens, at word, character or subword level. End of line is a token of its own (added by callers)."""

from __future__ import annotations

from typing import Callable

from seqfit.errors import SeqfitError

__all__ = ["LEVELS", "make_tokenizer", "make_batch_tokenizer", "detokenize"]

LEVELS = ("word", "char", "subword")


def make_tokenizer(level: str, *, lowercase: bool = False, subword=None) -> Callable[[str], list[str]]:
    """Word level splits on whitespace (as WikiText is pre-tokenized); char level keeps every character.

    Subword level needs ``subword``: a trained ``tokenizers.Tokenizer``, its JSON text, or a tokenizer.json path
    (see seqfit.data.subword).
    """
    if level == "word":
        split = str.split
    elif level == "char":
        split = list
    elif level == "subword":
        if subword is None:
            raise SeqfitError("subword tokenization needs the store's tokenizer.json")
        if not hasattr(subword, "encode"):
            from seqfit.data.subword import load_bpe
            subword = load_bpe(subword)
        model = subword
        split = lambda line: model.encode(line).tokens  # noqa: E731
    else:
        raise SeqfitError(f"unknown tokenization level {level!r}; choose one of {', '.join(LEVELS)}")
    if lowercase:
        return lambda line: split(line.lower())
    return split


def make_batch_tokenizer(level: str, *, lowercase: bool = False, subword=None) -> Callable[[list[str]], list[list[str]]]:
    """Many lines at once: the subword model encodes a batch in one call (its Rust side is much faster so)."""
    if level == "subword":
        if not hasattr(subword, "encode_batch"):
            from seqfit.data.subword import load_bpe
            subword = load_bpe(subword)
        model = subword

        def batch(lines: list[str]) -> list[list[str]]:
            if lowercase:
                lines = [line.lower() for line in lines]
            return [enc.tokens for enc in model.encode_batch(lines, add_special_tokens=False)]
        return batch
    one = make_tokenizer(level, lowercase=lowercase)
    return lambda lines: [one(line) for line in lines]


def detokenize(tokens: list[str], level: str, eos: str) -> str:
    """Tokens -> text: <eos> becomes a newline; words are joined by spaces, characters by nothing,
    subword pieces by nothing with their word marks turned back into spaces."""
    lines, current = [], []
    for tok in tokens:
        if tok == eos:
            lines.append(current)
            current = []
        else:
            current.append(tok)
    lines.append(current)
    if level == "subword":
        from seqfit.data.subword import WORD_MARK
        texts = ("".join(line).replace(WORD_MARK, " ") for line in lines)
        return "\n".join(t[1:] if t.startswith(" ") else t for t in texts)
    joiner = " " if level == "word" else ""
    return "\n".join(joiner.join(line) for line in lines)
