"""Bulk Publish (Bulk Data IG STU4 ballot): a dataset published as static manifest chains.

`pages` is the manifest-chain model (pages, `next` links, `#pending`/`#closed`),
`folder` a publication's files on disk and their atomic replacement, `runs` one
`bulk-export publish` run (snapshot or incremental, under the publication's
lock), `cleanup` the grace-period sweep, `consumer` the reference consumer
(`bulk-export pull`). Free of Beam and FastAPI; a run imports the job runner
(and so Beam) only when it exports. May import `launcher.core`,
`launcher.jobs`, `launcher.kickoff`, `launcher.stores`, `pipelines` and the
launcher's share of `transforms`. See docs/publish.md.
"""
