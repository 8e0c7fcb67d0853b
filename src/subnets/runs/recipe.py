"""Recipes: TOML files validated by the experiment kind's pydantic model, with ``--set`` overrides.

Reading a recipe (TOML and overrides) and finding its kind import nothing heavy; validating it imports the
kind's recipe model (and with it the family and torch).
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from subnets.runs.kinds import Kind, get_kind, kind_names

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError


class RecipeError(ValueError):
    """A recipe or an override is wrong; the message is one line naming the field and what is allowed."""


def _parse_value(text: str) -> Any:
    """An override value read as TOML (numbers, booleans, arrays, quoted strings), else as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``recipe`` with each ``key.path=value`` override set (sections are created as needed)."""
    result = copy.deepcopy(recipe)
    for override in overrides:
        path, sep, value = override.partition("=")
        if not sep or not path.strip():
            raise RecipeError(f"--set '{override}': write key=value, e.g. prune.levels=3")
        keys = path.strip().split(".")
        node = result
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise RecipeError(f"--set '{override}': '{key}' is not a section")
            node = child
        node[keys[-1]] = _parse_value(value.strip())
    return result


def _error_line(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(p) for p in first["loc"]) or "recipe"
    message = first["msg"].removeprefix("Value error, ")
    shown = first.get("input")
    suffix = f" (got {shown!r})" if first["type"] not in ("missing", "value_error") and shown is not None \
        and not isinstance(shown, dict) else ""
    return f"{location}: {message}{suffix}"


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> BaseModel:
    """Read, override and validate a recipe; every problem is a :class:`RecipeError`."""
    return validate_recipe(read_recipe(path, overrides), str(path))


def read_recipe(path: Path | str, overrides: list[str] | None = None) -> dict[str, Any]:
    """The recipe at ``path`` as a dict with ``overrides`` applied, not yet validated."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise RecipeError(f"cannot read recipe {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise RecipeError(f"{path}: not UTF-8 text (byte {error.start}); TOML recipes are UTF-8") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"{path}: malformed TOML: {error}") from None
    return apply_overrides(raw, overrides or [])


def recipe_kind(raw: dict[str, Any], origin: str = "recipe") -> Kind:
    """The registered kind named by the recipe's ``kind`` field."""
    name = raw.get("kind")
    try:
        return get_kind(str(name))
    except KeyError:
        raise RecipeError(f"{origin}: kind: must be one of {', '.join(kind_names())} (got {name!r})") from None


def validate_recipe(raw: dict[str, Any], origin: str = "recipe") -> BaseModel:
    """Validate a recipe dict with the model of its ``kind``."""
    from pydantic import ValidationError

    config = recipe_kind(raw, origin).config
    try:
        return config.model_validate(raw)
    except ValidationError as error:
        raise RecipeError(f"{origin}: {_error_line(error)}") from None


def run_id(recipe: BaseModel, identity: dict[str, Any] | None = None) -> str:
    """A short hash of the normalised recipe (and of ``identity``, e.g. a data file's SHA-256, when given): the
    same recipe on the same data always gives the same run."""
    content = recipe.model_dump(mode="json")
    if identity:
        content = {"recipe": content, "identity": identity}
    normal = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(normal.encode()).hexdigest()[:10]
