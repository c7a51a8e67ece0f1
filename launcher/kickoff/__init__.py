"""Kick-off: a `$export` URL or `Parameters` body into a validated `ExportRequest`, and the patients it covers.

Every refusal happens here, before any job exists. May import `launcher.core`,
`pipelines.models`, `pipelines.plan` (Beam-free: it compiles `_typeFilter`),
`transforms.fhir`, `transforms.storage` and the kick-off scan (`transforms.read.lookup`).
"""
