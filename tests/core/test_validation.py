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


@pytest.mark.parametrize("prefix, words", [
    ("a\x00b", ["filename_prefix", "U+0000"]),
    ("../../etc/passwd", ["filename_prefix", "leaves the output folder"]),
    ("/abs/name", ["leaves the output folder"]),
    ("word " * 4000, ["filename_prefix", "bytes"]),
])
def test_bad_output_prefixes_are_named(prefix, words):
    with pytest.raises(ValueError) as err:
        v.output_prefix(prefix, "filename_prefix")
    for word in words:
        assert word in str(err.value)


def test_save_image_patterns_pass_as_output_prefixes():
    for prefix in ("ComfyUI", "zimage_lab/%date:yyyy-MM-dd%/img", "%EmptyImage.width%_x", "", " \t\n "):
        assert v.output_prefix(prefix) == prefix


class _Patcher:
    def __init__(self, device_type):
        self.load_device = type("Device", (), {"type": device_type})()


def test_the_largest_seed_is_refused_only_where_the_cpu_noise_sampler_overflows():
    top = 2**64 - 1
    with pytest.raises(ValueError, match="seed is 18446744073709551615.*18,446,744,073,709,551,614 or less"):
        v.noise_seed(top, "seed", _Patcher("cpu"))
    with pytest.raises(ValueError, match="seed"):
        v.noise_seed(top, "seed", None)  # not a MODEL: counted as the CPU
    assert v.noise_seed(top, "seed", _Patcher("cuda")) == top
    assert v.noise_seed(top - 1, "seed", _Patcher("cpu")) == top - 1
