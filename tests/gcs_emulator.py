"""A real GCS JSON API for tests: `gcp-storage-emulator` in a thread, with preconditions enforced.

The emulator ignores `ifGenerationMatch`; `serve()` wraps its write handlers
so a write whose precondition fails gets 412, as on GCS. Tests that rely on
it prove the wrapper first (`test_gcs.py`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from http import HTTPStatus
from typing import Iterator, Optional

from gcp_storage_emulator import server as emulator
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

BUCKET = "bulk-test"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_WRITES = (objects.insert, objects.copy, objects.rewrite)


def _target(request) -> tuple[str, Optional[str]]:
    """The bucket and object name a write creates."""
    params = request.params
    if "dest_object_id" in params:
        return params["dest_bucket_name"], params["dest_object_id"]
    if "name" in request.query:
        return params["bucket_name"], request.query["name"][0]
    data = request.data
    meta = data.get("meta") if isinstance(data, dict) else None
    return params["bucket_name"], (meta or {}).get("name")


def _enforce_generation_match(handler):
    def handle(request, response, storage, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        if wanted is not None:
            bucket, name = _target(request)
            try:
                current = storage.get_file_obj(bucket, name)["generation"] if name else "0"
            except NotFound:
                current = "0"
            if str(current) != wanted[0]:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "At least one of the pre-conditions "
                                         "you specified did not hold.", "errors": [{"reason": "conditionNotMet"}]}})
                return None
        return handler(request, response, storage, *args, **kwargs)

    handle.enforces_preconditions = True
    return handle


def _with_preconditions(handlers: tuple) -> tuple:
    return tuple(
        (regex, {method: _enforce_generation_match(h) if h in _WRITES else h for method, h in routes.items()})
        for regex, routes in handlers
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve() -> Iterator[str]:
    """Runs an in-memory emulator with bucket `BUCKET` on a free port; yields its `http://host:port`."""
    original = emulator.HANDLERS
    emulator.HANDLERS = _with_preconditions(original)
    port = free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        emulator.HANDLERS = original


@contextlib.contextmanager
def serve_as_configured() -> Iterator[str]:
    """`serve`, with Beam and google-cloud-storage pointed at it (`STORAGE_EMULATOR_HOST`, anonymous
    credentials) while it runs; the variable is put back as it was after."""
    from transforms.storage import files as gcs

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    before = os.environ.get(gcs.EMULATOR_ENV)
    with serve() as host:
        os.environ[gcs.EMULATOR_ENV] = host
        assert use_anonymous_credentials()
        yield host
    if before is None:
        os.environ.pop(gcs.EMULATOR_ENV, None)
    else:
        os.environ[gcs.EMULATOR_ENV] = before


def use_anonymous_credentials() -> bool:
    """With an emulator configured, makes Beam's GCS access anonymous without its credential search.

    Beam caches its one credential lookup per process; seeding the cache with
    "none" is what it would reach itself after ~22 s of retries. This writes
    into Beam's private state, so it lives here, in the tests, and nowhere else.
    """
    if not os.environ.get(EMULATOR_ENV):
        return False
    from apache_beam.internal.gcp import auth

    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials = None
        auth._Credentials._credentials_init = True
    return True


use_anonymous_credentials()
