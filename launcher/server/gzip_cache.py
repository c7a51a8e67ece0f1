"""Each served file compressed once: the first gzip download stores its bytes beside the file, later ones send them.

The stored copy of `<dir>/<name>` is the hidden `<dir>/.<name>.gz`
(`transforms.storage.layout.gzip_cache_path`): no served URL can name it (a
served path is a listed file, and a segment never starts with `.`), and it
goes with its folder when the job (or the publication's file) is removed. It
is written to a hidden temporary name while the first download streams, and
renamed into place, whole, only at its end; its modification time is the
file's, so a copy of another version of the file is never sent. A cache that
cannot be written (a full or read-only disk) only means the next download is
compressed again.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from typing import BinaryIO, Iterator, Optional

from transforms.storage.layout import gzip_cache_path

CHUNK = 4 << 20  # per read and send: 64 KiB chunks (Starlette's default) spent most of a download in the event loop
_GZIP_LEVEL = 1  # fast: the first download should not wait on the compressor


def cached(path: str) -> Optional[str]:
    """The stored gzip copy of `path`, if there is one of this version of it."""
    try:
        copy = os.stat(gzip_cache_path(path))
        return gzip_cache_path(path) if copy.st_mtime_ns == os.stat(path).st_mtime_ns else None
    except FileNotFoundError:
        return None


def compress_and_store(path: str) -> Iterator[bytes]:
    """`path` gzip-compressed, as it streams; the same bytes become its stored copy once whole."""
    before = os.stat(path)
    target = gzip_cache_path(path)
    temporary = f"{target}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
    out = _create(temporary)
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    try:
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                data = compressor.compress(block)
                out = _write(out, data)
                if data:
                    yield data
        tail = compressor.flush()
        out = _write(out, tail)
        if out is not None:
            out.close()
            _install(temporary, target, path, before)
        yield tail
    finally:
        if out is not None:
            out.close()
        with contextlib.suppress(OSError):
            os.remove(temporary)


def _create(temporary: str) -> Optional[BinaryIO]:
    try:
        return open(temporary, "xb")
    except OSError:  # e.g. a read-only output folder: serve without storing
        return None


def _write(out: Optional[BinaryIO], data: bytes) -> Optional[BinaryIO]:
    """Writes to the copy being stored; None (and the copy abandoned) once a write fails."""
    if out is None:
        return None
    try:
        out.write(data)
        return out
    except OSError:
        out.close()
        return None


def _install(temporary: str, target: str, path: str, before: os.stat_result) -> None:
    """Renames the whole copy into place, dated as the file, unless the file changed meanwhile."""
    try:
        after = os.stat(path)
        if (after.st_mtime_ns, after.st_size, after.st_ino) != (before.st_mtime_ns, before.st_size, before.st_ino):
            return
        os.utime(temporary, ns=(after.st_atime_ns, after.st_mtime_ns))
        os.replace(temporary, target)
    except OSError:  # the folder was removed meanwhile (a DELETE): nothing to keep
        pass
