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


def test_formatted_text_is_recognised_and_used_as_is():
    text = formatter.format_prompt("a cat", system_prompt="S", think_mode="empty")
    assert formatter.is_formatted(text) and formatter.is_formatted("\n  " + text)
    assert formatter.encoder_text(text) == (text, "formatted")
    assert formatter.encoder_text("\n " + text) == (text, "formatted")  # whitespace before <|im_start|> dropped
    assert formatter.encoder_text("a cat") == (COMFY_TEMPLATE.format("a cat"), "default")
    assert not formatter.is_formatted("a cat <|im_start|>")


def test_prompt_char_span_finds_the_last_user_turn():
    history = (formatter.Turn("first", "ok"),)
    text = formatter.format_prompt("the prompt", system_prompt="S", think_mode="with content", thinking="t",
                                   assistant_prefill="p", history=history)
    start, end = formatter.prompt_char_span(text)
    assert text[start:end] == "the prompt"
    assert formatter.prompt_char_span("<|im_start|>system\nS<|im_end|>\n") is None
    assert formatter.prompt_char_span("<|im_start|>user\nopen") == (len("<|im_start|>user\n"), len("<|im_start|>user\nopen"))


def test_chat_chains_turns_and_keeps_the_system_prompt():
    chat = formatter.Chat().then("a cat", "A cat.", "S")
    chat = chat.then("now blue", "")
    assert chat == formatter.Chat("S", (formatter.Turn("a cat", "A cat."), formatter.Turn("now blue", "")))
    text = formatter.format_prompt("and bigger", chat.system_prompt, history=chat.turns)
    assert text.startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na cat<|im_end|>\n"
                           "<|im_start|>assistant\nA cat.<|im_end|>\n")
    assert text.endswith("<|im_start|>user\nand bigger<|im_end|>\n<|im_start|>assistant\n")


def test_system_prompt_combines_preset_and_text_and_falls_back_to_history():
    assert formatter.combine_system_prompts("", "") == ""
    assert formatter.combine_system_prompts("Preset.", "") == "Preset."
    assert formatter.combine_system_prompts("Preset.", "Mine.") == "Preset.\nMine."
    assert formatter.combine_system_prompts("", "", "From history.") == "From history."
    assert formatter.combine_system_prompts("", "Mine.", "From history.") == "Mine."


def test_presets_are_text_files_and_later_folders_win(tmp_path, repo):
    pack, user = tmp_path / "pack", tmp_path / "user"
    pack.mkdir(), user.mkdir()
    (pack / "a.txt").write_text("from pack\n")
    (pack / "b.txt").write_text("b\n")
    (user / "a.txt").write_text("from user")
    (user / "notes.md").write_text("not a preset")
    assert formatter.read_presets([pack, user, tmp_path / "missing"]) == {"a": "from user", "b": "b"}
    shipped = formatter.read_presets([repo / "presets" / "system_prompts"])
    assert len(shipped) >= 4 and all(text.strip() and "\n\n" not in text for text in shipped.values())
