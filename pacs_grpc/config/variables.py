"""Settings declared once: each field names its environment variable, bounds and help.

A settings dataclass declares a field as
``max_page_size: int = field(default=500, metadata=env("MAX_PAGE_SIZE", "...", minimum=1))``.
Reading the environment, checking bounds and the README's configuration table
(``python -m tools.settings_table``) all come from that one declaration, so none
can drift from another. A field with ``repr=False`` is a secret: its value is never
printed and the README shows no default for it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_D = TypeVar("_D", bound="DataclassInstance")
_METADATA_KEY: Final = "pacs_grpc.config.variable"
# A field without a default: its variable is required.
REQUIRED: Final = dataclasses.MISSING
_DECLARED: Final = object()


class ConfigError(ValueError):
    """A configuration variable is missing or invalid."""


@dataclass(frozen=True)
class Kind:
    """How a variable's text becomes a value.

    `parse` gets the stripped, non-empty text and raises ValueError with the rest of a
    sentence that starts with the variable's name ("must be an integer, got 'x'"); it
    never repeats a text that could be a credential. `accepts` says the same for the README.
    """

    parse: Callable[[str], Any]
    accepts: str = ""
    # Integers and numbers are checked against a variable's minimum and maximum.
    bounded: bool = False


@dataclass(frozen=True)
class Variable:
    """What a settings field's metadata says about its environment variable."""

    name: str
    help: str
    kind: Kind | None = None  # None: the field's type decides (int, float, bool, str, words)
    minimum: float | None = None
    maximum: float | None = None
    # For the README, when the field's default is not what an unset variable means.
    shown_default: str = ""


def env(
    name: str,
    help: str,
    *,
    kind: Kind | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    shown_default: str = "",
) -> dict[str, Variable]:
    """A field's metadata: the variable it is read from."""
    return {_METADATA_KEY: Variable(name, help, kind, minimum, maximum, shown_default)}


def _integer(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"must be an integer, got {raw!r}") from None


def _number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"must be a number, got {raw!r}")
    return value


_BOOLEAN_WORDS: Final = {
    "1": True,
    "true": True,
    "yes": True,
    "0": False,
    "false": False,
    "no": False,
}


def _boolean(raw: str) -> bool:
    try:
        return _BOOLEAN_WORDS[raw.lower()]
    except KeyError:
        raise ValueError(f"must be true or false, got {raw!r}") from None


def words(raw: str) -> tuple[str, ...]:
    return tuple(raw.replace(",", " ").split())


INTEGER: Final = Kind(_integer, bounded=True)
# A number without a minimum must be greater than 0: they are durations.
NUMBER: Final = Kind(_number, bounded=True)
BOOLEAN: Final = Kind(_boolean, "`true` or `false`")
TEXT: Final = Kind(str)
WORDS: Final = Kind(words, "comma-separated")
_KIND_OF_TYPE: Final = {
    "int": INTEGER,
    "float": NUMBER,
    "bool": BOOLEAN,
    "str": TEXT,
    "tuple[str, ...]": WORDS,
}


def choice(*choices: str) -> Kind:
    """One of `choices`, in any case; the value is spelled as in `choices`."""
    spelled = {c.upper(): c for c in choices}

    def parse(raw: str) -> str:
        if raw.upper() not in spelled:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return spelled[raw.upper()]

    *others, last = [f"`{c}`" for c in choices]
    return Kind(parse, f"{', '.join(others)} or {last}" if others else last)


@dataclass(frozen=True)
class Setting:
    """A variable together with the field that declares it."""

    variable: Variable
    attribute: str
    kind: Kind
    default: Any  # REQUIRED when the variable must be set
    secret: bool

    @property
    def name(self) -> str:
        return self.variable.name

    def read(self, env: Mapping[str, str], default: Any = _DECLARED) -> Any:
        """The variable's value; when it is unset or blank, `default` or the declared one."""
        raw = env.get(self.name, "").strip()
        if not raw:
            default = self.default if default is _DECLARED else default
            if default is REQUIRED:
                raise ConfigError(f"{self.name} is required but not set")
            return default
        try:
            value = self.kind.parse(raw)
        except ValueError as error:
            raise ConfigError(f"{self.name} {error}") from None
        if self.kind.bounded and not self.within_bounds(value):
            raise ConfigError(f"{self.name} must be {self.describe_bounds()}, got {value}")
        return value

    def within_bounds(self, value: float) -> bool:
        low, high = self.variable.minimum, self.variable.maximum
        if low is None and self.kind is NUMBER:
            # Numbers are durations: without a minimum, any positive one.
            return value > 0 and (high is None or value <= high)
        return (low is None or value >= low) and (high is None or value <= high)

    def describe_bounds(self, show: Callable[[float], str] | None = None) -> str:
        """The bounds in words: between 1 and 10, at least 1, ... ("" when none apply)."""
        low, high = self.variable.minimum, self.variable.maximum
        show = show or _plain
        if not self.kind.bounded:
            return ""
        if low is None and self.kind is NUMBER:
            return "greater than 0" + (f" and at most {show(high)}" if high is not None else "")
        if low is not None and high is not None:
            return f"between {show(low)} and {show(high)}"
        if low is not None:
            return f"at least {show(low)}"
        return f"at most {show(high)}" if high is not None else "any integer"


def _plain(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def settings_of(cls: type[DataclassInstance]) -> tuple[Setting, ...]:
    """The variables `cls` reads itself, in field order (nested settings not included)."""
    found = []
    for field in dataclasses.fields(cls):
        variable = field.metadata.get(_METADATA_KEY)
        if variable is None:
            continue
        kind = variable.kind or _KIND_OF_TYPE.get(str(field.type))
        if kind is None:
            raise TypeError(f"{cls.__name__}.{field.name}: no kind reads {field.type}")
        default = field.default
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        found.append(Setting(variable, field.name, kind, default, secret=not field.repr))
    return tuple(found)


def nested_groups(cls: type[DataclassInstance]) -> dict[str, type[DataclassInstance]]:
    """The fields of `cls` that are settings dataclasses of their own, by attribute."""
    hints = typing.get_type_hints(cls)
    return {
        field.name: hints[field.name]
        for field in dataclasses.fields(cls)
        if _METADATA_KEY not in field.metadata and dataclasses.is_dataclass(hints[field.name])
    }


def all_settings(cls: type[DataclassInstance]) -> Iterator[Setting]:
    """Every variable `cls` and the settings nested in it read, in field order."""
    own = {setting.attribute: setting for setting in settings_of(cls)}
    groups = nested_groups(cls)
    for field in dataclasses.fields(cls):
        if field.name in own:
            yield own[field.name]
        elif field.name in groups:
            yield from all_settings(groups[field.name])


def setting(cls: type[DataclassInstance], attribute: str) -> Setting:
    return next(s for s in settings_of(cls) if s.attribute == attribute)


def read_values(
    cls: type[DataclassInstance],
    env: Mapping[str, str],
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields of `cls` that come from variables, read; `defaults` replace declared ones."""
    replaced = defaults or {}
    return {
        s.attribute: s.read(env, replaced.get(s.attribute, _DECLARED)) for s in settings_of(cls)
    }


def read_group(cls: type[_D], env: Mapping[str, str]) -> _D:
    """A settings dataclass whose fields all come from variables."""
    return cls(**read_values(cls, env))
