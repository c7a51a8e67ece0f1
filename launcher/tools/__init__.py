"""Tools for users that are not the control plane: the deterministic sample-data generator.

Imports nothing of the launcher, pipelines or transforms.
"""
