"""Line -> tokens, at word or character level. End of line is a token of its own (added by callers)."""

from __future__ import annotations

from typing import Callable

from seqfit.errors import SeqfitError

__all__ = ["LEVELS", "make_tokenizer", "detokenize"]

LEVELS = ("word", "char")


def make_tokenizer(level: str, *, lowercase: bool = False) -> Callable[[str], list[str]]:
    """Word level splits on whitespace (as WikiText is pre-tokenized); char level keeps every character."""
    if level == "word":
        split = str.split
    elif level == "char":
        split = list
    else:
        raise SeqfitError(f"unknown tokenization level {level!r}; choose one of {', '.join(LEVELS)}")
    if lowercase:
        return lambda line: split(line.lower())
    return split


def detokenize(tokens: list[str], level: str, eos: str) -> str:
    """Tokens -> text: <eos> becomes a newline; words are joined by spaces, characters by nothing."""
    lines, current = [], []
    for tok in tokens:
        if tok == eos:
            lines.append(current)
            current = []
        else:
            current.append(tok)
    lines.append(current)
    joiner = " " if level == "word" else ""
    return "\n".join(joiner.join(line) for line in lines)
