#!/usr/bin/env python
"""Benchmark: how long `bulk-export` commands take from the shell, start-up and imports included.

    python benchmarks/bench_startup.py [--repeat 5]

Times, from spawn to exit, `python -c pass` (the floor), `bulk-export --help`,
`status JOB` and `list --all` against a small store (one job), the export of a
one-resource source, and the export of the bundled sample (`make export`:
`sample-data/`, 677 resources). Both exports are timed twice, in turns: as a fresh
shell runs them, and with a warm process running (`bulk-export warm`, started
first; each kind has its own XDG_RUNTIME_DIR, so the first never finds it). Each
command runs `--repeat` times; the best and the median are printed beside the
target (issue 19's for the control commands, issue 28's for the exports). See
README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_common import bulk_export_command, machine, print_table, run_process  # noqa: E402

SAMPLE = ROOT / "sample-data"
CONTROL_TARGET_S, ONE_RESOURCE_TARGET_S, EXPORT_TARGET_S = 0.3, 1.0, 1.2
ONE_RESOURCE = b'{"resourceType":"Patient","id":"p1","meta":{"lastUpdated":"2022-01-01T00:00:00Z"}}\n'


def _run(cmd: list[str], env: dict) -> dict:
    done = run_process(cmd, sample_memory=False, cwd=ROOT, env=env)
    if done["code"] != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit code {done['code']}:\n{done['output'][-3000:]}")
    return done


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command; the best is compared with the target")
    args = parser.parse_args(argv)
    cli = bulk_export_command()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        cold, warm = ({**os.environ, "XDG_RUNTIME_DIR": f"{tmp}/{kind}"} for kind in ("cold", "warm"))
        for env in (cold, warm):
            os.mkdir(env["XDG_RUNTIME_DIR"], 0o700)
        state = ["--state-dir", f"{tmp}/state"]
        first = _run([*cli, "export", "--source", str(SAMPLE), "--output", f"{tmp}/exports", *state], cold)["output"]
        job = re.search(r"job (\S+) complete", first).group(1)  # the store's one job, for `status`
        one = Path(tmp, "one-resource")
        one.mkdir()
        (one / "Patient.ndjson").write_bytes(ONE_RESOURCE)
        exports = iter(range(10 * max(1, args.repeat)))
        one_export = lambda: [*cli, "export", "--source", str(one), "--output", f"{tmp}/out{next(exports)}", *state]
        sample_export = lambda: [*cli, "export", "--source", "sample-data", "--output", f"{tmp}/out{next(exports)}",
                                 *state]
        cases = [  # (what is shown, command, environment, target seconds); the warm rows after their cold ones
            ("python -c pass", lambda: [sys.executable, "-c", "pass"], cold, None),
            ("bulk-export --help", lambda: [*cli, "--help"], cold, CONTROL_TARGET_S),
            ("bulk-export status JOB", lambda: [*cli, "status", job, *state], cold, CONTROL_TARGET_S),
            ("bulk-export list --all", lambda: [*cli, "list", "--all", *state], cold, CONTROL_TARGET_S),
            ("bulk-export export (one resource)", one_export, cold, ONE_RESOURCE_TARGET_S),
            ("  the same, warm process running", one_export, warm, ONE_RESOURCE_TARGET_S),
            ("bulk-export export --source sample-data", sample_export, cold, EXPORT_TARGET_S),
            ("  the same, warm process running", sample_export, warm, EXPORT_TARGET_S),
        ]
        _run([*cli, "warm", "--idle", "10m"], warm)
        try:
            if "forked from the warm process" not in _run([*sample_export(), "-v"], warm)["output"]:
                sys.exit("the exports timed as warm would not use the warm process")
            seconds: dict[int, list[float]] = {i: [] for i in range(len(cases))}
            for _ in range(max(1, args.repeat)):  # in turns, so that the machine's moment is shared
                for i, (_, command, env, _) in enumerate(cases):
                    seconds[i].append(_run(command(), env)["process_seconds"])
        finally:
            _run([*cli, "warm", "--stop"], warm)
        rows = [("command", "best s", "median s", "target", "met")]
        for i, (label, _, _, target) in enumerate(cases):
            best = min(seconds[i])
            met = "" if target is None else ("yes" if best <= target else "NO")
            rows.append((label, f"{best:.2f}", f"{statistics.median(seconds[i]):.2f}",
                         "" if target is None else f"<= {target:.1f} s", met))
    print_table(rows)
    print(f"seconds: wall time from spawn to exit, best of {max(1, args.repeat)}; {' '.join(cli)} is bulk-export")
    print(machine())


if __name__ == "__main__":
    main()
