"""The rule types of config validation (`config_checks`): a key's type and range as a `Rule`,
with the constructors the tables are written in (`Int`, `Float`, `OneOf`, `Seq`, `Records`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Rule:
    """One key's type and range; `describe()` is the rule as an error message states it."""

    kind: str  # "int" | "float" | "bool" | "str" | "choice" | "seq" | "records" | "any"
    low: float | None = None
    high: float | None = None
    open_low: bool = False  # low itself excluded
    open_high: bool = False
    also: tuple = ()  # further allowed values (e.g. -1 = "the rest" for a mesh axis)
    choices: tuple = ()
    none: bool = False  # None also allowed
    item: Rule | None = None  # seq: the rule of each element
    fields: Mapping[str, Rule] | None = None  # records: the table of each element (a dict)
    note: str = ""  # what a special value means, e.g. "0 = never"

    def describe(self) -> str:
        """E.g. 'an integer >= 1', 'a number in (0, 1]', "one of 'packed', 'padded'"."""
        if self.kind == "any":
            return "anything"
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind in ("seq", "records"):
            text = "a list" + (f" of {self.item.describe()}" if self.item else "")
        else:
            text = {"int": "an integer", "float": "a number", "bool": "True or False", "str": "a string"}[self.kind]
            if self.low is not None and self.high is not None:
                text += (
                    f" in {'(' if self.open_low else '['}{_num(self.low)}, {_num(self.high)}"
                    f"{')' if self.open_high else ']'}"
                )
            elif self.low is not None:
                text += f" {'>' if self.open_low else '>='} {_num(self.low)}"
            elif self.high is not None:
                text += f" {'<' if self.open_high else '<='} {_num(self.high)}"
        for value in self.also:
            text += f" or {value!r}"
        if self.none:
            text += " or None"
        return text + (f" ({self.note})" if self.note else "")

    def accepts(self, value: Any) -> bool:
        """Whether `value` is of this rule's type and within its range."""
        if self.kind == "any":
            return True
        if value is None:
            return self.none
        if value in self.also and not isinstance(value, bool):
            return True
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "str":
            return isinstance(value, str)
        if self.kind in ("seq", "records"):
            return isinstance(value, (list, tuple)) and (self.item is None or all(self.item.accepts(v) for v in value))
        if isinstance(value, bool) or not isinstance(value, int if self.kind == "int" else (int, float)):
            return False
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.open_high and value == self.high)):
            return False
        return True


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def Int(ge=None, le=None, *, also=(), none=False, note="") -> Rule:
    """An integer within [ge, le] (either side optional)."""
    return Rule("int", low=ge, high=le, also=also, none=none, note=note)


def Float(*, gt=None, ge=None, lt=None, le=None, none=False, note="") -> Rule:
    """A number (ints widen) with optional bounds; gt/lt exclude the bound."""
    return Rule(
        "float",
        low=gt if gt is not None else ge,
        high=lt if lt is not None else le,
        open_low=gt is not None,
        open_high=lt is not None,
        none=none,
        note=note,
    )


def OneOf(*choices: str, none: bool = False) -> Rule:
    """One of these strings (or None)."""
    return Rule("choice", choices=choices, none=none)


def Seq(item: Rule | None = None) -> Rule:
    """A list or tuple (each element checked by `item` when given)."""
    return Rule("seq", item=item)


def Records(fields: Mapping[str, Rule]) -> Rule:
    """A list of dicts, each checked against its own table."""
    return Rule("records", fields=fields)
