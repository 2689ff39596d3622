"""Validate NGSI-LD entities against the FIWARE Smart Data Models' JSON Schemas, offline.

The schemas are byte-exact copies in tests/data/smart-data-models/ (see its README for
attribution and licence). `$ref`s to the common schemas resolve to those files and nothing
else: an unexpected URL fails instead of reaching the network. Formats (`date-time`) are
checked. A normalized entity is converted to key-values first, as the schemas describe.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT202012

from host_tools.backoffice.bridge.ngsi import key_values

DATA = Path(__file__).parent / "data" / "smart-data-models"
MODELS = ("WasteContainer", "Streetlight", "WeatherObserved", "AirQualityObserved", "NoiseLevelObserved")
REFS = {
    "https://smart-data-models.github.io/data-models/common-schema.json": "common/common-schema.json",
    "https://smart-data-models.github.io/dataModel.Weather/weather-schema.json": "common/weather-schema.json",
    "https://smart-data-models.github.io/dataModel.Environment/Environment-schema.json": "common/Environment-schema.json",
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/Environment-schema.json":
        "common/Environment-schema.json",
}


def _retrieve(uri: str) -> Resource:
    if uri not in REFS:
        raise NoSuchResource(ref=uri)
    return Resource.from_contents(json.loads((DATA / REFS[uri]).read_text()), default_specification=DRAFT202012)


@cache
def validator(model: str) -> Draft202012Validator:
    schema = json.loads((DATA / model / "schema.json").read_text())
    return Draft202012Validator(schema, registry=Registry(retrieve=_retrieve),
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(entity: dict) -> list[str]:
    """Why `entity` (normalized or key-values) does not validate against its model; [] if it does."""
    kv = key_values(entity)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(entity)'}: {e.message}"
            for e in validator(entity["type"]).iter_errors(kv)]


def example(model: str) -> dict:
    return json.loads((DATA / model / "example-normalized.jsonld").read_text())
