"""Writes ``templates/metadata.json``, the Dataflow Flex Template's parameters, from the declared pipeline options.

Usage::

    python scripts/template_metadata.py            # (re)write templates/metadata.json
    python scripts/template_metadata.py --check    # exit 1 if the committed file is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from pipelines.options import PIPELINE_OPTIONS

PATH = REPO / "templates" / "metadata.json"
NAME = "FHIR Bulk Data $export"
DESCRIPTION = (
    "Exports FHIR R4 resources from NDJSON, Bundle, Avro or Parquet files as Bulk Data NDJSON (or Parquet) parts "
    "and a manifest, following the Bulk Data Access IG v3."
)


def metadata() -> dict[str, Any]:
    """The template's metadata: one parameter per pipeline option."""
    return {"name": NAME, "description": DESCRIPTION,
            "parameters": [spec.template_parameter() for spec in PIPELINE_OPTIONS]}


def text() -> str:
    return json.dumps(metadata(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is stale")
    if parser.parse_args(argv).check:
        stale = PATH.read_text() != text()
        if stale:
            print(f"{PATH.relative_to(REPO)} is stale; run `python scripts/template_metadata.py`", file=sys.stderr)
        return int(stale)
    PATH.write_text(text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
