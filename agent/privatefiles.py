"""Files the agent writes under its state folder: mode 0600, folders 0700, whatever the umask.

Under systemd the unit's ``UMask=0077`` already gives these modes; started by
hand (``santi run`` from a shell, umask 022) the outbox, the status file and
the store secret would otherwise be readable by every local user. The outbox
holds pseudonymised visits and loyalty ids, the secret makes pseudonyms
reversible by whoever has it: neither is anybody else's business.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700; an existing folder keeps its mode."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (SQLite gives its WAL and SHM the file's mode)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, mode 0600; raises ``OSError`` (a full disk: ENOSPC).

    The temporary file is removed when the write fails, so a full disk is
    not made fuller by half-written copies.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
