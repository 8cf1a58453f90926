"""Writing one output file all-or-nothing: every file chipsim writes goes through `atomic_write`.

The content is written to a hidden temporary file beside the destination, then renamed over it, so
a reader sees the old file or the new one, never half of one, and a failure leaves nothing behind.
`check_destination` refuses a destination that cannot be written before any work starts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chipsim.errors import InputError


def check_destination(path: str | Path) -> Path:
    """Check that a file can be written at `path` (it is not a directory, and no folder on the way is a
    file) without creating anything; returns the path. Callers run it before any work."""
    path = Path(path)
    if path.is_dir():
        raise InputError("cannot write the output: it is an existing directory", file=str(path))
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"cannot write the output: {parent} is a file, not a directory", file=str(path))
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(f"cannot write the output: {parent} is not writable", file=str(path))
            break
    return path


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], Any], what: str = "the output") -> Path:
    """`write(tmp)` into a temporary file beside `path`, then rename it over `path`. The file gets an
    ordinary new file's permissions (not mkstemp's 0600). An OSError is an InputError naming `path`."""
    path = check_destination(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise InputError(f"cannot write {what} ({exc.__class__.__name__}: {exc.strerror or exc})",
                         file=str(path)) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path
