"""Files replaced whole: a reader never sees half of one; and files read without following a link."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace `path` whole (a temporary file in the same directory, then a rename) with file mode `mode`; a missing
    directory is made private (0700). The temporary file has a random name and is created new (O_EXCL, which
    also never follows a link), so a link planted in a shared directory cannot send the write elsewhere."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)  # mkstemp makes it 0600
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private(path: Path, text: str) -> None:
    """`write_atomic` with mode 0600: keys and secrets."""
    write_atomic(path, text, 0o600)


def read_no_follow(path: Path, limit: int = 1 << 20) -> str:
    """A small text file read whole, refused (OSError) when `path` is a link (O_NOFOLLOW), not a regular file (a
    FIFO is opened without waiting, then refused) or longer than `limit` bytes: for a file in a directory that
    another container writes too."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path} is longer than {limit} bytes")
    return data.decode()
