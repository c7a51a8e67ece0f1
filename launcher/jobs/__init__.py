"""The job lifecycle: start a job, run and watch its pipeline, cancel, delete, expire, resume, schedule.

Shared by the CLI, `serve` and the Flex Template (`submit`). May import
`launcher.core`, `launcher.kickoff`, `launcher.stores`, `pipelines`, and of
`transforms` only `fhir/`, `storage/` and the kick-off scan.
"""
