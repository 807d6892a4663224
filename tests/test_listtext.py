import ast

import pytest

from cxrgen.prepare.readers.listtext import ListTextError, parse_list_text


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "['pacemaker', ' chronic changes']",
        "[['normal'], ['cardiomegaly', 'loc cardiac'], ['unchanged']]",
        '["it\'s", \'say "hi"\']',
        "['a\\\\b', 'tab\\there']",
        "[[], ['x'],]",
    ],
)
def test_matches_python(text):
    assert parse_list_text(text) == ast.literal_eval(text)


def test_bare_nan_is_none():
    assert parse_list_text("[nan, ['unchanged'], None]") == [None, ["unchanged"], None]


@pytest.mark.parametrize(
    "text",
    ["['a', 'b'", "'a'", "['a' 'b']", "['a',, 'b']", "['a'] junk", "[os.system('x')]", "[1, 2]", "]"],
)
def test_malformed(text):
    with pytest.raises(ListTextError):
        parse_list_text(text)


CELLS = [
    "[nan, ['unchanged'], ['COPD signs', ' loc basal']]",
    "[['a'],nan,[ ]]",
    "[[],[]]",
    "[None]",
    "[['a'],]",
    "[[['deep']]]",
    "['a', ['b']]",
    "[['nan']]",
    "[['a'], 'b']",
    "  [ ]  ",
    "[\"it's\", 'x']",
    "['a\\\\'b']",
    "[['a'] ['b']]",
    "[naN]",
    "[['a'], nan nan]",
    "['a'] x",
    "[['a', 'b'",
    "[['a'], [1]]",
]


@pytest.mark.parametrize("text", CELLS)
def test_fast_paths_read_as_the_scanner_does(text, monkeypatch):
    """PadChest's two cell shapes are matched by regular expressions; everything else by the scanner. Both
    must read (or refuse) every cell alike."""
    from cxrgen.prepare.readers import listtext

    def read(t):
        try:
            return parse_list_text(t)
        except ListTextError:
            return "refused"

    fast = read(text)
    monkeypatch.setattr(listtext, "_FLAT", listtext.re.compile(r"(?!)"))
    monkeypatch.setattr(listtext, "_NESTED", listtext.re.compile(r"(?!)"))
    assert read(text) == fast
