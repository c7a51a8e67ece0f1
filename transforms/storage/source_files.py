"""What `--source` names: its files, listed safely, and the root their error locations are relative to.

Beam-free for local paths, so the launcher can size and scan a source without
importing Beam; a glob or a remote (`gs://`) source goes through Beam's
FileSystems, imported only then.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat
from typing import IO, NamedTuple, Optional, Union

from transforms.errors import Unavailable
from transforms.storage.files import is_local
from transforms.storage.layout import ATTACHMENTS_DIR
from transforms.storage.pg_source import SCHEMES as PG_SCHEMES


class SourceError(Unavailable, IOError):
    """The source is missing or unreadable; the whole export must fail."""


def _filesystems():
    from apache_beam.io.filesystems import FileSystems  # only a glob or a remote source needs Beam

    return FileSystems


class Refused(NamedTuple):
    """A file of the source that is never opened, and why: a link leading out of the source's
    folder, or not a regular file (a FIFO, a socket, a device)."""

    path: str
    reason: str


LINK_OUT = "a link whose target is outside the source folder (not followed)"
NOT_REGULAR = "not a regular file (a FIFO, socket or device; not opened)"
# An `information` notice: the file behind the link is read once, at its own name.
LINK_IN = "a link to a file the source holds under another name (read once, at that name)"
SWAPPED = "not the file that was listed (replaced, or made a link, during the export; not read)"


class LocalFile(NamedTuple):
    """What a listed local file's reader must find (`open_listed`): its device and inode, the path
    to open (its real path when the listed name is a link; "" for the name itself) and the real
    folder it must lie in ("" for a source named as a single file)."""

    device: int
    inode: int
    target: str = ""
    inside: str = ""


class SourceFile(NamedTuple):
    """A file of the source as listed; `local` is None for a remote (`gs://`) object."""

    path: str
    size: int
    local: Optional[LocalFile] = None


class Listing(NamedTuple):
    """The files of a source to read (each file once), those refused, and the links left out because
    the file they lead to is read at another name (`LINK_IN` notices)."""

    files: list[SourceFile]
    refused: list[Refused]
    linked: list[str]


def match_source(source: str) -> list[tuple[str, int]]:
    """Lists `(path, size)` of the files `source` names, or raises `SourceError`."""
    return list_source(source)[0]


def list_source(source: str) -> tuple[list[tuple[str, int]], list[Refused]]:
    """`(path, size)` of the files `source_files` lists, and the files it refuses."""
    listing = source_files(source)
    return [(f.path, f.size) for f in listing.files], listing.refused


def source_files(source: str) -> Listing:
    """The files `source` names, each read once, and the files it names that are refused.

    A folder is read recursively; hidden files and folders (a name starting with
    `.`) are skipped, and so is the `attachments/` folder directly under the root (attachment
    content, `open_below`). In a local folder or glob, a link whose target lies outside
    the source's folder is refused, as is anything but a regular file: neither is
    ever opened. A local file reached by several names (a link to a file of the
    source) is read once, at the first name that is not a link; the others are
    listed in `linked`. Raises `SourceError` when nothing at all matches, or when the
    source itself is not a regular file or folder (a FIFO would block its reader).
    """
    local = is_local(source)
    if local and not source.endswith("/") and not any(c in source for c in "*?[") and os.path.lexists(source):
        if os.path.isdir(source):
            return _local_folder(source)
        if not os.path.exists(source):
            raise SourceError(f"source {source!r} is a broken link")
        if not stat.S_ISREG(os.stat(source).st_mode):
            raise SourceError(f"source {source!r} is not a regular file or a folder (e.g. a FIFO); it is not read")
    if local and source.endswith("/") and os.path.isdir(source):
        return _local_folder(source)
    pattern = source
    if source.endswith("/") or (not local and _is_object_folder(source)):
        pattern = source.rstrip("/") + "/**"  # every object under the prefix, at any depth
    try:
        found = _filesystems().match([pattern])[0].metadata_list
    except Exception as exc:  # Beam raises BeamIOError with the cause inside
        raise SourceError(f"cannot list source {source!r}: {exc}") from exc
    base = _literal_prefix(pattern)
    files, refused = [], []
    # In a local glob, links must stay inside its folder; a single file named as the source is the
    # operator's own choice, link or not.
    globbed = any(c in pattern for c in "*?[")
    inside = os.path.realpath(base or ".") if local and globbed else None
    for m in sorted(found, key=lambda m: m.path):
        if _is_hidden(m.path, base) or _is_attachment(m.path, base) or _is_local_dir(m.path):
            continue
        if not local:
            files.append(SourceFile(m.path, m.size_in_bytes))
            continue
        listed = _local_file(m.path, inside)
        if type(listed) is str:
            refused.append(Refused(m.path, listed))
        else:
            files.append(SourceFile(m.path, m.size_in_bytes, listed))
    if not files and not refused:
        raise SourceError(f"source {source!r} matches no files")
    return _once(files, refused)


def _local_file(path: str, inside: Optional[str]) -> Union[LocalFile, str]:
    """A matched local file as its reader must find it, or why it must not be read (`inside`: the
    folder it must stay in)."""
    real = os.path.realpath(path)
    if inside is not None and not _within(real, inside):
        return LINK_OUT
    try:
        info = os.stat(path)
    except OSError:
        return NOT_REGULAR
    if not stat.S_ISREG(info.st_mode):
        return NOT_REGULAR
    return LocalFile(info.st_dev, info.st_ino, "" if real == os.path.abspath(path) else real, inside or "")


def _once(files: list[SourceFile], refused: list[Refused]) -> Listing:
    """Each local file once (by device and inode): at its first name that is not a link, else its
    first name; its other names go to `linked`."""
    kept: dict[tuple[int, int], SourceFile] = {}
    linked: list[str] = []
    for f in sorted(files, key=lambda f: (f.local is None or bool(f.local.target), f.path)):
        if f.local is None:
            kept[(-1, len(kept))] = f
            continue
        key = (f.local.device, f.local.inode)
        if key in kept:
            linked.append(f.path)
        else:
            kept[key] = f
    return Listing(sorted(kept.values()), sorted(refused), sorted(linked))


class NotListed(SourceError):
    """The file found at a listed name is not the one listed (`SWAPPED`); it is reported, not read."""


def open_listed(path: str, file: LocalFile) -> IO[bytes]:
    """Opens a listed local file without following a link at its name, and checks on the open
    descriptor that it is the regular file listed (device and inode), inside the source's folder.

    Raises `NotListed` before anything is read when it is not; `SourceError` when it cannot be opened.
    """
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not block the open.
        fd = os.open(file.target or path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link now stands at the name
            raise NotListed(f"source file {path!r}: {SWAPPED}") from None
        raise SourceError(f"cannot read source file {path!r}: {exc}") from exc
    try:
        info = os.fstat(fd)
        if (not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (file.device, file.inode)
                or (file.inside and not _within(_opened_path(fd, file.inside), file.inside))):
            raise NotListed(f"source file {path!r}: {SWAPPED}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class AttachmentNotServed(SourceError):
    """A file an `Attachment.url` names that is not served: missing, a link out of the source, not a
    regular file, or swapped while it was opened."""


def open_below(root: str, relative: str) -> IO[bytes]:
    """Opens the file at `relative` (already checked to hold no `..`, `.name` or absolute part:
    `transforms.fhir.attachments.target`) below a local `source_root`, as a listed source file is
    opened: a link must stay inside the root, only a regular file, `O_NOFOLLOW` and `fstat`-checked
    (`open_listed`). A remote root is read through Beam's FileSystems. Raises `AttachmentNotServed`."""
    path = root + relative
    if not is_local(root):
        try:
            return _filesystems().open(path, compression_type="uncompressed")
        except Exception:  # noqa: BLE001: Beam raises its own IO errors for a missing object
            raise AttachmentNotServed("no such file in the source") from None
    if not root or not os.path.lexists(path):
        raise AttachmentNotServed("no such file in the source")
    listed = _local_file(path, os.path.realpath(root))
    if type(listed) is str:
        raise AttachmentNotServed(listed)
    try:
        return open_listed(path, listed)
    except SourceError as exc:
        raise AttachmentNotServed(SWAPPED if isinstance(exc, NotListed) else "cannot be read") from None


