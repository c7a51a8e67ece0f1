"""The PostgreSQL source against a real server: outputs and deleted[] equal SQL oracles computed here."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
import psycopg
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from launcher.kickoff.parser import parse_get
from pipelines.export import ExportJob, ExportSettings, build_pipeline
from pipelines.options import LOCAL_RUNNER
from tests.columnar_data import file_of, run_export
from tests.conftest import SHARED_DATA
from tests.pg_resources import (
    create_table,
    deleted_keys,
    exported_bodies,
    insert,
    ndjson_resources,
    query,
    source_url,
)
from transforms.fhir.window import LastUpdatedWindow
from transforms.read.postgres import PgRange, range_query
from transforms.read.pushdown import ReadSelection
from transforms.storage.pg_source import ReadAt, parse_source

BASE = "https://ehr.example.org/fhir"
UTC = dt.timezone.utc
GONE_AT = dt.datetime(2024, 6, 1, tzinfo=UTC)


@pytest.fixture
def table(postgres_dsn, sample_dir) -> str:
    """The sample data as a table, plus two deletions (after 2024) and one before."""
    create_table(postgres_dsn)
    insert(postgres_dsn, ndjson_resources(sample_dir))
    gone = [{"resourceType": "Observation", "id": "gone-1"}, {"resourceType": "Encounter", "id": "gone-2"}]
    insert(postgres_dsn, gone, deleted=True, when=GONE_AT)
    insert(postgres_dsn, [{"resourceType": "Observation", "id": "gone-early"}], deleted=True,
           when=dt.datetime(2019, 1, 1, tzinfo=UTC))
    return postgres_dsn


def _oracle(dsn: str, where: str = "true", params: tuple = ()) -> dict[tuple[str, str], dict]:
    rows = query(dsn, f"SELECT resource_type, id, resource::text FROM resources WHERE NOT deleted AND {where}", params)
    return {(t, i): orjson.loads(text) for t, i, text in rows}


def test_a_system_export_equals_the_sql_oracle(table, tmp_path):
    manifest = run_export(source_url(table), tmp_path / "out", parse_get(f"{BASE}/$export"), chunk_bytes=16 << 10)
    assert exported_bodies(manifest) == _oracle(table)
    assert manifest["error"] == [] and manifest["deleted"] == []  # no _since: deletions are not listed


def test_type_and_since_narrow_outputs_and_deletions_like_the_oracle(table, tmp_path):
    since = "2019-06-01T00:00:00Z"
    manifest = run_export(source_url(table), tmp_path / "out",
                          parse_get(f"{BASE}/$export?_type=Observation,Patient&_since={since}"))
    expected = _oracle(table, "resource_type IN ('Observation', 'Patient') AND last_updated > %s", (since,))
    assert exported_bodies(manifest) == expected and expected
    oracle_gone = query(table, "SELECT resource_type, id FROM resources WHERE deleted AND last_updated > %s"
                               " AND resource_type IN ('Observation', 'Patient')", (since,))
    assert sorted(deleted_keys(manifest)) == sorted(oracle_gone) == [("Observation", "gone-1")]


@pytest.mark.parametrize("until, bounds", [(None, ("2019-01-01", "2030-01-01")),
                                           ("2021-01-01T00:00:00Z", ("2019-01-01", "2021-01-01"))])
def test_type_since_and_until_are_sql_predicates_the_index_serves(table, until, bounds):
    """EXPLAIN shows `_type`, `_since`, `_until` and transactionTime (which `_until` makes redundant) as
    conditions, served by the recommended index."""
    query(table, "CREATE INDEX resources_type_updated ON resources (resource_type, last_updated)")
    query(table, "ANALYZE resources")
    window = LastUpdatedWindow("2030-01-01T00:00:00Z", "2019-01-01T00:00:00Z", until)
    selection = ReadSelection.of(["Observation"], window)
    pg = parse_source(source_url(table))
    sql, params = range_query(pg, PgRange(source_url(table), "Observation", None, None, True, False), selection,
                              None, ReadAt("2030-01-01T00:00:00Z"))
    with psycopg.connect(table, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + sql, params).fetchall())
    assert "resources_type_updated" in plan, plan
    condition = plan[plan.index("Cond:"):]
    assert "resource_type = 'Observation'" in condition and "last_updated" in condition, plan
    assert all(bound in plan for bound in bounds), plan


@pytest.mark.parametrize("kickoff", ["Patient/$export", "Group/grp-00001/$export?_type=Patient,Condition,Group"])
def test_patient_and_group_exports_equal_the_same_export_from_files(table, sample_dir, tmp_path, kickoff):
    request = parse_get(f"{BASE}/{kickoff}")
    from_table = run_export(source_url(table), tmp_path / "pg", request, chunk_bytes=16 << 10)
    from_files = run_export(sample_dir, tmp_path / "files", request)
    assert exported_bodies(from_table) == exported_bodies(from_files) != {}
    assert from_table["error"] == from_files["error"] == []


def test_many_small_ranges_read_every_row_once(table, tmp_path):
    manifest = run_export(source_url(table), tmp_path / "out", parse_get(f"{BASE}/$export"), chunk_bytes=1024)
    assert exported_bodies(manifest) == _oracle(table)


def test_a_history_table_exports_the_latest_version_at_transaction_time(postgres_dsn, tmp_path):
    create_table(postgres_dsn, history=True)
    t = [dt.datetime(2024, 1, d, tzinfo=UTC) for d in range(1, 6)]

    def patient(rid: str, version: str, family: str) -> dict:
        return {"resourceType": "Patient", "id": rid, "meta": {"versionId": version}, "name": [{"family": family}]}

    insert(postgres_dsn, [patient("a", "1", "one")], version="1", when=t[0])
    insert(postgres_dsn, [patient("a", "2", "two")], version="2", when=t[1])
    insert(postgres_dsn, [patient("a", "3", "after")], version="3", when=dt.datetime(2031, 1, 1, tzinfo=UTC))
    insert(postgres_dsn, [patient("b", "1", "b")], version="1", when=t[0])
    insert(postgres_dsn, [{"resourceType": "Patient", "id": "b"}], version="2", deleted=True, when=t[2])
    insert(postgres_dsn, [patient("c", "1", "c")], version="1", when=t[0])  # deleted, then created again
    insert(postgres_dsn, [{"resourceType": "Patient", "id": "c"}], version="2", deleted=True, when=t[1])
    insert(postgres_dsn, [patient("c", "3", "back")], version="3", when=t[3])
    manifest = run_export(source_url(postgres_dsn, history=True), tmp_path / "out",
                          parse_get(f"{BASE}/$export?_since=2023-01-01T00:00:00Z"))
    oracle = query(postgres_dsn, """
        SELECT id, deleted, resource::text FROM (
          SELECT DISTINCT ON (id) * FROM resources WHERE last_updated <= '2030-01-01T00:00:00Z'
          ORDER BY id, last_updated DESC) latest""")
    live = {("Patient", i): orjson.loads(text) for i, gone, text in oracle if not gone}
    assert exported_bodies(manifest) == live
    assert {k: b["name"][0]["family"] for k, b in live.items()} == {("Patient", "a"): "two", ("Patient", "c"): "back"}
    assert deleted_keys(manifest) == [("Patient", i) for i, gone, _ in oracle if gone] == [("Patient", "b")]


def test_bad_rows_go_to_error_naming_the_table_and_key(postgres_dsn, tmp_path):
    create_table(postgres_dsn, resource="text", key=False)
    rows = [("Patient", "ok", '{"resourceType": "Patient", "id": "ok"}'),
            ("Patient", "broken", '{"resourceType": "Patient", "id": "broken", "name": [SECRET'),
            ("Observation", "mismatch", '{"resourceType": "Patient", "id": "mismatch"}'),
            ("Patient", "noid", '{"resourceType": "Patient"}'),
            ("Patient", None, '{"resourceType": "Patient", "name": [{"family": "SECRET"}]}')]
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.cursor().executemany("INSERT INTO resources VALUES (%s, %s, '1', now(), false, %s)", rows)
    manifest = run_export(source_url(postgres_dsn), tmp_path / "out", parse_get(f"{BASE}/$export"))
    assert list(exported_bodies(manifest)) == [("Patient", "ok")]
    [entry] = manifest["error"]
    text = file_of(entry["url"]).read_text()
    where = [orjson.loads(line)["issue"][0]["diagnostics"] for line in text.splitlines()]
    host = parse_source(source_url(postgres_dsn)).display
    assert sorted(where) == sorted([
        f"{host} row resource_type=Patient id=broken: resource column: not valid JSON (unexpected character,"
        " expected a JSON value at column 54); not exported",
        f"{host} row resource_type=Observation id=mismatch: resourceType column disagrees with the resource's"
        " resourceType; not exported",
        f"{host} row resource_type=Patient id=noid: id column disagrees with the resource's id; not exported",
        f"{host} row ctid=(0,5) (resource_type=Patient, an id that is not a FHIR id): has a null resourceType, id"
        " or resource column; not exported",
    ]), where
    assert len(where) == 4 and "SECRET" not in text and "postgres@" not in text


def test_the_cli_exports_a_table_and_no_credential_reaches_options_outputs_logs_or_store(
        table, run_cli, tmp_path, monkeypatch):
    """libpq's PGPASSWORD reaches the connections (the launcher's and the pipeline's), and nothing else."""
    monkeypatch.setenv("PGPASSWORD", "s3cret-pw-4711")
    done = run_cli("export", "--source", source_url(table), "--output", str(tmp_path / "out"),
                   "--kickoff", f"{BASE}/$export?_type=Patient&_since=2019-06-01T00:00:00Z")
    assert done.code == 0, done.err
    manifest = done.manifest()
    assert exported_bodies(manifest) == _oracle(table, "resource_type = 'Patient' AND last_updated > '2019-06-01'")
    assert manifest["deleted"] == []  # the deletions are an Observation and an Encounter
    for path in tmp_path.rglob("*"):  # the store keeps --source as given (no password can be in it)
        if path.is_file():
            assert b"s3cret-pw-4711" not in path.read_bytes(), path
    for path in (tmp_path / "out").rglob("*"):  # outputs, errors, manifest: not even the user
        if path.is_file():
            assert b"postgres@" not in path.read_bytes() and b"options=" not in path.read_bytes(), path
    assert "s3cret" not in done.out + done.err and "postgres@" not in done.out + done.err


