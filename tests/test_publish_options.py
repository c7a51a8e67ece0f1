"""`bulk-export publish` options: `--snapshot-after SIZE` and `--config FILE` (keys = the flags; flags win)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import orjson
import pytest

from launcher.cli import main as cli
from launcher.publish.folder import ROOT_NAME, PublicationFolder, publication_dir
from tests.test_publish import NAME, Source, _held, _pull


def _refused(*argv: str) -> str:
    """A usage error's stderr: the command line exits 2 before anything runs."""
    err = io.StringIO()
    with pytest.raises(SystemExit) as exited, contextlib.redirect_stderr(err):
        cli.main(["publish", *argv])
    assert exited.value.code == 2, err.getvalue()
    return err.getvalue()


def _chain(folder: Path) -> list[dict]:
    return [body for _, body in PublicationFolder(str(folder)).chain()]


def test_snapshot_after_a_size_of_update_files_starts_a_new_chain(tmp_path, run_cli):
    source, out = Source(tmp_path / "src"), tmp_path / "out"
    folder = Path(publication_dir(str(out), "default", NAME))

    def publish(size: str):
        return run_cli("publish", NAME, "--source", str(source.folder), "--output", str(out), "--snapshot-after", size)

    for rid in ("p1", "p2"):
        source.put("Patient", rid, 1)
    source.save()
    assert publish("1kB").out.startswith("snapshot ")
    source.put("Patient", "p3", 1)
    source.save()
    assert publish("1kB").out.startswith("update ")  # no update files yet: nothing to exceed
    update_files = [orjson.loads(p.read_bytes()) for p in (folder / "manifests").glob("*-1.json")]
    [listed] = [entry["url"] for body in update_files for entry in body["output"]]
    size = Path(listed.removeprefix("file://")).stat().st_size
    source.put("Patient", "p4", 1)
    source.save()
    assert publish(f"{size + 1}B").out.startswith("update ")  # the updates' files: `size` bytes, not over
    source.put("Patient", "p5", 1)
    source.save()
    last = publish(f"{2 * size - 1}B")  # now two update files of `size` bytes each: over
    assert last.code == 0 and last.out.startswith("snapshot ") and "previous chain closed" in last.out, last.out
    assert len({body["transactionTime"] for body in _chain(folder)}) == 1  # one snapshot, no updates
    code, err = _pull(str(folder), tmp_path / "into")
    assert code == 0 and _held(tmp_path / "into") == source.current(), err

    assert "--snapshot-after 'lots' must be a positive size" in _refused(NAME, "--source", "s", "--snapshot-after",
                                                                          "lots")


def test_a_config_file_sets_the_options_and_flags_override_it(tmp_path, run_cli):
    source, out = Source(tmp_path / "src"), tmp_path / "out"
    folder = Path(publication_dir(str(out), "default", NAME))
    config = tmp_path / "publish.json"
    config.write_text(json.dumps({"source": str(source.folder), "output": str(out), "update-cadence": "PT1H",
                                  "snapshot-every": 2, "kickoff": "http://x/fhir/$export?_type=Patient",
                                  "requires-access-token": True, "lock-wait": "2s"}))
    source.put("Patient", "p1", 1)
    source.put("Observation", "o1", 1)  # not of the configured _type
    source.save()
    first = run_cli("publish", NAME, "--config", str(config))
    assert first.code == 0 and first.out.startswith("snapshot "), first.err
    root = orjson.loads((folder / ROOT_NAME).read_bytes())
    assert root["updateCadence"] == "PT1H" and root["requiresAccessToken"] is True
    assert {entry["type"] for entry in root["output"]} == {"Patient"}

    source.put("Patient", "p2", 1)
    source.save()
    second = run_cli("publish", NAME, f"--config={config}", "--update-cadence", "PT2H")
    assert second.code == 0 and second.out.startswith("update "), second.err
    assert _chain(folder)[-1]["updateCadence"] == "PT2H"  # the flag wins over the file


def test_a_config_file_with_an_unknown_key_or_a_bad_value_is_refused(tmp_path):
    config = tmp_path / "publish.json"
    for content, message in (
        ({"source": "s", "snapshot-evry": 3}, "unknown key 'snapshot-evry'; did you mean 'snapshot-every'?"),
        ({"source": "s", "snapshot": "yes"}, "'snapshot' is a switch: true or false"),
        ({"source": "s", "grace": ["1h"]}, "'grace' takes a string or a number"),
        (["source", "s"], "not a JSON object of options"),
    ):
        config.write_text(json.dumps(content))
        assert message in _refused(NAME, "--config", str(config))
    assert "not a readable JSON file" in _refused(NAME, "--config", str(tmp_path / "none.json"))
    assert not (tmp_path / "out").exists()  # nothing was run
