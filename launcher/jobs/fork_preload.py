"""The fork server's first preload (`fork_server.start_fork_server`): `before_beam_import`, before Beam.

The fork server imports the modules it is told to preload and nothing else, so
this module is its entry point: importing it is its whole purpose.
"""

from launcher.core.beam_notice import before_beam_import

before_beam_import()
