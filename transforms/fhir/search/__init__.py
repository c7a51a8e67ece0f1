"""FHIR R4 search semantics for `_typeFilter`, compiled from the official SearchParameters.

`compiler.compile_type_filters` turns `Type?query` strings into a picklable
`TypeFilters`; the other modules hold one concern each: the parameter registry,
query parsing, FHIRPath extraction, and a matcher module per parameter type.
"""
