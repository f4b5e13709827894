"""Small filesystem helpers shared by the checkpoint writers."""

from __future__ import annotations

import os
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def publish_mode(path: str | Path) -> None:
    """Give a file or folder made by ``tempfile`` (0600 / 0700, private) the permissions an ordinary
    ``open`` / ``mkdir`` would have given it under the current umask, before it is renamed into place."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())
