"""What Beam runs as a worker process: hands its worker settings to a warm forked worker and waits.

Run as `python -S -I _worker_client.py SOCKET FALLBACK` by `LocalRunner`
(stdlib only, so it starts in milliseconds). Beam treats this process as the
worker: it exits with the forked worker's status, and killing it ends that
worker. When no warm worker answers, it becomes Beam's own worker command.
"""

import json
import os
import shlex
import socket
import struct
import sys

# What Beam passes a worker process; the forked worker takes the same from its client.
WORKER_ENV = ("CONTROL_API_SERVICE_DESCRIPTOR", "LOGGING_API_SERVICE_DESCRIPTOR", "PIPELINE_OPTIONS", "WORKER_ID")
ANSWER_WITHIN_S = 5.0


def main(address: str, fallback: str) -> int:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(address)
        conn.settimeout(ANSWER_WITHIN_S)
        answered = conn.recv(1) == b"A"
    except OSError:
        answered = False
    if not answered:
        conn.close()
        argv = shlex.split(fallback)
        os.execv(argv[0], argv)
    conn.settimeout(None)
    env = json.dumps({k: os.environ[k] for k in WORKER_ENV if k in os.environ}).encode()
    conn.sendall(struct.pack(">I", len(env)) + env)
    status = conn.recv(1)
    return 0 if status == b"0" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
