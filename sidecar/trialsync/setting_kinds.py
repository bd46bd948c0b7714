"""The kinds of setting ``trialsync.contract`` is written in: how a value of each kind is
read from the environment (``parse``), checked when it comes from elsewhere (``check``),
written for the environment (``render``) and refused by the CRD (``cel``), with one
message for one fault whoever checks.

Standard library only, like the contract.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
#: Every setting's variable starts so: ``--sync-period`` reads ``TRIALSYNC_SYNC_PERIOD``.
ENV_PREFIX = "TRIALSYNC_"


class SettingError(ValueError):
    """A value is refused; the message names the setting and says what to fix."""


def quoted(value: str) -> str:
    """A text in a message, quoted as the CRD's CEL rules quote it (``cel_quoted``):
    backslashes doubled, line breaks (which the apiserver's messages cannot hold) as
    ``\\n``."""
    return "'" + value.replace("\\", "\\\\").replace("\n", "\\n") + "'"


class Cel(str):
    """A CEL expression, in a message made of texts and expressions (``CelRule.of``)."""


def cel_quoted(expression: str) -> Cel:
    """The CEL that renders ``expression``, a string, as ``quoted`` does."""
    return Cel(f'"\'" + {expression}.replace("\\\\", "\\\\\\\\").replace("\\n", "\\\\n") + "\'"')


def shown(value: object) -> str:
    """A value in a message: a text quoted (whole, as the CRD's rules show it), a whole
    number as CEL's ``string()`` writes it, anything else as Python writes it, cut to 60
    characters."""
    if isinstance(value, str):
        return quoted(value)
    try:
        return f"{value!r:.60}"
    except ValueError:  # an int of more digits than Python will write
        return "(a number too long to show)"


@dataclasses.dataclass(frozen=True)
class CelRule:
    """A rule of the CRD. ``message_expression`` writes the message the Python check
    raises, value included; ``message`` is the same without the value (the apiserver's
    fallback, and what the README's reference says)."""

    rule: str
    message: str
    message_expression: str | None = None

    @classmethod
    def of(cls, rule: str, message: str, *parts: str) -> CelRule:
        """A rule whose message is ``parts`` joined: texts, and ``Cel`` expressions."""
        if not parts:
            return cls(rule, message)
        expression = " + ".join(p if isinstance(p, Cel) else f'"{p}"' for p in parts)
        return cls(rule, message, expression)


# -- settings ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting(Generic[T]):
    """One setting of the sidecar. ``parse`` reads its text (a flag's or a variable's
    value) and ``check`` a value from elsewhere (a SyncConfig field, the Python API);
    both raise SettingError with the same message for the same fault. ``render`` writes
    a value as ``parse`` reads it: what the operator puts in the environment."""

    name: str
    default: T
    help: str
    #: The SyncConfig field (``spec.<crd>``) it comes from, where one does.
    crd: str | None = dataclasses.field(default=None, kw_only=True)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> T:
        return self.check(text)

    def check(self, value: object) -> T:
        raise NotImplementedError

    def render(self, value: T) -> str:
        return str(value)

    def cel(self) -> list[CelRule]:
        """The CRD's rules of the field ``crd`` (none where the schema alone says it)."""
        return []

    def refuse(self, what: str, value: object) -> SettingError:
        return SettingError(f"{self.name} must be {what}, got {shown(value)}")


def _number(text: str) -> int | float | str:
    """``text`` as a number where it is one, for the message about it."""
    for kind in (int, float):
        try:
            return kind(text.strip())
        except ValueError:
            continue
    return text


@dataclasses.dataclass(frozen=True)
class WholeSeconds(Setting[int]):
    """A duration in whole seconds from ``least`` to ``most``: the CRD's integers."""

    least: int = 1
    most: int = 604800
    hint: str = ""

    @property
    def what(self) -> str:
        return f"a whole number of seconds from {self.least} to {self.most}{self.hint}"

    def parse(self, text: str) -> int:
        return self.check(_number(text))

    def check(self, value: object) -> int:
        whole: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            whole = value
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            whole = int(value)
        if whole is None or not self.least <= whole <= self.most:
            raise self.refuse(self.what, value)
        return whole

    def cel(self) -> list[CelRule]:
        return [
            # format(), not string(self): the apiserver estimates string() of an integer
            # as unbounded, over its cost budget.
            CelRule(
                f"self >= {self.least} && self <= {self.most}",
                f"{self.name} must be {self.what}",
                f'"{self.name} must be {self.what}, got %d".format([self])',
            )
        ]


@dataclasses.dataclass(frozen=True)
class Seconds(Setting[float]):
    """A positive, finite duration in seconds (the sidecar's own settings); ``zero_means``
    names what 0 does where 0 is allowed."""

    zero_means: str = ""

    def parse(self, text: str) -> float:
        return self.check(_number(text))

    def check(self, value: object) -> float:
        number = float(value) if isinstance(value, int | float) and value is not True else None
        if value is False:
            number = None
        if number == 0 and self.zero_means:
            return 0.0
        if number is None or not math.isfinite(number) or not number > 0:
            zero = f", or 0 ({self.zero_means})" if self.zero_means else ""
            raise self.refuse(f"a positive number of seconds{zero}", value)
        return number


@dataclasses.dataclass(frozen=True)
class Count(Setting[int]):
    """A whole number of at least ``least`` (``unit`` and ``why`` for the message)."""

    least: int = 1
    why: str = ""

    def parse(self, text: str) -> int:
        return self.check(_number(text))

    def check(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < self.least:
            least = f"{self.least // 2**20} MiB" if self.least >= 2**20 else str(self.least)
            raise self.refuse(f"a whole number, at least {least}{self.why}", value)
        return value


@dataclasses.dataclass(frozen=True)
class OptionalCount(Setting[int | None]):
    """A whole number of at least ``least``, or None (unset, "" in the environment):
    ``unset_means`` says what None does."""

    least: int = 1
    unset_means: str = ""

    def parse(self, text: str) -> int | None:
        return None if not text.strip() else self.check(_number(text))

    def check(self, value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < self.least:
            raise self.refuse(f"a whole number, at least {self.least}", value)
        return value

    def render(self, value: int | None) -> str:
        return "" if value is None else str(value)

    def cel(self) -> list[CelRule]:
        what = f"a whole number, at least {self.least}"
        return [
            CelRule(
                f"self >= {self.least}",
                f"{self.name} must be {what}",
                f'"{self.name} must be {what}, got %d".format([self])',
            )
        ]


#: The suffixes of a Kubernetes quantity of bytes (no milli: a byte is whole).
_BYTE_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
BYTE_QUANTITY = "^[0-9]+([.][0-9]+)?(k|M|G|T|Ki|Mi|Gi|Ti)?$"


@dataclasses.dataclass(frozen=True)
class ByteRate(Setting[int | None]):
    """Bytes per second as a Kubernetes-style quantity ("50Mi", "5M", "1048576"); 0 or
    unset (None, "" in the environment) means no limit. Held as whole bytes per second."""

    least: int = 1024

    @property
    def what(self) -> str:
        return (
            "a quantity of bytes per second such as 50Mi, 200M or 1048576, at least 1Ki "
            "(0: no limit)"
        )

    def parse(self, text: str) -> int | None:
        return self.check(text) if text.strip() else None

    def check(self, value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            number: float | None = value
        elif isinstance(value, str):
            number = _byte_quantity(value.strip())
        else:
            number = None
        if number is None or not (number == 0 or number >= self.least):
            raise self.refuse(self.what, value)
        return int(number)

    def render(self, value: int | None) -> str:
        return "" if value is None else str(value)

    def cel(self) -> list[CelRule]:
        # The schema's pattern refuses what is no quantity; below 1Ki the webhook does.
        message = f"{self.name} must be {self.what}"
        return [
            CelRule.of(
                f"self.matches('{BYTE_QUANTITY}')", message, message + ", got ", cel_quoted("self")
            )
        ]


def _byte_quantity(text: str) -> float | None:
    if not text:
        return 0
    match = re.match(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)$", text)
    if match is None or match.group(2) not in _BYTE_SUFFIXES:
        return None
    return float(match.group(1)) * _BYTE_SUFFIXES[match.group(2)]


@dataclasses.dataclass(frozen=True)
class Flag(Setting[bool]):
    TRUE = frozenset({"1", "true", "yes", "on"})
    FALSE = frozenset({"0", "false", "no", "off"})

    def parse(self, text: str) -> bool:
        lowered = text.strip().lower()
        if lowered in self.TRUE | self.FALSE:
            return lowered in self.TRUE
        raise self.refuse("true or false", text)

    def check(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise self.refuse("true or false", value)
        return value

    def render(self, value: bool) -> str:
        return "true" if value else "false"


@dataclasses.dataclass(frozen=True)
class Choice(Setting[str]):
    choices: tuple[str, ...] = ()

    def check(self, value: object) -> str:
        if value not in self.choices:
            raise self.refuse("one of " + ", ".join(self.choices), value)
        assert isinstance(value, str)
        return value


@dataclasses.dataclass(frozen=True)
class Text(Setting[T]):
    """A text checked by ``checker`` (which raises SettingError saying what to fix)."""

    checker: Callable[[Setting[Any], str], T] = dataclasses.field(
        default=lambda setting, text: text, kw_only=True
    )
    rules: Callable[[Setting[Any]], list[CelRule]] = dataclasses.field(
        default=lambda setting: [], kw_only=True
    )

    def check(self, value: object) -> T:
        if not isinstance(value, str):
            raise self.refuse("a text", value)
        return self.checker(self, value)

    def cel(self) -> list[CelRule]:
        return self.rules(self)


@dataclasses.dataclass(frozen=True)
class Globs(Setting[tuple[str, ...]]):
    """Globs of root-relative paths: a list in the CRD, comma-separated in the environment."""

    def parse(self, text: str) -> tuple[str, ...]:
        return self.check([part for part in text.split(",") if part])

    most: int = 64
    COMMA = "exclude: a glob must not contain ',' (the environment separates globs with it)"

    def check(self, value: object) -> tuple[str, ...]:
        items = tuple(value) if isinstance(value, list | tuple) else None
        if items is None or not all(isinstance(glob, str) and glob for glob in items):
            raise self.refuse("a list of non-empty globs", value)
        if len(items) > self.most:
            raise SettingError(f"{self.name} must hold at most {self.most} globs, got {len(items)}")
        for glob in items:
            at_most(self, glob, 256)
            if "," in glob:
                raise SettingError(f"{self.COMMA}, got {quoted(glob)}")
        return items

    def render(self, value: tuple[str, ...]) -> str:
        return ",".join(value)

    def cel_item(self) -> list[CelRule]:
        """The rules of each item of the CRD's list."""
        return [
            CelRule.of(
                "!self.contains(',')",
                self.COMMA,
                self.COMMA + ", got ",
                cel_quoted("self"),
            )
        ]


@dataclasses.dataclass(frozen=True)
class Address(Setting[str]):
    """``host:port`` to listen on (an IPv6 host in brackets: ``[::]:9746``)."""

    def check(self, value: object) -> str:
        text = value if isinstance(value, str) else ""
        _host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise self.refuse("HOST:PORT, e.g. 0.0.0.0:9746", value)
        return text


def at_most(setting: Setting[Any], text: str, most: int) -> None:
    """A text's length, which the CRD's schema bounds (``maxLength``) before any rule."""
    if len(text) > most:
        raise SettingError(f"{setting.name} must be at most {most} characters, got {len(text)}")
