import ast

import pytest

from cxrgen.readers.listtext import ListTextError, parse_list_text


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