def _opened_path(fd: int, inside: str) -> str:
    """Where the open file `fd` lies, as the kernel resolved it; `inside` where that cannot be told."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (macOS): the device and inode check stands alone
        return inside


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _local_folder(source: str) -> Listing:
    """A local folder's files at any depth, without following links out of it (nor in circles)."""
    top = source.rstrip("/") or "/"
    inside = os.path.realpath(top)
    files: list[SourceFile] = []
    refused: list[Refused] = []
    seen = {inside}
    pending = [top]
    while pending:
        folder = pending.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise SourceError(f"cannot list source folder {folder!r}: {exc}") from exc
        for entry in entries:
            if entry.name.startswith(".") or (folder == top and entry.name == ATTACHMENTS_DIR):
                continue
            path = f"{folder.rstrip('/')}/{entry.name}"
            target = ""
            if entry.is_symlink():
                target = os.path.realpath(path)
                if not _within(target, inside):
                    refused.append(Refused(path, LINK_OUT))
                    continue
                if os.path.isdir(target):
                    if target not in seen:  # a link back up the tree is read once, at its real place
                        seen.add(target)
                        pending.append(path)
                    continue
            elif entry.is_dir(follow_symlinks=False):
                real = os.path.realpath(path)
                if real not in seen:
                    seen.add(real)
                    pending.append(path)
                continue
            try:
                info = os.stat(path)
            except OSError:
                refused.append(Refused(path, NOT_REGULAR))
                continue
            if not stat.S_ISREG(info.st_mode):
                refused.append(Refused(path, NOT_REGULAR))
                continue
            files.append(SourceFile(path, info.st_size, LocalFile(info.st_dev, info.st_ino, target, inside)))
    if not files and not refused:
        raise SourceError(f"source {source!r} matches no files")
    return _once(files, refused)


