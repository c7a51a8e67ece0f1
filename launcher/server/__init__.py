"""The Bulk Data HTTP face: `bulk-export serve`, a FHIR `$export` server in front of the engine.

Thin FastAPI handlers over the functions the CLI calls: the kickoff parser,
the job stores, the job runner and the lifecycle. See docs/server.md.
"""
