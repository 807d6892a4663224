"""Registries: where the parts that plug into a seam (release readers, training methods, evaluation metrics) are
listed by name. A part registers itself with a decorator in its own module; the seam's package imports that module
(the one registration line), and commands offer every registered name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str) -> None:
        self.what = what  # "release reader", ... for error messages
        self._parts: dict[str, T] = {}

    def register(self, part: T) -> T:
        """Decorator: list `part` under its `name` attribute."""
        name = part.name  # type: ignore[attr-defined]
        if getattr(part, "Options", None) is not None and not name.isidentifier():
            # its options are a settings group named after it (--<name>.<option>, a YAML mapping)
            raise ValueError(f"a {self.what} with options must be named as a Python identifier, not {name!r}")
        if name in self._parts and self._parts[name] is not part:
            raise ValueError(f"two {self.what}s are named {name!r}")
        self._parts[name] = part
        return part

    def __getitem__(self, name: str) -> T:
        try:
            return self._parts[name]
        except KeyError:
            raise KeyError(f"no {self.what} named {name!r}; known: {', '.join(self._parts)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def items(self) -> list[tuple[str, T]]:
        return list(self._parts.items())

    def values(self) -> list[T]:
        return list(self._parts.values())

    def names(self) -> Any:
        """The registered names as a Literal type: a config field of this type offers them as choices."""
        return Literal[tuple(self._parts)]  # type: ignore[valid-type]

    def option_groups(self, help_of: Callable[[T], str]) -> dict[str, tuple[type, str]]:
        """{name: (options dataclass, help)} of the parts that have options, for `config.with_groups`."""
        return {
            name: (part.Options, help_of(part))  # type: ignore[attr-defined]
            for name, part in self._parts.items()
            if getattr(part, "Options", None) is not None
        }

    def unregister(self, name: str) -> None:
        """Tests register doubles and take them out again."""
        self._parts.pop(name, None)
