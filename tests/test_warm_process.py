"""`bulk-export warm`: exports forked from a warm process write what exports without it write; a warm
process of another key, a dead one, or one in a folder others may enter is not used; it stops when idle
or asked to. Real processes: the warm process, its fork server, and the commands, all started as a
user starts them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WARM_LINE = "runs in a process forked from the warm process"


@pytest.fixture
def home() -> Path:
    """A fresh XDG_RUNTIME_DIR (`run`, 0700), in the working folder every command of a test runs in (part of
    the key); short, as a socket's path must be."""
    folder = Path(tempfile.mkdtemp(prefix="bx", dir="/tmp"))
    (folder / "run").mkdir(mode=0o700)
    yield folder
    _cli(folder, {}, "warm", "--stop")  # never leave a warm process behind
    shutil.rmtree(folder, ignore_errors=True)


def _env(home: Path, extra: dict) -> dict:
    python_path = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)
    return {**os.environ, "PYTHONPATH": python_path, "XDG_RUNTIME_DIR": str(home / "run"), **extra}


def _cli(home: Path, extra: dict, *args: str, umask: int = 0o022) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=home, env=_env(home, extra),
                          capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(umask))


def _export(home: Path, source: Path, name: str, extra: dict | None = None, umask: int = 0o022):
    out = home / name
    result = _cli(home, extra or {}, "export", "--source", str(source), "--output", str(out),
                  "--state-dir", str(out / ".state"), "--kickoff", "https://x/fhir/$export?_type=Patient,Observation",
                  "-v", umask=umask)
    assert result.returncode == 0, result.stderr
    return result, out


def _parts(out: Path) -> dict[str, tuple[bytes, int]]:
    """Each written part's bytes and mode, by its path below the job's folder."""
    job = next(p for p in (out / "default").iterdir() if p.is_dir())
    return {str(p.relative_to(job)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(job.rglob("*.ndjson"))}


def _keeper_pid(home: Path) -> int:
    status = _cli(home, {}, "warm", "--status")
    assert status.returncode == 0, status.stdout + status.stderr
    return int(status.stdout.split()[2])


def test_an_export_forked_from_the_warm_process_writes_what_one_without_it_writes(home, sample_dir):
    started = _cli(home, {}, "warm", "--idle", "5m")
    assert started.returncode == 0 and "ready" in started.stdout, started.stderr
    again = _cli(home, {}, "warm")
    assert again.returncode == 0 and "already runs" in again.stdout

    warm, warm_out = _export(home, sample_dir, "warm", umask=0o027)
    assert WARM_LINE in warm.stderr
    # The run's own log (its process's stderr is the command's) reaches the command's stderr.
    assert "  complete: " in warm.stderr and "Observation" in warm.stderr

    stopped = _cli(home, {}, "warm", "--stop")
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped the warm process")
    assert _cli(home, {}, "warm", "--status").returncode == 1
    cold, cold_out = _export(home, sample_dir, "cold", umask=0o027)
    assert WARM_LINE not in cold.stderr

    parts = _parts(warm_out)
    assert parts and parts == _parts(cold_out)
    assert {mode for _, mode in parts.values()} == {0o640}  # the command's umask, not the warm process's


def test_another_environment_or_a_dead_warm_process_is_not_used_and_changes_nothing(home, sample_dir):
    assert _cli(home, {}, "warm", "--idle", "5m").returncode == 0
    other, other_out = _export(home, sample_dir, "other-env", {"BULK_EXPORT_SOMETHING": "1"})
    assert WARM_LINE not in other.stderr

    os.kill(_keeper_pid(home), signal.SIGKILL)  # its fork server sees the keeper gone, and exits
    dead, dead_out = _export(home, sample_dir, "dead")
    assert WARM_LINE not in dead.stderr
    assert _parts(dead_out) == _parts(other_out)
    assert _cli(home, {}, "warm", "--status").returncode == 1


def test_a_warm_process_stops_once_idle(home, sample_dir):
    started = _cli(home, {}, "warm", "--idle", "2s")
    assert started.returncode == 0 and started.stdout.startswith("warm process "), started.stderr
    pid = int(started.stdout.split()[2])  # from its own line: under load, a later command may come too late
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid)
    assert not list((home / "run" / "bulk-export").glob("*.sock"))
    assert _cli(home, {}, "warm", "--status").returncode == 1


def test_a_folder_others_may_enter_is_refused_and_exports_go_on_without_it(home, sample_dir):
    folder = home / "run" / "bulk-export"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    refused = _cli(home, {}, "warm")
    assert refused.returncode == 4
    assert refused.stderr.strip() == f"bulk-export: {folder} is not a folder of this user's alone (mode 0700):" \
        " no warm process is used"
    result, _ = _export(home, sample_dir, "out")
    assert WARM_LINE not in result.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat_file:
        return stat_file.read().split(")")[-1].split()[0] != "Z"


def test_stop_lets_a_running_export_end_first(home):
    source = home / "source"
    assert _cli(home, {}, "sample-data", "--patients", "600", "--out", str(source)).returncode == 0
    assert _cli(home, {}, "warm", "--idle", "5m").returncode == 0
    out = home / "out"
    export = subprocess.Popen([sys.executable, "-m", "launcher", "export", "--source", str(source), "--output",
                               str(out), "--state-dir", str(out / ".state"), "-v"],
                              cwd=home, env=_env(home, {}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    while WARM_LINE not in seen:  # the run has been forked from the warm process
        line = export.stderr.readline()
        assert line, seen
        seen += line
    stopped = _cli(home, {}, "warm", "--stop")
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped")
    assert export.wait(timeout=1) == 0  # the warm process stopped once the command using it had ended
    rest, err = export.communicate(timeout=300)
    assert export.returncode == 0, seen + err
    manifest = json.loads(Path(next(line.removeprefix("manifest: ") for line in rest.splitlines()
                                    if line.startswith("manifest: "))).read_text())
    assert sum(item["count"] for item in manifest["output"]) == sum(
        len((source / name).read_text().splitlines()) for name in os.listdir(source))


def test_a_folder_too_long_for_a_socket_is_refused_in_one_line(home):
    deep = home / "run" / ("d" * 90)
    deep.mkdir(mode=0o700)
    refused = _cli(home, {"XDG_RUNTIME_DIR": str(deep)}, "warm")
    assert refused.returncode == 4
    assert refused.stderr.strip() == f"bulk-export: {deep}/bulk-export is too long a folder for a socket:" \
        " set XDG_RUNTIME_DIR to a shorter one"


def test_the_key_changes_with_the_code_and_the_environment_but_not_with_the_shells_folder(tmp_path, monkeypatch):
    from launcher.jobs import warm

    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "data.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(warm, "OUR_PACKAGES", ("fakepkg",))
    first = warm.key()
    monkeypatch.setenv("PWD", "/elsewhere")  # the shell's own bookkeeping
    monkeypatch.setenv("OLDPWD", "/before")
    assert warm.key() == first
    os.utime(package / "data.json", ns=(1, 1))  # a definition file rewritten
    assert warm.key() != first
    second = warm.key()
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/other/key.json")  # another setting, another key
    assert warm.key() != second