def test_jsonb_rows_the_server_cannot_vouch_for_are_parsed_and_reported_in_place(postgres_dsn, tmp_path):
    """Rows whose type and id the server checked are written unparsed; the others (no last_updated, a
    mismatch, not an object) are parsed, and each bad one is located by its key."""
    create_table(postgres_dsn, key=False)
    rows = [("Patient", f"p{i}", '{"resourceType": "Patient", "id": "p%d"}' % i, "2024-01-01") for i in range(6)]
    rows[1] = ("Patient", "p1", '{"resourceType": "Patient", "id": "p1", "meta": {"lastUpdated": "2024-02-01T00:00:00Z"}}',
               None)
    rows[2] = ("Observation", "p2", '{"resourceType": "Patient", "id": "p2"}', "2024-01-01")
    rows[4] = ("Patient", "p4", '["not", "an", "object"]', "2024-01-01")
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.cursor().executemany("INSERT INTO resources VALUES (%s, %s, '1', %s, false, %s)",
                                  [(t, i, when, text) for t, i, text, when in rows])
    manifest = run_export(source_url(postgres_dsn), tmp_path / "out", parse_get(f"{BASE}/$export"), max_lines_per_part=2)
    assert sorted(exported_bodies(manifest)) == [("Patient", f"p{i}") for i in (0, 1, 3, 5)]
    [entry] = manifest["error"]
    where = [orjson.loads(line)["issue"][0]["diagnostics"] for line in file_of(entry["url"]).read_text().splitlines()]
    host = parse_source(source_url(postgres_dsn)).display
    assert sorted(where) == [f"{host} row resource_type=Observation id=p2: resourceType column disagrees with the"
                             " resource's resourceType; not exported",
                             f"{host} row resource_type=Patient id=p4: resource column: not a JSON object; not exported"]


