"""The relation dataset: the 47 shipped relations, user relation files, and reference hparams.

A *relation* is a JSON file in the schema of Hernandez et al., "Linearity of Relation Decoding in
Transformer Language Models" (ICLR 2024, https://github.com/evandez/relations)::

    {
        "name": "country capital city",
        "prompt_templates": ["The capital city of {} is"],
        "prompt_templates_zs": ["The capital of {} is the city of"],
        "properties": {"relation_type": "factual", "domain_name": "country",
                       "range_name": "city", "symmetric": false},
        "samples": [{"subject": "Canada", "object": "Ottawa"}, ...]
    }

The shipped copies live in ``lre_pl/resources/relations/<category>/`` (MIT licence, see
``lre_pl/resources/NOTICE.md``) and the paper's per-relation hyperparameters in
``lre_pl/resources/reference_hparams/<model>/``.

:func:`load_relation` accepts a shipped relation by name (``"country capital city"``, case-insensitive,
spaces/underscores/hyphens equivalent) or by file stem (``"country_capital_city"``), or a path to a
user JSON file in the same schema. Every data problem raises :class:`RelationDataError` with a one-line
message naming the file, what is wrong and how to fix it.

Loading repairs three quirks of the published files: double-escaped unicode (``"Bras\\\\u00edlia"``
becomes ``"Brasília"``), whitespace around subjects/objects, and duplicate (subject, object) pairs
(the first occurrence is kept).
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from lre_pl.errors import InputError

__all__ = [
    "Relation",
    "RelationDataError",
    "RelationSample",
    "list_relations",
    "load_relation",
    "reference_hparams",
    "relation_names",
]

#: Categories of the shipped relations (``properties.relation_type``).
CATEGORIES = ("bias", "commonsense", "factual", "linguistic")

#: Models with reference hyperparameters, as named by the folders of ``resources/reference_hparams``.
HPARAMS_MODELS = ("gptj", "gpt2-xl", "llama")

#: Category of a user relation file that has no ``properties`` object.
UNKNOWN_CATEGORY = "unknown"

_PLACEHOLDER = "{}"

# A literal backslash followed by u+4 hex, U+8 hex or x+2 hex digits: text that was escaped twice.
_ESCAPE_RE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|x([0-9a-fA-F]{2}))")
_HIGH_SURROGATES = range(0xD800, 0xDC00)
_LOW_SURROGATES = range(0xDC00, 0xE000)


class RelationDataError(InputError):
    """A relation or hparams file is missing, malformed, or does not match the schema.

    The message is a single line: the file (or the requested name), what is wrong, and how to fix it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


@dataclass(frozen=True)
class RelationSample:
    """One (subject, object) pair of a relation."""

    subject: str
    """The subject filled into the prompt templates' ``{}``, e.g. ``"Brazil"``."""

    object: str
    """The expected answer, e.g. ``"Brasília"``."""


@dataclass(frozen=True)
class Relation:
    """A relation: its prompt templates, metadata and (subject, object) samples."""

    name: str
    """Human-readable name, the JSON ``name``, e.g. ``"country capital city"``."""

    category: str
    """``properties.relation_type``: ``factual``, ``linguistic``, ``bias`` or ``commonsense``
    (``unknown`` for a user file without ``properties``)."""

    prompt_templates: tuple[str, ...]
    """Few-shot prompt templates; each contains exactly one ``{}`` where the subject goes."""

    prompt_templates_zs: tuple[str, ...]
    """Zero-shot prompt templates (may be empty); each contains exactly one ``{}``."""

    domain_name: str
    """What the subjects are, ``properties.domain_name`` (``""`` when not given)."""

    range_name: str
    """What the objects are, ``properties.range_name`` (``""`` when not given)."""

    symmetric: bool
    """``properties.symmetric``: whether the relation is its own inverse (``False`` when not given)."""

    samples: tuple[RelationSample, ...]
    """The samples, stripped, with double-escaped unicode repaired and duplicate pairs dropped."""

    source: str
    """Path of the file the relation was read from."""

    duplicates_dropped: int = 0
    """How many duplicate (subject, object) pairs of the file were dropped."""


# --------------------------------------------------------------------------- helpers


def _normalize_name(name: str) -> str:
    """Case-fold and treat runs of spaces, underscores and hyphens as one space."""
    return " ".join(re.split(r"[\s_\-]+", name.strip().lower())).strip()


