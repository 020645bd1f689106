"""Plain settings -> an attack's frozen config, by the config's field types.

A sweep spec (YAML) or any JSON-like mapping gives an attack's settings as scalars, lists
and mappings; the config dataclasses want enums, tuples and nested records (``TargetSpec``).
The conversion reads the field annotations, so an attack registered with a new config class
needs no converter of its own. Errors name the setting (``placement``, ``targets[1].label``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from typing import Any, Mapping

from poisonclip.errors import SettingError, UserError


def config_from_mapping(cls: type, settings: Mapping[str, Any], **fixed: Any) -> Any:
    """``cls(**settings, **fixed)`` with each setting converted to its field's type.

    ``fixed`` are values the caller sets itself (paths of a sweep's trial); they are not
    offered as known settings when a name is misspelt.
    """
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise UserError(f"unknown field(s) {unknown}; known: {sorted(names - set(fixed))}")
    hints = typing.get_type_hints(cls)
    values = {k: _convert(k, hints.get(k, Any), v) for k, v in settings.items()}
    try:
        return cls(**values, **fixed)
    except (TypeError, ValueError) as e:
        raise UserError(str(e)) from None


def _convert(name: str, tp: Any, value: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return _convert(name, rest[0], value) if len(rest) == 1 else value
    if isinstance(tp, type) and issubclass(tp, Enum):
        if isinstance(value, tp):
            return value
        try:
            return tp(value)
        except ValueError:
            raise SettingError(name, f"{value!r} is not one of {', '.join(str(m.value) for m in tp)}") from None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SettingError(name, f"give a list, not {value!r}")
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else Any
        return tuple(_convert(f"{name}[{i}]", item, v) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        try:
            return config_from_mapping(tp, value)
        except SettingError as e:
            raise SettingError(f"{name}.{e.setting}", e.problem) from None
        except UserError as e:
            raise SettingError(name, str(e)) from None
    return value
