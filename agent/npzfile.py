"""Reading the ``.npz`` files `santi calibrate fit` writes (radio map, sector fingerprint): one-line errors.

NumPy archives without pickles, each with a ``format`` entry naming what it
is and its version; every problem becomes the caller's error class with one
line naming the file.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from agent.errors import InputError


def file_version(path: Path, error: type[InputError]) -> tuple[int, int, int]:
    """(inode, mtime ns, size) of `path`, which name one version of the file for a cache; or `error`."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    return st.st_ino, st.st_mtime_ns, st.st_size


def load_arrays(path: Path, error: type[InputError], kind: str, fmt: str, keys: tuple[str, ...]) -> dict[str, NDArray[Any]]:
    """The arrays of a `fmt` file holding all `keys`, or `error` saying in one line what is wrong (`kind` names it)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise error(f"{path}: not a {kind} file ({exc})") from None
    if str(arrays.get("format", "")) != fmt:
        raise error(f"{path}: not a {fmt} file; write it with santi calibrate fit")
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise error(f"{path}: missing {', '.join(missing)}")
    return arrays


def write_arrays(path: Path, fmt: str, arrays: dict[str, NDArray[Any]]) -> None:
    """Write `arrays` as a `fmt` file atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        entries: dict[str, Any] = {"format": np.array(fmt), **arrays}
        np.savez_compressed(handle, **entries)
    os.replace(tmp, path)
