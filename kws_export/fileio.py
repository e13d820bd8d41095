"""Small file helpers shared by every command: input checks and atomic writes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from kws_export.errors import KWSError


def check_readable(path: str | os.PathLike, what: str = "file") -> Path:
    """Fail with a one-line KWSError unless ``path`` is a non-empty readable file."""
    p = Path(path)
    if not p.exists():
        raise KWSError(f"{p}: {what} not found")
    if p.is_dir():
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise KWSError(f"{p}: is a directory, expected {article} {what}")
    if not os.access(p, os.R_OK):
        raise KWSError(f"{p}: {what} is not readable (permission denied)")
    if p.stat().st_size == 0:
        raise KWSError(f"{p}: {what} is empty")
    return p


def check_writable(path: str | os.PathLike) -> Path:
    """Fail before any work when the output cannot be written (atomic_output checks again)."""
    dest = Path(path)
    parent = dest.parent if str(dest.parent) else Path(".")
    if dest.is_dir():
        raise KWSError(f"{dest}: is a directory, expected an output file path")
    if not parent.is_dir():
        raise KWSError(f"{dest}: output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KWSError(f"{dest}: cannot write output (permission denied on {parent})")
    return dest


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    A failure (or an interrupt) leaves any existing file untouched and no partial
    file behind.  An unwritable destination is reported before any work is done.
    """
    dest = check_writable(path)
    parent = dest.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise KWSError(f"{dest}: cannot write output ({exc.strerror})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        # The block only writes the output: an OSError there is a full disk, a quota, a
        # file size limit, an I/O error ... of this file, so name it on one line.
        if isinstance(exc, OSError) and exc.errno is not None:
            raise KWSError(f"{dest}: cannot write output ({exc.strerror or exc})") from None
        raise
