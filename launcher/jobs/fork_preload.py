"""The fork server's first preload (`process.start_fork_server`): the log filter, before Beam.

The fork server imports the modules it is told to preload and nothing else, so
this module is its entry point: importing it is its whole purpose.
"""

from launcher.core.beam_notice import drop_apitools_notice

drop_apitools_notice()
