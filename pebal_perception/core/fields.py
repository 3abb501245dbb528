"""Settings declared once, on the config dataclasses' fields: each field's node parameter name, the value
the product runs, its range and its description live in the field's metadata (:func:`setting`). The
node's parameter table (:mod:`pebal_perception.core.settings`), ``--help``, ``config/detector.yaml`` and
the dataclasses' own checks (:func:`check_ranges`) all read them from there.
"""
from __future__ import annotations

import math
from dataclasses import Field, dataclass, field, fields
from typing import Any


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # no product value: the product runs the dataclass default


@dataclass(frozen=True)
class Setting:
    """What a config field is to the product and to the node."""

    description: str  # what it does, for the parameter descriptor, --help and the YAML
    param: str | None = None  # the node parameter (None: not a parameter)
    product: Any = UNSET  # the value the product runs (node default, pebal-detect), when not the field's default
    value_range: tuple[float, float] | None = None  # inclusive; finite values only
    optional_range: tuple[float, float] | None = None  # inclusive, or NaN = off / automatic
    run_time: bool = True  # may change while the node runs


def setting(default: Any, description: str, **declared: Any) -> Any:
    """A dataclass field with ``default`` and its :class:`Setting` (keyword arguments of it)."""
    return field(default=default, metadata={"setting": Setting(description, **declared)})


def declared(cls: Any) -> list[tuple[Field, Setting]]:
    """The fields of the dataclass ``cls`` that declare a :class:`Setting`, in declaration order."""
    return [(f, f.metadata["setting"]) for f in fields(cls) if "setting" in f.metadata]


def product_values(cls: Any) -> dict[str, Any]:
    """Field name -> the value the product runs, for every declared field whose product value differs
    from the dataclass default."""
    return {f.name: s.product for f, s in declared(cls) if s.product is not UNSET}


def product_value(f: Field, s: Setting) -> Any:
    return f.default if s.product is UNSET else s.product


def parameters_of(cls: Any) -> dict[str, str]:
    """Node parameter name -> field name, for the declared fields that are parameters."""
    return {s.param: f.name for f, s in declared(cls) if s.param}


def check_ranges(obj: Any) -> None:
    """Refuses (ValueError naming the field) a value of ``obj``'s declared fields outside its range;
    values in a range are stored as floats (ints for integer fields)."""
    for f, s in declared(obj):
        if s.value_range is None and s.optional_range is None:
            continue
        value = getattr(obj, f.name)
        if isinstance(value, bool):
            raise ValueError(f"{f.name} must be a number, got {value!r}")
        number = float(value)
        low, high = s.value_range or s.optional_range
        if s.optional_range is not None and math.isnan(number):
            continue
        if not (math.isfinite(number) and low <= number <= high):
            extra = " (or NaN = off/automatic)" if s.optional_range is not None else ""
            raise ValueError(f"{f.name} must lie in [{low:g}, {high:g}]{extra}, got {number:g}")
        object.__setattr__(obj, f.name, int(value) if isinstance(f.default, int) else number)
