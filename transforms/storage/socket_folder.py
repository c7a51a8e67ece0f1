"""Where this machine's Unix sockets go: the temporary folder, or `/tmp` when the temporary folder's path
is too long for a socket's (108 bytes, its NUL included), as Python 3.14's multiprocessing does itself.

A long `TMPDIR` made `bulk-export export` fail with a traceback (`AF_UNIX path too long`) when the fork
server or the local runner's workers bound their sockets in it. Standard library only: the command line
imports it before anything else (`launcher.jobs.fork_server`).
"""

from __future__ import annotations

import multiprocessing.util
import os
import tempfile

SOCKET_PATH_MAX = 107  # sun_path's 108 bytes, less the NUL
# The longest name put below the folder: multiprocessing's "/pymp-XXXXXXXX/listener-XXXXXXXX" and the
# local runner's "/bulk-export-workers-<pid>-XXXXXXXX/workers.sock".
_NAMES_BYTES = 50
_FALLBACKS = ("/tmp", "/var/tmp")


def socket_folder() -> str:
    """The folder sockets are made below: the temporary folder when short enough, else the first of
    `/tmp` and `/var/tmp` that this user may write (else the temporary folder, which then fails as before)."""
    folder = tempfile.gettempdir()
    if len(os.fsencode(folder)) + _NAMES_BYTES <= SOCKET_PATH_MAX:
        return folder
    return next((path for path in _FALLBACKS if os.access(path, os.W_OK | os.X_OK)), folder)


def place_multiprocessing_sockets() -> None:
    """Has multiprocessing make its own temporary folder (its fork server's socket) below `socket_folder()`;
    it makes that folder once per process, on first use, which this is when called before the fork server."""
    folder = socket_folder()
    if folder == tempfile.gettempdir():
        return
    before, tempfile.tempdir = tempfile.tempdir, folder
    try:
        multiprocessing.util.get_temp_dir()
    finally:
        tempfile.tempdir = before
