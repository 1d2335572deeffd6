"""Hyperparameter bounds, stated once: as metadata on the fields of the config dataclasses (`MLPConfig`,
`Augmentation`, `TrainConfig`). The configs check themselves with them, and the study-file parser
(`sweep/studyfile.py`) derives its table of hyperparameters, their kinds and their sane ranges from them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

BOUND = "bound"  # the metadata key


@dataclass(frozen=True)
class Bound:
    """What a hyperparameter may be: its kind, and a range (either end open or absent) or a list of choices."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    optional: bool = False  # None is allowed too (the trainer decides)

    def describe(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def check(self, name: str, value: Any) -> Any:
        """`value` as this kind (an int where a float is wanted becomes one), else a ValueError naming `name`."""
        if value is None and self.optional:
            return value
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not self.kind:
            raise ValueError(f"{name}: expected {self.kind.__name__}, got {type(value).__name__} {value!r}")
        if self.kind is float and not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{name} {value!r} is not one of {', '.join(map(str, self.choices))}")
        if self.kind in (int, float) and not self.within(value):
            raise ValueError(f"{name} {value} is outside the sane range {self.describe()}")
        return value

    def within(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below


def bounded(default: Any, kind: type, low: float | None = None, high: float | None = None, **options: Any) -> Any:
    """A dataclass field with its bound as metadata."""
    return dataclasses.field(default=default, metadata={BOUND: Bound(kind, low, high, **options)})


def bounds(cls: type) -> dict[str, Bound]:
    """The bounded fields of a config dataclass, by name."""
    return {f.name: f.metadata[BOUND] for f in dataclasses.fields(cls) if BOUND in f.metadata}


def check_fields(config: Any, skip: tuple[str, ...] = ()) -> None:
    """Check every bounded field of a config instance (but `skip`), storing ints given for floats as floats."""
    for name, bound in bounds(type(config)).items():
        if name not in skip:
            object.__setattr__(config, name, bound.check(name, getattr(config, name)))