def source_root(source: str) -> str:
    """The prefix that error files strip from a source file's path: the `--source` folder
    (with its `/`), a glob's folder before its first wildcard, or a single file's folder; "" for
    a PostgreSQL source, whose errors name the table."""
    if source.startswith(PG_SCHEMES):
        return ""
    if any(c in source for c in "*?["):
        return _literal_prefix(source)
    if source.endswith("/"):
        return source
    if is_local(source):
        if os.path.isdir(source):
            return source + "/"
    elif _is_object_folder(source):
        return source + "/"
    return source[: source.rfind("/") + 1]


def relative_path(path: str, root: str) -> str:
    """`path` relative to a `source_root`; a path outside it is named by its file name only."""
    if root and path.startswith(root) and len(path) > len(root):
        return path[len(root):]
    return posixpath.basename(path)


def relative_paths(text: str, root: str) -> str:
    """`text` (a failure message) with every path under a `source_root` named relative to it, and the
    root itself as `<source>`: a client is told where in the source, never the server's folders."""
    if not root:
        return text
    text = re.sub(re.escape(root) + r"(?=[^\s'\"])", "", text)
    return text.replace(root.rstrip("/"), "<source>") if root.rstrip("/") else text


def _is_object_folder(source: str) -> bool:
    """In an object store (gs://) a folder is a prefix: a plain name that is not an object itself."""
    return not any(c in source for c in "*?[") and not _filesystems().exists(source)


def _literal_prefix(pattern: str) -> str:
    """The folder part of a pattern before its first wildcard."""
    cut = min((i for i, c in enumerate(pattern) if c in "*?["), default=len(pattern))
    return pattern[: pattern.rfind("/", 0, cut) + 1]


def _is_hidden(path: str, base: str) -> bool:
    """True when a file, or a folder the pattern reached into, is hidden (e.g. `.parts-tmp-1`)."""
    relative = path[len(base) :] if path.startswith(base) else posixpath.basename(path)
    return any(segment.startswith(".") for segment in relative.split("/"))


def _is_attachment(path: str, base: str) -> bool:
    """True for a file in the `attachments/` folder directly under the source's root: content that
    `Attachment.url`s name, never read as resources."""
    relative = path[len(base) :] if path.startswith(base) else ""
    return relative.startswith(ATTACHMENTS_DIR + "/")


def _is_local_dir(path: str) -> bool:
    return is_local(path) and os.path.isdir(path)
