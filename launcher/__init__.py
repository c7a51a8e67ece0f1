"""The control plane: kickoff parsing, job stores, lifecycle and the `bulk-export` CLI."""
