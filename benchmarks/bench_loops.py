"""The plain single-process loops the export is measured against, and the request both apply.

`parse`: every line parsed with orjson and the library's own rules applied, as
plain calls. `prefix`: no parsing at all, a line is kept when its opening bytes
name a selected type; it is the speed of reading and writing the lines, and is
valid only for a `_type`-only system request on data whose every line opens with
`{"resourceType":"<its type>"` (`check_opening_bytes`). Both write per-type parts
rolling at `MAX_LINES_PER_PART` lines, as the export does.
"""

from __future__ import annotations

import importlib
import os
import time
from pathlib import Path
from urllib.parse import quote

import orjson

from benchmarks.bench_common import BENCH_GROUP_ID

MAX_LINES_PER_PART = 100_000
OUTPUT_FORMATS = {"ndjson": "application/fhir+ndjson", "parquet": "application/vnd.apache.parquet"}
SCAN_EVERYTHING = str(1 << 62)  # BULK_EXPORT_KICKOFF_SCAN_BYTES for the baseline: it always resolves patients itself
OPENING = b'{"resourceType":"'


def selected_types(args) -> list[str]:
    return [t for t in args.types.split(",") if t.strip()]


def kickoff_url(args) -> str:
    """The benchmark's request as a kick-off URL, GET form."""
    path = {"system": "$export", "patient": "Patient/$export", "group": f"Group/{BENCH_GROUP_ID}/$export"}[args.level]
    params = {"_type": args.types, "_since": args.since, "_typeFilter": args.type_filter,
              "_elements": args.elements, "_outputFormat": OUTPUT_FORMATS[args.output_format]}
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items() if v)
    return f"http://localhost/fhir/{path}?{query}"


def parsed_request(args):
    """The benchmark's request, parsed as a real kickoff URL would be."""
    from launcher.kickoff.parser import parse_get

    return parse_get(kickoff_url(args))


def import_untimed(args) -> None:
    """Imports what the cases use before their clocks start (no Beam at system level, for `--cli`'s baseline)."""
    modules = ["launcher.kickoff.parser"]
    if args.level != "system":
        modules += ["launcher.kickoff.patients", "transforms.select.covered_patients", "transforms.records"]
    for module in modules:
        importlib.import_module(module)


def covered_patients(args, request, source: str, job=None):
    """Resolves the level's patients as the launcher does; None at system level."""
    if args.level == "system":
        return None
    from launcher.kickoff.patients import SCAN_LIMIT_ENV, resolve_patients

    if job is None:  # the baseline resolves them whatever the source's size, as the pipeline does over the limit
        os.environ[SCAN_LIMIT_ENV] = SCAN_EVERYTHING
    return resolve_patients(request, source, "auto", args._tx)


def prefix_loop_refusal(args) -> str | None:
    """Why the opening-bytes loop cannot stand for this request, or None when it can (`_type` only)."""
    if args.level != "system" or args.since or args.type_filter or args.elements:
        return "the opening-bytes loop tests only _type: it needs --level system, --since '' and no " \
               "--type-filter or --elements"
    return None


class Parts:
    """Per-type NDJSON part files in a folder, each rolling at `MAX_LINES_PER_PART` lines."""

    def __init__(self, folder: str):
        self._folder = folder
        self._open: dict = {}  # type (str or bytes) -> [file, lines in part, part number]

    def write(self, rtype: str | bytes, line: bytes) -> None:
        part = self._open.get(rtype)
        if part is None or part[1] >= MAX_LINES_PER_PART:
            n = 0 if part is None else part[2] + 1
            if part is not None:
                part[0].close()
            name = rtype if isinstance(rtype, str) else rtype.decode()
            part = self._open[rtype] = [open(os.path.join(self._folder, f"{name}-{n}.ndjson"), "wb", 1 << 20), 0, n]
        part[0].write(line if line.endswith(b"\n") else line + b"\n")
        part[1] += 1

    def close(self) -> dict[str, int]:
        """Closes every part; the lines written, by type."""
        counts = {}
        for rtype, (handle, lines, n) in self._open.items():
            handle.close()
            counts[rtype if isinstance(rtype, str) else rtype.decode()] = n * MAX_LINES_PER_PART + lines
        return counts


def _ndjson_files(source: str) -> list[Path]:
    return sorted(Path(source).glob("*.ndjson"))