def _repair_unicode(text: str) -> str:
    """Turn literal ``\\uXXXX``, ``\\UXXXXXXXX`` and ``\\xXX`` sequences into the characters they name.

    Surrogate pairs written as two ``\\u`` escapes are combined; a lone surrogate or an out-of-range
    code point is left as it is. Text without such sequences is returned unchanged.
    """
    if "\\" not in text:
        return text
    codes: list[tuple[int, int, int]] = []  # (start, end, code point) of each escape
    for match in _ESCAPE_RE.finditer(text):
        hex_digits = match.group(1) or match.group(2) or match.group(3)
        codes.append((match.start(), match.end(), int(hex_digits, 16)))
    if not codes:
        return text
    out: list[str] = []
    pos = 0
    i = 0
    while i < len(codes):
        start, end, code = codes[i]
        if code in _HIGH_SURROGATES and i + 1 < len(codes):
            next_start, next_end, next_code = codes[i + 1]
            if next_start == end and next_code in _LOW_SURROGATES:
                combined = 0x10000 + ((code - 0xD800) << 10) + (next_code - 0xDC00)
                out.append(text[pos:start])
                out.append(chr(combined))
                pos = next_end
                i += 2
                continue
        if code <= 0x10FFFF and code not in _HIGH_SURROGATES and code not in _LOW_SURROGATES:
            out.append(text[pos:start])
            out.append(chr(code))
            pos = end
        i += 1
    out.append(text[pos:])
    return "".join(out)


