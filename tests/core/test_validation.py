"""core.validation: shared input checks name the input and refuse before any work."""

import math

import pytest

from core import validation as v


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_named(value):
    with pytest.raises(ValueError, match="^cfg is .*finite"):
        v.finite(value, "cfg")
    assert v.finite(2, "cfg") == 2.0


def test_text_and_counts_are_bounded():
    assert v.bounded_text("a" * 10, "prompt", 10) == "a" * 10
    with pytest.raises(ValueError, match="prompt has 11 characters; at most 10"):
        v.bounded_text("a" * 11, "prompt", 10)
    with pytest.raises(ValueError, match="prompt has 5,000 words; at most 256"):
        v.bounded_count(5000, "prompt", 256, "words")


@pytest.mark.parametrize("prefix, words", [
    ("", "is empty"), ("   ", "is empty"), ("a\x00b", "U+0000"), ("a\x1b[31m", "U+001B"), ("x\u202ey", "U+202E"),
    ("../../etc/x", "leaves its folder"), ("/abs/x", "leaves its folder"), ("a//b", "empty folder name"),
    ("word " * 4000, "bytes; at most 120"), ('a:b', "U+003A"),
])
def test_bad_filename_prefixes_are_named(prefix, words):
    with pytest.raises(ValueError, match="filename_prefix") as err:
        v.filename_prefix(prefix)
    assert words in str(err.value)


def test_good_filename_prefixes_pass():
    assert v.filename_prefix(" zimage_lab/steering ") == "zimage_lab/steering"
    assert v.filename_prefix("狐/fox-1.2_x") == "狐/fox-1.2_x"


def test_control_characters_are_named_but_tab_and_newline_pass():
    assert v.no_control_characters("a\tb\nc", "text") == "a\tb\nc"
    with pytest.raises(ValueError, match=r"text contains control characters \(U\+0007\)"):
        v.no_control_characters("a\x07", "text")
