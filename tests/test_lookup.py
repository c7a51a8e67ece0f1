"""The kickoff-time scan for Patient ids and Groups, over every kind of source file."""

from __future__ import annotations

import gzip
import json

from transforms.read.lookup import index_source


def test_finds_patients_and_groups_in_ndjson_gzip_and_bundles(tmp_path):
    contained = {"resourceType": "Observation", "id": "o", "contained": [{"resourceType": "Patient", "id": "inner"}]}
    lines = [
        {"resourceType": "Patient", "id": "p1"},
        {"resourceType": "Group", "id": "g1", "member": []},
        contained,  # a contained Patient is not a source Patient
        {"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/p9", "type": "Patient"}},
    ]
    (tmp_path / "a.ndjson").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(json.dumps(r).encode() for r in lines) + b"\r\n")
    with gzip.open(tmp_path / "b.ndjson.gz", "wt") as f:
        f.write(json.dumps({"id": "p2", "resourceType": "Patient"}) + "\nnot json with \"Patient\"\n")
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": {"resourceType": "Patient", "id": "p3"}},
                        {"resource": {"resourceType": "Group", "id": "g2"}}]}
    (tmp_path / "c.json").write_text(json.dumps(bundle))
    index = index_source(str(tmp_path))
    assert index.patient_ids == {"p1", "p2", "p3"}
    assert set(index.groups) == {"g1", "g2"}