def _read_json(resource: Path | Traversable, source: str) -> Any:
    """Read and parse a UTF-8 JSON file, raising RelationDataError with line/column on failure."""
    try:
        text = resource.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RelationDataError(f"{source}: file not found; check the path") from None
    except IsADirectoryError:
        raise RelationDataError(f"{source}: is a directory, not a JSON file; pass the .json file") from None
    except UnicodeDecodeError as exc:
        raise RelationDataError(
            f"{source}: not valid UTF-8 (byte {exc.start}: {exc.reason}); save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise RelationDataError(
            f"{source}: cannot be read ({exc.strerror}); check the path and permissions"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RelationDataError(
            f"{source}: malformed JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); fix the JSON syntax"
        ) from None


def _string_field(data: dict[str, Any], key: str, source: str, where: str = "") -> str:
    """A required non-empty string field, with unicode repaired and surrounding whitespace stripped."""
    label = f"{where}{key}"
    if key not in data:
        raise RelationDataError(f"{source}: field '{label}' is missing; add it as a non-empty string")
    value = data[key]
    if not isinstance(value, str):
        raise RelationDataError(
            f"{source}: field '{label}' must be a string, got {type(value).__name__}; write it as a JSON string"
        )
    value = _repair_unicode(value).strip()
    if not value:
        raise RelationDataError(f"{source}: field '{label}' is an empty string; give it a non-empty value")
    return value


def _templates(data: dict[str, Any], key: str, source: str, required: bool) -> tuple[str, ...]:
    """Validate a list of prompt templates, each with exactly one ``{}``."""
    if key not in data:
        if required:
            raise RelationDataError(
                f"{source}: field '{key}' is missing; add a list of prompt templates, each with one '{{}}'"
                " for the subject"
            )
        return ()
    value = data[key]
    if not isinstance(value, list) or (required and not value):
        raise RelationDataError(
            f"{source}: field '{key}' must be a non-empty list of strings; add templates such as"
            ' "The capital of {} is"'
        )
    templates: list[str] = []
    for index, template in enumerate(value):
        label = f"{key}[{index}]"
        if not isinstance(template, str):
            raise RelationDataError(
                f"{source}: field '{label}' must be a string, got {type(template).__name__};"
                " write it as a JSON string"
            )
        template = _repair_unicode(template)
        count = template.count(_PLACEHOLDER)
        if count != 1:
            raise RelationDataError(
                f"{source}: field '{label}' = {template!r} contains {count} '{{}}' placeholders;"
                " each template needs exactly one '{}' where the subject goes"
            )
        templates.append(template)
    return tuple(templates)


def _properties(data: dict[str, Any], source: str) -> tuple[str, str, str, bool]:
    """(category, domain_name, range_name, symmetric) from the optional ``properties`` object."""
    if "properties" not in data:
        return UNKNOWN_CATEGORY, "", "", False
    props = data["properties"]
    if not isinstance(props, dict):
        raise RelationDataError(
            f"{source}: field 'properties' must be an object, got {type(props).__name__};"
            ' write it as {"relation_type": ...} or remove it'
        )
    if "relation_type" not in props:
        raise RelationDataError(
            f"{source}: field 'properties.relation_type' is missing; set it to one of"
            f" {', '.join(CATEGORIES)} (or remove 'properties' entirely)"
        )
    category = _string_field(props, "relation_type", source, where="properties.")
    names = []
    for key in ("domain_name", "range_name"):
        value = props.get(key, "")
        if not isinstance(value, str):
            raise RelationDataError(
                f"{source}: field 'properties.{key}' must be a string, got {type(value).__name__};"
                " write it as a JSON string or remove it"
            )
        names.append(_repair_unicode(value).strip())
    symmetric = props.get("symmetric", False)
    if not isinstance(symmetric, bool):
        raise RelationDataError(
            f"{source}: field 'properties.symmetric' must be true or false, got {symmetric!r};"
            " write a JSON boolean or remove it"
        )
    return category, names[0], names[1], symmetric


def _samples(data: dict[str, Any], source: str) -> tuple[tuple[RelationSample, ...], int]:
    """Validate, repair, strip and de-duplicate the ``samples`` list: (samples, duplicates dropped)."""
    if "samples" not in data:
        raise RelationDataError(
            f'{source}: field \'samples\' is missing; add a list of {{"subject": ..., "object": ...}} objects'
        )
    raw = data["samples"]
    if not isinstance(raw, list):
        raise RelationDataError(
            f"{source}: field 'samples' must be a list, got {type(raw).__name__};"
            ' write it as a list of {"subject": ..., "object": ...} objects'
        )
    if not raw:
        raise RelationDataError(
            f'{source}: field \'samples\' is empty; add at least one {{"subject": ..., "object": ...}} object'
        )
    seen: set[tuple[str, str]] = set()
    samples: list[RelationSample] = []
    for index, item in enumerate(raw):
        where = f"samples[{index}]."
        if not isinstance(item, dict):
            raise RelationDataError(
                f"{source}: field 'samples[{index}]' must be an object, got {type(item).__name__};"
                ' write it as {"subject": ..., "object": ...}'
            )
        subject = _string_field(item, "subject", source, where=where)
        obj = _string_field(item, "object", source, where=where)
        if (subject, obj) in seen:
            continue
        seen.add((subject, obj))
        samples.append(RelationSample(subject=subject, object=obj))
    return tuple(samples), len(raw) - len(samples)


def _parse_relation(data: Any, source: str) -> Relation:
    """Validate parsed JSON against the relation schema and build a Relation."""
    if not isinstance(data, dict):
        raise RelationDataError(
            f"{source}: top level must be a JSON object, got {type(data).__name__};"
            ' wrap the relation in {"name": ..., "prompt_templates": [...], "samples": [...]}'
        )
    name = _string_field(data, "name", source)
    prompt_templates = _templates(data, "prompt_templates", source, required=True)
    prompt_templates_zs = _templates(data, "prompt_templates_zs", source, required=False)
    category, domain_name, range_name, symmetric = _properties(data, source)
    samples, duplicates = _samples(data, source)
    return Relation(
        name=name,
        category=category,
        prompt_templates=prompt_templates,
        prompt_templates_zs=prompt_templates_zs,
        domain_name=domain_name,
        range_name=range_name,
        symmetric=symmetric,
        samples=samples,
        source=source,
        duplicates_dropped=duplicates,
    )


# --------------------------------------------------------------------------- shipped data


def _resources() -> Traversable:
    return files("lre_pl") / "resources"


def _shipped_files() -> list[Traversable]:
    """The shipped relation JSON files, sorted by category folder then file name."""
    root = _resources() / "relations"
    found: list[Traversable] = []
    for folder in sorted(root.iterdir(), key=lambda entry: entry.name):
        if not folder.is_dir():
            continue
        found.extend(
            sorted(
                (entry for entry in folder.iterdir() if entry.name.endswith(".json") and entry.is_file()),
                key=lambda entry: entry.name,
            )
        )
    return found


@functools.lru_cache(maxsize=1)
def _shipped_relations() -> dict[str, Relation]:
    """All shipped relations, keyed by name."""
    relations: dict[str, Relation] = {}
    for resource in _shipped_files():
        relation = _parse_relation(_read_json(resource, str(resource)), str(resource))
        relations[relation.name] = relation
    return relations


@functools.lru_cache(maxsize=1)
def _shipped_index() -> dict[str, str]:
    """Normalised relation name or file stem -> relation name."""
    index: dict[str, str] = {}
    for relation in _shipped_relations().values():
        index[_normalize_name(relation.name)] = relation.name
        stem = Path(relation.source).stem
        index.setdefault(_normalize_name(stem), relation.name)
    return index


@functools.lru_cache(maxsize=len(HPARAMS_MODELS))
def _hparams_index(model: str) -> dict[str, dict[str, Any]]:
    """Normalised relation_name -> hparams dict for one model."""
    folder = _resources() / "reference_hparams" / model
    index: dict[str, dict[str, Any]] = {}
    for resource in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if not resource.name.endswith(".json"):
            continue
        source = str(resource)
        data = _read_json(resource, source)
        if not isinstance(data, dict):
            raise RelationDataError(
                f"{source}: top level must be a JSON object, got {type(data).__name__}; restore the file"
            )
        relation_name = data.get("relation_name")
        if not isinstance(relation_name, str) or not relation_name.strip():
            raise RelationDataError(
                f"{source}: field 'relation_name' is missing or not a string; restore the file"
            )
        index[_normalize_name(relation_name)] = data
    return index


def _unknown_relation_error(name: str) -> RelationDataError:
    index = _shipped_index()
    canonical = sorted(set(index.values()))
    wanted = _normalize_name(name)
    matches = difflib.get_close_matches(wanted, list(index), n=5, cutoff=0.6)
    suggestions: list[str] = []
    for match in matches:
        if index[match] not in suggestions:
            suggestions.append(index[match])
    hint = f"did you mean {', '.join(repr(s) for s in suggestions)}? " if suggestions else ""
    return RelationDataError(
        f"unknown relation {name!r}: not one of the {len(canonical)} shipped relations and not a .json file;"
        f" {hint}run `lre-pl relations` to list them all, or pass a path to your own relation JSON file"
    )


# --------------------------------------------------------------------------- public API


def relation_names() -> list[str]:
    """The names of the shipped relations, sorted."""
    return sorted(_shipped_relations())


def list_relations(category: str | None = None) -> list[tuple[str, str, int]]:
    """``(name, category, n_samples)`` for the shipped relations, sorted by category then name.

    ``n_samples`` counts the samples after de-duplication. ``category`` (case-insensitive) keeps only
    the relations of that category; an unknown category raises :class:`RelationDataError`.
    """
    relations = _shipped_relations().values()
    if category is not None:
        wanted = category.strip().lower()
        available = sorted({relation.category for relation in relations})
        if wanted not in available:
            raise RelationDataError(
                f"unknown relation category {category!r}; use one of {', '.join(available)}"
            )
        relations = [relation for relation in relations if relation.category == wanted]
    return sorted(
        ((relation.name, relation.category, len(relation.samples)) for relation in relations),
        key=lambda row: (row[1], row[0]),
    )


def load_relation(name_or_path: str | Path) -> Relation:
    """Load a shipped relation by name or file stem, or a user relation JSON file by path.

    Names are case-insensitive and treat spaces, underscores and hyphens alike, so
    ``"country capital city"``, ``"Country-Capital-City"`` and ``"country_capital_city"`` are the same.
    A string ending in ``.json``, or naming an existing file, is read as a path.

    Raises:
        RelationDataError: unknown name (with close matches), missing file, malformed JSON, or a schema
            violation; the message is one line naming the file and the field.
    """
    if not isinstance(name_or_path, (str, Path)):
        raise RelationDataError(
            f"relation must be given as a name or a path string, got {type(name_or_path).__name__}"
        )
    text = str(name_or_path)
    path = Path(text).expanduser()
    if isinstance(name_or_path, Path) or text.lower().endswith(".json") or path.is_file():
        source = str(path)
        if not path.exists():
            raise RelationDataError(f"{source}: relation file not found; check the path")
        return _parse_relation(_read_json(path, source), source)
    name = _shipped_index().get(_normalize_name(text))
    if name is None:
        if "/" in text or "\\" in text:
            raise RelationDataError(f"{text}: relation file not found; check the path")
        raise _unknown_relation_error(text)
    return _shipped_relations()[name]


def reference_hparams(model: str, relation: str) -> dict[str, Any]:
    """The paper's hyperparameters for ``relation`` on ``model`` (``"gptj"``, ``"gpt2-xl"`` or ``"llama"``).

    ``relation`` is a shipped relation name or file stem, normalised like :func:`load_relation`.
    Returns a fresh dict with the keys ``model_name``, ``relation_name``, ``h_layer``, ``beta``, ``rank``,
    ``z_layer`` and ``h_layer_edit``.

    Raises:
        RelationDataError: unknown model, or no hparams for this relation and model.
    """
    key = model.strip().lower() if isinstance(model, str) else model
    if key not in HPARAMS_MODELS:
        raise RelationDataError(
            f"no reference hparams for model {model!r}; use one of {', '.join(HPARAMS_MODELS)}"
        )
    index = _hparams_index(key)
    name = _shipped_index().get(_normalize_name(relation), relation)
    hparams = index.get(_normalize_name(name))
    if hparams is None:
        if _normalize_name(relation) not in _shipped_index():
            raise _unknown_relation_error(relation)
        raise RelationDataError(
            f"no reference hparams for relation {name!r} with model {key!r} (the paper gives {key} hparams"
            f" for {len(index)} of {len(_shipped_relations())} relations); choose h_layer, beta and rank"
            " yourself or use another model's values"
        )
    return copy.deepcopy(hparams)