@pytest.mark.parametrize("where", ["postgresql://u:secret@h/db?table=t", "postgresql://u@h/db?table=t&password=secret"])
def test_a_source_url_with_a_password_is_refused_before_a_job_exists(run_cli, tmp_path, where):
    done = run_cli("export", "--source", where, "--output", str(tmp_path / "out"))
    assert done.code == 2 and "PGPASSWORD" in done.err and "secret" not in done.err + done.out, done.err
    assert not (tmp_path / "out").exists()


def test_a_source_without_a_table_is_refused(run_cli, tmp_path):
    done = run_cli("export", "--source", "postgresql://u@h/db", "--output", str(tmp_path / "out"))
    assert done.code == 2 and "table=NAME" in done.err


def test_a_snapshot_that_cannot_be_joined_fails_clearly(table, tmp_path):
    job = ExportJob("job", "2030-01-01T00:00:00Z", ExportSettings(source=source_url(table), output=str(tmp_path)),
                    source_snapshot="00000003-0000001B-1")
    pipeline = TestPipeline(runner=LOCAL_RUNNER)
    build_pipeline(pipeline, parse_get(f"{BASE}/$export"), job)
    with pytest.raises(Exception, match="can no longer be joined"):
        pipeline.run().wait_until_finish()
    assert not Path(job.job_dir, "manifest.json").exists()


