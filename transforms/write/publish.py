"""allowPartialManifests: a part made final, and listed, the moment its writer closes it.

A published part is renamed out of the attempt's temporary folder to a final
name of its own, `<Type>-<id>.ndjson` (`by-Patient-<id>.ndjson`), which the
manifest assembly then keeps: a file a partial manifest lists is never renamed
or removed by the export. Its entry goes to the job sink (`JobSink.publish`),
from which the status endpoint serves the pages. Only an attempt that still owns
the job publishes; one that lost it removes its part instead (the fence).
"""

from __future__ import annotations

import posixpath

from apache_beam.io.filesystems import FileSystems

from transforms.records import PartFile
from transforms.steps.fence import StaleAttempt
from transforms.storage.files import move
from transforms.storage.urls import ManifestUrls

OUTPUT = "output"


class Publisher:
    """Publishes closed parts into `job_dir` and lists them through `sink`; picklable."""

    def __init__(self, job_dir: str, output_root: str, urls: ManifestUrls, sink, typed: bool = True):
        self._job_dir, self._output_root, self._urls, self._sink = job_dir, output_root, urls, sink
        self._typed = typed  # False for files of blocks, whose entries name no type
        self._namer = None

    def __call__(self, part: PartFile) -> PartFile:
        """The part under its final name, listed; raises `StaleAttempt` when the job is another attempt's."""
        if self._namer is None:
            self._namer = self._urls.namer(self._output_root)
        final = published_name(self._job_dir, part.temp_path)
        if FileSystems.exists(part.temp_path):
            move([part.temp_path], [final], self._output_root)
        listed = self._sink.publish(OUTPUT, part.type if self._typed else None, self._namer(final), part.count)
        if not listed:
            FileSystems.delete([final])
            raise StaleAttempt("this attempt no longer runs the job: its part is not published")
        return part._replace(temp_path=final)


def published_name(job_dir: str, temp_path: str) -> str:
    """`<job_dir>/<Type>-<id><ext>` for a temporary part `<Type>.<id><ext>`."""
    name = posixpath.basename(temp_path)
    resource_type, rest = name.split(".", 1)
    part_id, extension = rest.split(".", 1)
    return FileSystems.join(job_dir, f"{resource_type}-{part_id[:16]}.{extension}")
