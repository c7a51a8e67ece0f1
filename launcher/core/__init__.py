"""What every room of the launcher shares: safe names, durations, the audit log.

Imports nothing else of the launcher.
"""
