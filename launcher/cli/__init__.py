"""The `bulk-export` command line: the argument parser, one handler per command, the progress display.

`main.main` is the console script; it maps every error to its exit code in one
place. May import every other room of the launcher; no other room imports it.
"""
