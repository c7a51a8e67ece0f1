"""Beam-free storage: where files live and what they are called.

Local and GCS paths, the job folder's layout, manifest URLs, source formats and
listing, a PostgreSQL source's URL, and the patients file. The launcher may
import this room; it imports only `transforms.fhir` and `transforms.records`,
and Beam only inside a function, when a remote path or a glob needs it.
"""
