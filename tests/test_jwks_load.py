"""A registered client's `jwks_url` that hangs cannot starve the server, over real HTTP and a real server.

Fifty concurrent assertions name that client with unknown `kid`s, again and
again, while another client polls its job's status: the polls stay fast, the
assertions are refused (one fetch in flight, its failure remembered), and the
hanging URL is asked at most twice. Everything is on loopback addresses and
the test ends by itself within about 20 s.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import threading
import time
import uuid
from typing import Iterator

import httpx

from tests.server_process import FHIR_HEADERS, poll, serve
from tests.smart_client import TENANT, ClientKey, assertion, get_token, register, token_form, write_jwks

ATTACKERS = 50
WINDOW_S = 7.0  # longer than one fetch's 5 s timeout
POLL_EVERY_S = 0.02
ATTACK_EVERY_S = 2.0  # each attacker, after its answer: 50 at once, then about 25 a second
POLL_TIMEOUT_S = 2.0  # a poll that takes longer counts as this long
P99_LIMIT_S = 0.2  # above the p99 of the same polls without the attack (on a loaded machine that is not 0)
QUIET_S = 3.0


class Hanging:
    """A loopback HTTP 'server' that accepts connections and never answers; it counts them."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/jwks.json"
        self.held: list[socket.socket] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(socket.timeout, OSError):
                self.held.append(self.listener.accept()[0])


@contextlib.contextmanager
def hanging_jwks_url() -> Iterator[Hanging]:
    hanging = Hanging()
    thread = threading.Thread(target=hanging.run, daemon=True)
    thread.start()
    try:
        yield hanging
    finally:
        hanging.stopped.set()
        thread.join(5)
        for conn in [*hanging.held, hanging.listener]:
            conn.close()


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _polls(client: httpx.Client, status_url: str, seconds: float) -> list[float]:
    """The latencies of status polls sent one after another for `seconds` (a timeout counts as its limit)."""
    latencies: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            assert client.get(status_url).status_code == 200
            latencies.append(time.monotonic() - start)
        except httpx.TimeoutException:
            latencies.append(POLL_TIMEOUT_S)
        time.sleep(POLL_EVERY_S)
    return latencies


def _attack(fhir: str, token_url: str, started, results) -> None:
    """In a process of its own (so its threads do not slow the polls being measured): `ATTACKERS` threads
    post assertions naming the slow client with unknown kids, all at once and then each every
    `ATTACK_EVERY_S`, for `WINDOW_S`; the answers' status codes go to `results`."""
    key, stop, answers = ClientKey("ES384"), threading.Event(), []  # unknown kids: the key is never checked
    barrier = threading.Barrier(ATTACKERS + 1)

    def attacker() -> None:
        signed_ahead = [assertion(key, "slow", token_url, headers={"kid": uuid.uuid4().hex})
                        for _ in range(int(WINDOW_S / ATTACK_EVERY_S) + 2)]
        with httpx.Client(timeout=8) as client:
            client.get(fhir + "/metadata")  # connected before the burst
            barrier.wait()
            while not stop.is_set() and signed_ahead:
                with contextlib.suppress(httpx.TimeoutException):
                    answers.append(client.post(token_url, data=token_form(signed_ahead.pop())).status_code)
                stop.wait(ATTACK_EVERY_S)

    threads = [threading.Thread(target=attacker) for _ in range(ATTACKERS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started.set()
    stop.wait(WINDOW_S)
    stop.set()
    for thread in threads:
        thread.join()
    results.put(answers)


def test_a_hanging_jwks_url_does_not_starve_status_polls(tmp_path, sample_dir):
    state = tmp_path / "state"
    poller_key = ClientKey("ES384")
    register(state, "poller", "--jwks", write_jwks(tmp_path, poller_key), "--tenant", TENANT)
    with hanging_jwks_url() as hanging:
        register(state, "slow", "--jwks-url", hanging.url, "--tenant", TENANT)
        with serve(sample_dir, tmp_path / "out", state) as server:
            token_url = server.base_url + "/auth/token"
            with httpx.Client(timeout=30) as plain:
                token = get_token(plain, token_url, poller_key, "poller")
            with httpx.Client(timeout=POLL_TIMEOUT_S, headers={"Authorization": f"Bearer {token}"}) as client:
                kicked = client.get(server.fhir + "/$export?_type=Patient", headers=FHIR_HEADERS, timeout=30)
                assert kicked.status_code == 202, kicked.text
                status_url = kicked.headers["Content-Location"]
                assert poll(client, status_url).status_code == 200
                quiet = _p99(_polls(client, status_url, QUIET_S))  # this machine's own noise, without the attack

                spawn = multiprocessing.get_context("spawn")
                started, results = spawn.Event(), spawn.Queue()
                attack = spawn.Process(target=_attack, args=(server.fhir, token_url, started, results), daemon=True)
                attack.start()
                try:
                    assert started.wait(60), "the attackers did not start"
                    latencies = _polls(client, status_url, WINDOW_S)
                    answers = results.get(timeout=30)
                finally:
                    attack.join(30)
                    if attack.is_alive():
                        attack.kill()
    p99 = _p99(latencies)
    assert p99 < P99_LIMIT_S + quiet, \
        f"status p99 {p99:.3f} s under attack ({quiet:.3f} s without), max {max(latencies):.3f} s"
    assert len(latencies) > 50
    assert len(answers) >= ATTACKERS and set(answers) == {401}
    assert len(hanging.held) <= 2  # one fetch at a time, and its failure remembered
