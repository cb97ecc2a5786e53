"""Reading a config: YAML file plus ``--set`` overrides, validated once, with one-line errors."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sslcore.config.base import ConfigError
from sslcore.config.pipeline import PipelineConfig

__all__ = ["SENSITIVE_WORDS", "build_config", "format_validation_error", "load_config", "parse_override"]

SENSITIVE_WORDS = ("secret", "key_id", "token", "password", "storage")  # never echo these values


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``key.path=value``; the value is read as YAML (``3``, ``true``, ``[1, 2]``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set '{item}': expected KEY=VALUE, e.g. --set train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set '{item}': value is not valid YAML ({exc.__class__.__name__})") from exc
    return key.strip(), value


def _union_member(annotation: Any, tag: Any) -> type[BaseModel] | None:
    """The member of a discriminated union whose ``kind``/``name`` default equals ``tag``."""
    for member in getattr(annotation, "__args__", ()):
        if isinstance(member, type) and issubclass(member, BaseModel):
            for field in ("kind", "name"):
                info = member.model_fields.get(field)
                if info is not None and info.default == tag:
                    return member
        inner = _union_member(member, tag)  # Annotated[Union[...], Field(...)]
        if inner is not None:
            return inner
    return None


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid keys at ``loc`` (minus its last element) within ``model``, for did-you-mean hints.

    pydantic puts the discriminator tag after a union field (``ingest.source.folder.path``): the
    walk follows it into that member, so the hint lists that source's or method's own keys.
    """
    current: Any = model
    parts = list(loc[:-1])
    i = 0
    while i < len(parts):
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(parts[i]))
        if field is None:
            return []
        annotation = field.annotation
        if isinstance(annotation, type):
            current = annotation
        else:  # a union: the next element of the location is the tag
            tag = parts[i + 1] if i + 1 < len(parts) else None
            current = _union_member(annotation, tag)
            if current is None:
                return []
            i += 1
        i += 1
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _without_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the discriminator tag pydantic inserts after a union field (``source.folder.path``)."""
    out: list[Any] = []
    current: Any = PipelineConfig
    skip_next = False
    for part in loc:
        if skip_next:
            skip_next = False
            continue
        out.append(part)
        field = current.model_fields.get(str(part)) if isinstance(current, type) else None
        annotation = field.annotation if field is not None else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            current = annotation
        elif annotation is not None and getattr(annotation, "__args__", None):
            skip_next = True
            current = None
        else:
            current = None
    return tuple(out)


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the key, what is wrong and what to do."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        shown = _without_union_tags(loc) if err["type"] != "union_tag_invalid" else loc
        key = ".".join(str(p) for p in shown) or "<root>"
        if err["type"] == "extra_forbidden":
            valid = _field_names(PipelineConfig, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            parent = ".".join(str(p) for p in shown[:-1])
            hint = (
                f"did you mean '{parent + '.' if parent else ''}{close[0]}'?"
                if close
                else f"valid keys: {', '.join(valid)}"
            )
            problems.append(f"unknown key '{key}' ({hint})")
        elif err["type"] == "union_tag_invalid":
            problems.append(f"{key}: {err['msg']}")
        elif err["type"] == "union_tag_not_found":
            tag = err.get("ctx", {}).get("discriminator", "kind").strip("'")
            problems.append(f"{key}: set {key}.{tag} first (it decides which other keys are valid)")
        else:
            got = err.get("input")
            secret = any(word in key.lower() for word in SENSITIVE_WORDS)
            echo = "" if isinstance(got, dict) or secret else f" (got {got!r})"
            problems.append(f"{key}: {err['msg']}{echo}")
    return "invalid config: " + "; ".join(problems)


def build_config(data: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read an optional YAML file, apply ``key=value`` overrides, validate once."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist: pass an existing YAML file to --config")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise ConfigError(f"config file {p} is not valid YAML: {first}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
    return build_config(data)
