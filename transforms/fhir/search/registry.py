"""The R4 search parameters per resource type, derived from `hl7.fhir.r4.core`.

Read from `transforms/fhir/r4/search_parameters.json` (written by
`scripts/derive_r4.py`); the common `Resource` parameters (`_id`,
`_lastUpdated`, ...) apply to every type.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict

from transforms.fhir.r4 import load_definition

ParamType = Literal[
    "token", "string", "date", "reference", "number", "quantity", "uri", "composite", "special"
]


class SearchParameter(BaseModel):
    """One search parameter as it applies to one resource type."""

    model_config = ConfigDict(frozen=True)

    type: ParamType
    expression: str
    target: Optional[tuple[str, ...]] = None


class _Registry(BaseModel):
    choices: dict[str, tuple[str, ...]]
    resourceTypes: dict[str, dict[str, SearchParameter]]


@lru_cache(maxsize=1)
def _registry() -> _Registry:
    return _Registry.model_validate(load_definition("search_parameters.json"))


def search_parameters(resource_type: str) -> dict[str, SearchParameter]:
    """The parameters of `resource_type`, the common `Resource` ones included."""
    types = _registry().resourceTypes
    return {**types["Resource"], **types.get(resource_type, {})}


def choice_types(path: str) -> tuple[str, ...]:
    """The key suffixes of a choice element (`Observation.effective` -> `DateTime`, ...)."""
    return _registry().choices.get(path, ())
