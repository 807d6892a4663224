"""Parse Python-list text as PadChest writes it: `['a', ' b']`, nested lists, and bare `nan` items.

`ast.literal_eval` rejects `nan` and is slow on 160k rows; this scanner accepts exactly lists of quoted strings,
nested lists, `nan` and `None` (both read as None), and nothing else.
"""

from __future__ import annotations

import ast
import re

_TOKEN = re.compile(
    r"""\s*(?:(?P<open>\[)|(?P<close>\])|(?P<comma>,)|(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(?P<null>nan|None|NaN))""",
    re.S,
)

ListValue = list["ListValue"] | str | None


class ListTextError(ValueError):
    """The text is not a list of strings."""


# The cells PadChest writes, matched whole by one regular expression each (several times faster than the
# general scanner below): a flat list of quoted strings (Labels, the flat sentence layout), and a list of such
# lists and bare nan items (the nested layout). Anything else goes to the scanner, which names its error.
_STRING = r"'(?:[^'\\]|\\.)*'" + "|" + r'"(?:[^"\\]|\\.)*"'
_FLAT_LIST = rf"\[\s*(?:(?:{_STRING})\s*(?:,\s*(?:{_STRING})\s*)*)?\]"
_FLAT = re.compile(_FLAT_LIST, re.S)
_NESTED_ITEM = rf"{_FLAT_LIST}|nan|None|NaN"
_NESTED = re.compile(rf"\[\s*(?:(?:{_NESTED_ITEM})\s*(?:,\s*(?:{_NESTED_ITEM})\s*)*)?\]", re.S)
_SUBLIST = re.compile(rf"{_FLAT_LIST}|nan|None|NaN", re.S)
_ITEM = re.compile(r"'((?:[^'\\]|\\.)*)'" + "|" + r'"((?:[^"\\]|\\.)*)"', re.S)  # the text inside the quotes


def parse_list_text(text: str) -> list[ListValue]:
    """Parse one cell. Raises ListTextError with the position of the first problem."""
    text = text.strip()
    if _FLAT.fullmatch(text):
        return _strings(text)
    if _NESTED.fullmatch(text):
        inner = text[1:-1]
        return [_strings(m.group(0)) if m.group(0)[0] == "[" else None for m in _SUBLIST.finditer(inner)]
    if not text.startswith("["):
        raise ListTextError(f"expected a list starting with '[', got {text[:30]!r}")
    stack: list[list[ListValue]] = []
    result: list[ListValue] | None = None
    expect_item = True  # after '[' or ',': an item or ']' may follow; after an item: ',' or ']'
    end = 0
    for m in _TOKEN.finditer(text):
        if m.start() != end:  # finditer skips what does not match: that is an error here
            break
        end = m.end()
        kind = m.lastgroup
        if result is not None:
            raise ListTextError(f"text after the closing ']' at {m.start()}")
        if kind == "open":
            if not expect_item:
                raise ListTextError(f"missing ',' before '[' at {m.start()}")
            new: list[ListValue] = []
            if stack:
                stack[-1].append(new)
            stack.append(new)
        elif kind == "close":
            if not stack:
                raise ListTextError(f"unbalanced ']' at {m.start()}")
            done = stack.pop()
            if not stack:
                result = done
        elif kind == "comma":
            if expect_item or not stack:
                raise ListTextError(f"unexpected ',' at {m.start()}")
        else:
            if not expect_item or not stack:
                raise ListTextError(f"missing ',' before item at {m.start()}")
            stack[-1].append(_string(m.group("str")) if kind == "str" else None)
            expect_item = False
            continue
        expect_item = kind != "close"
    if text[end:].strip():
        raise ListTextError(f"unexpected text at {end}: {text[end : end + 30]!r}")
    if result is None:
        raise ListTextError("unterminated list: missing ']'")
    return result


def _strings(flat: str) -> list[ListValue]:
    """The items of a flat list of quoted strings (already matched whole)."""
    if "\\" in flat:
        return [_string(m.group(0)) for m in _ITEM.finditer(flat)]
    return [single or double for single, double in _ITEM.findall(flat)]


def _string(token: str) -> str:
    if "\\" not in token:
        return token[1:-1]
    return ast.literal_eval(token)  # a single string literal: safe
