"""Writing files safely: atomic writes (outputs, release weights and checkpoints appear whole or
not at all), and checking before long work that an output can be written at all."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_write(path: str | Path, durable: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file to write ``path``'s content into; it replaces ``path`` only if the
    block finishes. On any error the temporary file is removed and ``path`` is left as it was.
    ``path``'s folder is created if missing.

    The temporary file is hidden in ``path``'s own folder, since a rename is atomic only within
    one filesystem. ``durable`` flushes it to disk before the rename (for checkpoints, which a
    crash must not lose).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private (0600); outputs are ordinary files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(path: str | Path, folder: bool = False) -> None:
    """Raise ValueError, with a one-line reason, if a file (or, with ``folder``, files inside a
    folder) could not be written at ``path``: checked before long work rather than after it.

    The path may not exist yet; its nearest existing ancestor must then be a writable folder.
    """
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise ValueError(f"{path} exists and is not a folder")
        if not folder and path.is_dir():
            raise ValueError(f"{path} is a folder, not a file")
        target = path if folder else path.parent
    else:
        target = path.parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise ValueError(f"cannot write {path}: {target} is a file, not a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: {target} is not writable")
