"""The fork server's first preload (`fork_server.start_fork_server`): what it does around Beam's import.

The fork server imports the modules it is told to preload and nothing else, so
this module is its entry point. Beam is imported here without its GCS client
(`defer_gcs`), and `GcsOnDemand` stands in for Beam's GCS filesystem until a
run looks up a gs:// path; each run forked from here allows the client's import
again (`launcher.jobs.process`), so a Dataflow submission imports it as usual.
"""

import sys
from types import ModuleType

from launcher.core.beam_notice import allow_gcs, before_beam_import, defer_gcs

before_beam_import()
defer_gcs()

from apache_beam.io.filesystem import FileSystem  # noqa: E402  (imports Beam)

_GCS_FILESYSTEM = "apache_beam.io.gcp.gcsfilesystem"


class GcsOnDemand(FileSystem):
    """The gs:// scheme until Beam's GCS filesystem is imported: constructing one imports that
    filesystem and returns one of it, so Beam's look-up of a gs:// path gets the real filesystem."""

    @classmethod
    def scheme(cls) -> str:
        # Once the real one is imported, a scheme no path has: gs:// must find one filesystem only.
        return "gs (loaded)" if isinstance(sys.modules.get(_GCS_FILESYSTEM), ModuleType) else "gs"

    def __new__(cls, pipeline_options=None):
        allow_gcs()
        from apache_beam.io.gcp.gcsfilesystem import GCSFileSystem

        return GCSFileSystem(pipeline_options=pipeline_options)
