"""core.formatter: byte-exact chat formatting and think blocks."""

import pytest

from core import formatter

COMFY_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"  # comfy/text_encoders/z_image.py


def test_default_is_comfyui_template_byte_for_byte():
    for prompt in ["a cat", "", "multi\nline {braces} \\(x\\)", "ünïcødé 猫"]:
        assert formatter.format_prompt(prompt).encode() == COMFY_TEMPLATE.format(prompt).encode()


def test_empty_think_block_follows_the_assistant_header():
    text = formatter.format_prompt("a cat", think_mode="empty")
    assert text == COMFY_TEMPLATE.format("a cat") + "<think>\n\n</think>\n\n"


def test_think_with_content_and_prefill():
    text = formatter.format_prompt("a cat", think_mode="with content", thinking="\nsoft light\n", assistant_prefill="Sure:")
    assert text.endswith("<|im_start|>assistant\n<think>\nsoft light\n</think>\n\nSure:")


def test_system_prompt_and_history_come_first_in_order():
    text = formatter.format_prompt("now a dog", system_prompt="You draw.", history=(formatter.Turn("a cat", "ok"),))
    assert text == ("<|im_start|>system\nYou draw.<|im_end|>\n"
                    "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
                    "<|im_start|>user\nnow a dog<|im_end|>\n<|im_start|>assistant\n")


def test_content_span_points_at_the_prompt():
    kwargs = dict(system_prompt="S", think_mode="empty", history=(formatter.Turn("u", "a"),))
    text = formatter.format_prompt("the prompt", **kwargs)
    start, end = formatter.content_char_span("the prompt", **kwargs)
    assert text[start:end] == "the prompt"


def test_unknown_think_mode_is_named():
    with pytest.raises(ValueError, match="think_mode"):
        formatter.format_prompt("x", think_mode="sometimes")
