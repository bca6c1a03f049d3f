"""Profiles and typed, validated configs.

A profile (``smoke``, ``default``, ``full``) is a YAML file in ``notebooks/params/``. It has two parts:
``stages`` (configs shared by several notebooks, e.g. the world every study trains on) and
``notebooks`` (the papermill parameters of each notebook). Configs are frozen dataclasses built
with :func:`build`, which rejects unknown keys and wrong types with a message naming them.

Usage: ``cfg = build(WorldConfig, stage_params("smoke", "world"))``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from knowinject.core import paths

PROFILES = ("smoke", "default", "full")


class ConfigError(ValueError):
    """A parameter or profile a user gave is wrong; the message says what and how to fix it."""


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    return profile


def load_profile(profile: str) -> dict[str, Any]:
    """The whole parameter file of a profile, as a dict with ``stages`` and ``notebooks``."""
    check_profile(profile)
    path = paths.PARAMS / f"{profile}.yaml"
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{paths.show(path)}, line {mark.line + 1}, column {mark.column + 1}" if mark else paths.show(path)
        problem = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
        raise ConfigError(f"profile {profile!r} is not valid YAML: {where}: {problem}; fix that line "
                          "(indentation, a missing ':' or an unclosed bracket are the usual causes)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{paths.show(path)} must be a mapping with 'stages' and 'notebooks', got {type(data).__name__}")
    for key in ("stages", "notebooks"):
        data.setdefault(key, {})
    return data


def stage_params(profile: str, stage: str) -> dict[str, Any]:
    """The parameters of one shared stage (e.g. ``world``) in a profile."""
    stages = load_profile(profile)["stages"]
    if stage not in stages:
        raise ConfigError(f"profile {profile!r} has no stage {stage!r}; it has: {', '.join(stages)}")
    return dict(stages[stage] or {})


def notebook_params(profile: str, notebook: str) -> dict[str, Any]:
    """Papermill parameters of one notebook (by file stem) in a profile; ``profile`` is always set."""
    nbs = load_profile(profile)["notebooks"]
    params = dict(nbs.get(notebook) or {})
    params["profile"] = profile
    return params


def track_stage(profile: str, name: str, model_name: str = "smollm2") -> str:
    """The profile stage of a track's finetuning settings: ``track_tiny``; for the pretrained track a built-in
    model's own stage where the profile has one (``track_gemma3``), else ``track_smollm2``, which a model of
    one's own starts from."""
    own = f"track_{model_name}"
    return "track_tiny" if name == "tiny" else own if own in load_profile(profile)["stages"] else "track_smollm2"


def second_models(profile: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The profile's ``second_models``: ``{model: {notebook stem: parameters}}``, the built-in real models
    that run again through the named notebooks after SmolLM2 (their results in ``results/<profile>/<slug>/``;
    notebook 06 reads them beside SmolLM2's)."""
    data = load_profile(profile).get("second_models") or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) and all(isinstance(p, dict) or p is None
                                                                         for p in v.values()) for v in data.values()):
        raise ConfigError(f"profile {profile!r}: second_models must map a model to {{notebook stem: parameters}}, "
                          "e.g. gemma3: {05_study_b: {mc_forms: \"\"}}")
    return {m: {nb: dict(p or {}) for nb, p in nbs.items()} for m, nbs in data.items()}


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(v, args[0]) for v in value)
        return len(args) == len(value) and all(_type_ok(v, a) for v, a in zip(value, args))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is float:
        # An int is a fine float (YAML writes 1e-3 as a string, 1.0 as a float, 1 as an int).
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def build(cls: type, params: dict[str, Any], where: str | None = None):
    """Build the frozen dataclass ``cls`` from ``params``, checking names and types first.

    Unknown names and wrong types fail here, naming the parameter, what it should be and (for a
    name) the valid ones; value ranges are checked by the class's own ``__post_init__``.
    """
    where = where or cls.__name__
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    for name, value in params.items():
        if not _type_ok(value, hints[name]):
            raise ConfigError(
                f"{where}: parameter {name!r} must be {_describe(hints[name])}, got {type(value).__name__} {value!r}"
            )
        if isinstance(value, list):
            params = {**params, name: tuple(value)}
    return cls(**params)


def require(condition: bool, message: str) -> None:
    """Raise a :class:`ConfigError` with ``message`` unless ``condition`` holds (for ``__post_init__``)."""
    if not condition:
        raise ConfigError(message)


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _plain(obj: Any) -> Any:
    """JSON's fallback: a dataclass nested anywhere in a key becomes its fields, anything else its str."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else str(obj)


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: the same config always gives the same bytes."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_plain)


def config_hash(obj: Any, length: int = 10) -> str:
    """sha256 of the canonical JSON (never Python's ``hash()``, which changes between processes)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def save_json(obj: Any, path: Path) -> None:
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