def run_parse_loop(args) -> dict:
    """Parse every line, apply the request with the library's rules, write rolling parts.

    At Patient/Group level it resolves the patients whatever the source's size, as the
    pipeline does by itself when the source is over the launcher's kick-off scan limit.
    """
    import_untimed(args)
    parts = Parts(args._out)
    loads = orjson.loads
    started = time.perf_counter()
    keep = _parse_rule(args)
    for path in _ndjson_files(args._source):
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                body = loads(line)
                rtype = body.get("resourceType")
                kept = keep(rtype, line, body)
                if kept is not None:
                    parts.write(rtype, kept)
    counts = parts.close()
    return {"seconds": time.perf_counter() - started, "counts": counts, "errors": 0}


def run_prefix_loop(args) -> dict:
    """No parsing: keep a line when it opens with `{"resourceType":"<T>"` for a selected T, write rolling parts."""
    types = selected_types(args)
    wanted = tuple(OPENING + t.encode() + b'"' for t in types) or (OPENING,)
    at = len(OPENING)
    parts = Parts(args._out)
    started = time.perf_counter()
    for path in _ndjson_files(args._source):
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(wanted):
                    parts.write(line[at:line.index(b'"', at)], line)
    counts = parts.close()
    return {"seconds": time.perf_counter() - started, "counts": counts, "errors": 0}


LOOPS = {"parse": run_parse_loop, "prefix": run_prefix_loop}


def check_opening_bytes(ndjson: Path) -> int:
    """Checks that every non-blank line opens with `{"resourceType":"<the type it parses to>"`, which the
    prefix loop relies on; raises ValueError naming the first line that does not. Returns the lines
    checked. The check parses every line once; its result is cached beside the data, keyed by the files'
    names and sizes."""
    files = {path.name: path.stat().st_size for path in _ndjson_files(str(ndjson))}
    cache = ndjson.parent / "opening-bytes.json"
    if cache.exists():
        cached = orjson.loads(cache.read_bytes())
        if cached["files"] == files:
            return cached["lines"]
    lines = 0
    for name in files:
        with open(ndjson / name, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                rtype = orjson.loads(line).get("resourceType") or ""
                if not line.startswith(OPENING + rtype.encode() + b'"'):
                    raise ValueError(f"{name} line {number} does not open with {OPENING.decode()}{rtype}\"")
                lines += 1
    cache.write_bytes(orjson.dumps({"files": files, "lines": lines}))
    return lines


def _parse_rule(args):
    """One function applying the request to a line: the library's rules, no Beam.

    A plain system export (`_type` and `_since` only) is a minimal closure over
    the window's test, as the fastest single-process loop would be; the other
    requests use the library's rule functions as plain calls.
    """
    from transforms.fhir.compartment import COMPARTMENT_TYPES, CompartmentRule
    from transforms.fhir.elements import parse_elements
    from transforms.fhir.group import GROUP
    from transforms.fhir.search.compiler import compile_filters
    from transforms.fhir.window import LastUpdatedWindow

    request = parsed_request(args)
    # Without _type, Patient/Group level exports the compartment's types but Group (pipelines.plan).
    types = set(request.types) or (None if args.level == "system" else COMPARTMENT_TYPES - {GROUP})
    window = LastUpdatedWindow(args._tx, request.since)
    filters = compile_filters(request.type_filters, request.types, now=args._tx) if request.type_filters else None
    elements = parse_elements(request.elements, request.types) if request.elements else None
    membership = covered_patients(args, request, args._source)
    rule = CompartmentRule(membership.patients, window) if membership is not None else None
    admits = window.admits
    if rule is None and filters is None and elements is None:
        return _plain_rule(types, admits)
    if rule is not None:
        from transforms.records import Resource

    def keep(rtype: str, line: bytes, body: dict):
        """The bytes to write for a line, or None when the request leaves it out."""
        if types is not None and rtype not in types:
            return None
        if filters is not None and not filters.matches(rtype, body):
            return None
        if rule is not None:
            if rule(Resource(rtype, line, body, 0)) is None:
                return None
        elif not admits(body):
            return None
        changed = elements.subset(rtype, body) if elements is not None else None
        return line if changed is None else changed[0]

    return keep


def _plain_rule(types, admits):
    def keep(rtype: str, line: bytes, body: dict):
        if types is not None and rtype not in types:
            return None
        return line if admits(body) else None

    return keep
