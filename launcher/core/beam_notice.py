"""What each entry point does before Beam is imported: keep its import-time notices out of the
launcher's output, and keep it from importing MongoDB's client, which no export uses."""

import logging
import sys

_GCSIO = "apache_beam.io.gcp.gcsio"  # imported by `apache_beam.io` and its GCS filesystem, each in try/except
_MONGODB_IO = "apache_beam.io.mongodbio"  # imports bson and pymongo inside try/except ImportError
_JOB_SERVICE = "apache_beam.runners.portability.local_job_service"  # relays the local workers' log lines


class _DropApitoolsNotice(logging.Filter):
    """Beam 2.77 warns at import that BigQuery's apitools is absent; we never use BigQuery."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


class _DropSemiPersistentNotice(logging.Filter):
    """Each local worker warns at start that it has no `semi_persistent_directory` (where a remote
    worker finds the main session's pickled registrations); the run registers none, and the warning,
    relayed by Beam's job service, would show once per worker under -v."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No semi_persistent_directory found" not in record.getMessage()


class _DropMongoNotice(logging.Filter):
    """Beam's MongoDB I/O warns at import when it goes without bson, as `skip_mongodb_client` has it do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Could not find a compatible bson package")


def drop_apitools_notice() -> None:
    """Keeps Beam's import-time apitools notice off the root logger (once per process); each entry
    point calls it before Beam is imported."""
    root = logging.getLogger()
    if not any(isinstance(f, _DropApitoolsNotice) for f in root.filters):
        root.addFilter(_DropApitoolsNotice())


def skip_mongodb_client() -> None:
    """Has Beam's import go without bson and pymongo (about 7% of importing Beam, measured in
    benchmarks/README.md "Fixed cost (issue 28)"): `apache_beam.io` imports its MongoDB I/O, which
    catches the ImportError and leaves MongoDB out. Does nothing once either is imported."""
    if not {"bson", "pymongo"} & sys.modules.keys():
        sys.modules["bson"] = sys.modules["pymongo"] = None  # an import of either raises ImportError
    mongo = logging.getLogger(_MONGODB_IO)
    if not any(isinstance(f, _DropMongoNotice) for f in mongo.filters):
        mongo.addFilter(_DropMongoNotice())


def defer_gcs() -> None:
    """Has Beam's import go without its GCS client (google-cloud-storage and its auth: 0.2 s of the fork
    server's preload): `apache_beam.io` and its filesystems catch the ImportError. For the fork server
    only, whose `launcher.jobs.fork_preload.GcsOnDemand` stands in for it; each run calls `allow_gcs`."""
    if _GCSIO not in sys.modules:
        sys.modules[_GCSIO] = None


def allow_gcs() -> None:
    """Undoes `defer_gcs`: a later import of Beam's GCS client (a gs:// path, a Dataflow submission) loads it."""
    if _GCSIO in sys.modules and sys.modules[_GCSIO] is None:
        del sys.modules[_GCSIO]


def drop_semi_persistent_notice() -> None:
    """Keeps the local workers' `semi_persistent_directory` warning off Beam's job service logger."""
    relay = logging.getLogger(_JOB_SERVICE)
    if not any(isinstance(f, _DropSemiPersistentNotice) for f in relay.filters):
        relay.addFilter(_DropSemiPersistentNotice())


def before_beam_import() -> None:
    """What an entry point calls before anything imports Beam."""
    drop_apitools_notice()
    drop_semi_persistent_notice()
    skip_mongodb_client()
