"""Per-batch steps between reading and writing: compartment and Group, `_typeFilter`, referenced resources, `_elements`."""
