"""Streaming UTF-8 text: files, folders and globs as lines, with the byte offset of any bad byte."""

from __future__ import annotations

import glob
import gzip
from pathlib import Path
from typing import Iterator

from seqfit.errors import SeqfitError

__all__ = ["expand_inputs", "iter_lines"]

_SNIFF_BYTES = 8192


def expand_inputs(inputs: list[str], pattern: str = "*") -> list[Path]:
    """Files named, files under named folders (recursive, matching ``pattern``), and glob matches; sorted."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob(pattern) if p.is_file())
            if not found:
                raise SeqfitError(f"no files matching {pattern!r} under {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif any(ch in item for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                raise SeqfitError(f"no files match {item!r}")
            files.extend(found)
        else:
            raise SeqfitError(f"input not found: {item}")
    return files


def _open_binary(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_lines(path: Path, *, encoding_errors: str = "strict") -> Iterator[str]:
    """Lines of a UTF-8 (or .gz) file without their line ending, read in bounded memory.

    Bad UTF-8 raises SeqfitError naming the file and byte offset, unless ``encoding_errors``
    is "replace" (U+FFFD) or "ignore". A NUL byte in the first 8 KiB marks a binary file.
    """
    try:
        f = _open_binary(path)
    except OSError as e:
        raise SeqfitError(f"cannot read {path}: {e.strerror}") from None
    with f:
        offset = 0
        try:
            head = f.peek(_SNIFF_BYTES)[:_SNIFF_BYTES] if hasattr(f, "peek") else b""
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise SeqfitError(f"cannot read {path}: {e}") from None
        nul = head.find(b"\0")
        if nul >= 0:
            raise SeqfitError(f"{path} looks binary (NUL byte at offset {nul}); give text files")
        try:
            for raw in f:
                try:
                    line = raw.decode("utf-8", errors=encoding_errors)
                except UnicodeDecodeError as e:
                    raise SeqfitError(
                        f"{path} is not UTF-8: bad byte 0x{raw[e.start]:02x} at byte offset {offset + e.start} "
                        "(use --encoding-errors replace to go on)") from None
                offset += len(raw)
                yield line.rstrip("\r\n") if line.endswith("\n") else line
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise SeqfitError(f"cannot read {path}: {e}") from None
