"""What the per-batch steps share, so that `select/` and `write/` never import each other.

The shape of a step with dead letters (`resource_step`), the fence and progress
sink every writer checks (`fence`), grouping records by key through run files on
disk (`spill`), and the `ResourceBatch` coder (`coders`). May import `fhir/`,
`storage/` and `records`; never `read/`, `select/` or `write/`.
"""
