"""Atomic writes: a reader sees the old file or the new one, never half of either.

Directories (a data store, a checkpoint) are built under a temporary name and swapped in whole. On
Linux the swap is one ``renameat2(RENAME_EXCHANGE)`` call, so there is no instant at which neither the
old nor the new directory holds the final name; elsewhere (or on a filesystem without it) it is two
renames, final -> ``.NAME.old-PID`` then stage -> final, and ``recover_directory`` puts the old one back
if a process died between them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "write_text_atomic", "write_bytes_atomic", "staged_directory", "replace_directory",
           "recover_directory", "sweep_stale"]

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False when this system or filesystem cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _old_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.old-{os.getpid()}")


def replace_directory(stage: Path, final: Path) -> None:
    """Move the complete directory ``stage`` to ``final``, replacing (and then deleting) any old one."""
    stage, final = Path(stage), Path(final)
    if not final.exists():
        os.replace(stage, final)
        return
    if _exchange(stage, final):  # final now holds the new tree, stage the old one
        shutil.rmtree(stage, ignore_errors=True)
        return
    old = _old_name(final)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(stage, final)  # a kill between these two renames leaves only `old`: see recover_directory
    shutil.rmtree(old, ignore_errors=True)


def recover_directory(final: Path, *, complete: str) -> bool:
    """If ``final`` is missing but a swap left ``.NAME.old-*`` holding file ``complete``, rename it back.

    Returns True when ``final`` exists afterwards. Several leftovers: the most recently modified wins.
    """
    final = Path(final)
    if final.exists():
        return True
    parent = final.parent
    if not parent.is_dir():
        return False
    olds = [p for p in parent.glob(f".{final.name}.old-*") if (p / complete).is_file()]
    if not olds:
        return False
    best = max(olds, key=lambda p: p.stat().st_mtime)
    try:
        os.rename(best, final)
    except FileNotFoundError:  # another process recovered it first
        pass
    return final.exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(final: Path) -> None:
    """Delete ``.NAME.tmp-PID`` / ``.NAME.old-PID`` left beside ``final`` by processes that no longer run.

    Only once ``final`` exists: until then an ``.old`` one may be all that is left (recover_directory).
    """
    final = Path(final)
    if not final.exists():
        return
    for p in list(final.parent.glob(f".{final.name}.tmp-*")) + list(final.parent.glob(f".{final.name}.old-*")):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def staged_directory(final: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it into place only when complete.

    An existing ``final`` is replaced only with ``overwrite``, and only after the new one is whole.
    """
    final = Path(final)
    stage = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    replace_directory(stage, final)
    sweep_stale(final)  # staging of an earlier, killed run