def test_synthea_from_a_table_equals_synthea_from_files(postgres_dsn, tmp_path):
    """The real Synthea export (38,483 resources, 8 Groups) read from a table and from its files: the same
    output at every level."""
    folder = SHARED_DATA / "synthea-100"
    if not folder.is_dir():
        pytest.skip(f"shared Synthea data is absent ({SHARED_DATA})")
    create_table(postgres_dsn)
    assert insert(postgres_dsn, ndjson_resources(folder)) == 38_483
    group = query(postgres_dsn, "SELECT id FROM resources WHERE resource_type = 'Group' ORDER BY id LIMIT 1")[0][0]
    for kickoff in ("$export?_type=Patient,Encounter,Group", f"Group/{group}/$export"):
        request = parse_get(f"{BASE}/{kickoff}")
        from_table = run_export(source_url(postgres_dsn), tmp_path / "pg" / str(len(kickoff)), request)
        from_files = run_export(folder, tmp_path / "files" / str(len(kickoff)), request)
        assert exported_bodies(from_table) == exported_bodies(from_files) != {}, kickoff
        assert len(from_table["error"]) == len(from_files["error"]), kickoff


def test_rows_written_after_transaction_time_are_reported_by_table_and_key(postgres_dsn, tmp_path):
    """A row whose `last_updated` (or, without one, `meta.lastUpdated`) is after `transactionTime` is not
    exported but reported, as the file sources do: an `information` notice located by the table's key."""
    create_table(postgres_dsn, key=False)
    future = '{"resourceType": "Patient", "id": "%s", "meta": {"lastUpdated": "2099-01-01T00:00:00Z"}}'
    rows = [("Patient", "now", '{"resourceType": "Patient", "id": "now"}', "2024-01-01"),
            ("Patient", "later", '{"resourceType": "Patient", "id": "later"}', "2099-01-01"),
            ("Patient", "later-body", future % "later-body", None)]
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.cursor().executemany("INSERT INTO resources VALUES (%s, %s, '1', %s, false, %s)",
                                  [(t, i, when, text) for t, i, text, when in rows])
    manifest = run_export(source_url(postgres_dsn), tmp_path / "out", parse_get(f"{BASE}/$export"))
    assert sorted(exported_bodies(manifest)) == [("Patient", "now")]
    issues = [orjson.loads(line)["issue"][0] for entry in manifest["error"]
              for line in file_of(entry["url"]).read_text().splitlines()]
    host = parse_source(source_url(postgres_dsn)).display
    assert sorted((i["severity"], i["diagnostics"]) for i in issues) == [
        ("information", f"{host} row resource_type=Patient id=later-body: meta.lastUpdated: updated after"
                        " transactionTime; not exported"),
        ("information", f"{host} row resource_type=Patient id=later: last_updated column: updated after"
                        " transactionTime; not exported")], issues


def test_source_and_store_credentials_are_refused_and_a_failed_connection_is_one_line(postgres_dsn, run_cli,
                                                                                       tmp_path):
    """`sslpassword=` is a credential like a password: refused in a source or job-store URL before a job
    exists (exit 2). A source that cannot be reached, or that refuses the login, ends `export` in one
    line with exit 4, without a traceback or the user's name."""
    create_table(postgres_dsn)
    for option, url in (("--source", source_url(postgres_dsn) + "&sslpassword=k3y-s3cret"),
                        ("--job-store", postgres_dsn + ("&" if "?" in postgres_dsn else "?") + "sslpassword=k3y-s3cret")):
        args = [option, url] + (["--source", str(tmp_path)] if option == "--job-store" else [])
        done = run_cli("export", *args, "--output", str(tmp_path / "out"))
        assert done.code == 2 and "sslpassword" in done.err and "k3y-s3cret" not in done.err + done.out, done.err
        assert len(done.err.strip().splitlines()) == 1 and not (tmp_path / "out").exists(), done.err
    host_db = postgres_dsn.split("@", 1)[1].split("?")[0]
    for url in (f"postgresql://nobody-4711@{host_db}?table=resources",  # the login is refused: no such role
                "postgresql://nobody-4711@127.0.0.1:1/db?table=resources"):  # nothing listens
        done = run_cli("export", "--source", url, "--output", str(tmp_path / "out"))
        assert done.code == 4 and "cannot connect to the PostgreSQL source" in done.err, done.err
        assert len(done.err.strip().splitlines()) == 1 and "nobody-4711" not in done.err + done.out, done.err
