"""core.inspector: request checks, the text the encoder reads, and the length budget."""

import pytest

from core import inspector

COMFY_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"  # comfy/text_encoders/z_image.py


def chars(text):
    """A stand-in tokenizer: one token per character (the budget logic does not care which tokenizer)."""
    return [(ord(c), c) for c in text], text


def test_default_request_is_the_comfyui_template_with_the_prompt_span():
    text, (start, end) = inspector.formatted_text(inspector.Request("a red fox"))
    assert text == COMFY_TEMPLATE.format("a red fox")
    assert text[start:end] == "a red fox"


def test_chat_settings_reach_the_text():
    request = inspector.Request("a fox", system_prompt="You paint.", think_mode="with content", thinking="warm light",
                                assistant_prefill="Sure:")
    text, (start, end) = inspector.formatted_text(request)
    assert text.startswith("<|im_start|>system\nYou paint.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\n<think>\nwarm light\n</think>\n\nSure:")
    assert text[start:end] == "a fox"


def test_raw_text_is_used_as_is_and_auto_follows_the_encoder_node():
    formatted = COMFY_TEMPLATE.format("a cat")
    assert inspector.formatted_text(inspector.Request("a cat", raw=True)) == ("a cat", (0, 5))
    text, (start, end) = inspector.formatted_text(inspector.Request("\n " + formatted, raw="auto"))
    assert text == formatted and text[start:end] == "a cat"  # leading whitespace dropped, as the encoder does
    text, (start, end) = inspector.formatted_text(inspector.Request("a cat", raw="auto"))
    assert text == formatted and text[start:end] == "a cat"


def test_a_preset_comes_before_the_typed_system_prompt():
    presets = {"painterly": "You paint in oils."}
    text, _ = inspector.formatted_text(inspector.Request("a fox", system_prompt="Warm light.", preset="painterly"), presets)
    assert text.startswith("<|im_start|>system\nYou paint in oils.\nWarm light.<|im_end|>\n<|im_start|>user\na fox")
    assert inspector.formatted_text(inspector.Request("a fox", preset="none"), presets)[0] == COMFY_TEMPLATE.format("a fox")
    with pytest.raises(ValueError, match="'preset' is 'missing': choose one of none, painterly"):
        inspector.formatted_text(inspector.Request("a fox", preset="missing"), presets)


def test_padding_to_32():
    assert [inspector.padded_length(n) for n in (0, 1, 31, 32, 33, 512, 513)] == [0, 32, 32, 32, 64, 512, 544]


def test_diffusers_limit_is_the_longest_padded_caption_its_rope_table_holds():
    # diffusers: axis-0 table of 1536 positions; padded caption L (multiple of 32) uses 1..L, image sits at L + 1.
    longest = max(L for L in range(0, 1536, 32) if L + 1 < 1536)
    assert dict((l.name, l.tokens) for l in inspector.LIMITS) == {"trained": 512, "diffusers": longest}


@pytest.mark.parametrize("count, level, over", [
    (1, "ok", []), (512, "ok", []), (513, "warn", ["trained"]), (1504, "warn", ["trained"]),
    (1505, "over", ["trained", "diffusers"]), (3000, "over", ["trained", "diffusers"]),
])
def test_budget_levels(count, level, over):
    budget = inspector.budget(count)
    assert budget["level"] == level and budget["over_limits"] == over
    assert budget["over_budget"] == (count > 512) and budget["trained_length"] == 512
    assert budget["padded_count"] == inspector.padded_length(count)


def test_inspect_counts_what_the_tokenizer_returns():
    result = inspector.inspect(inspector.Request("ab"), chars)
    assert result["count"] == len(COMFY_TEMPLATE.format("ab")) == len(result["tokens"]) == len(result["ids"])
    assert "".join(result["tokens"]) == result["text"] == result["encoder_text"] and not result["rewritten"]
    rewritten = inspector.inspect(inspector.Request("ab"), lambda t: chars(t.upper()))
    assert rewritten["rewritten"] and rewritten["encoder_text"] == rewritten["text"].upper()


@pytest.mark.parametrize("payload, words", [
    ([], "JSON object"),
    ({}, "'prompt' is missing"),
    ({"prompt": 3}, "'prompt' must be a string"),
    ({"prompt": "a", "system_prompt": ["x"]}, "'system_prompt' must be a string"),
    ({"prompt": "a", "preset": 2}, "'preset' must be a string"),
    ({"prompt": "a", "think_mode": "deep"}, "'think_mode' is 'deep'"),
    ({"prompt": "a", "raw": 1}, "'raw' is 1"),
    ({"prompt": "a", "raw": "yes"}, "'raw' is 'yes'"),
])
def test_bad_requests_name_the_field(payload, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        inspector.Request.from_json(payload)


def test_request_defaults_and_nulls():
    request = inspector.Request.from_json({"prompt": "a", "system_prompt": None, "think_mode": "", "raw": "auto",
                                           "preset": ""})
    assert request == inspector.Request("a", raw="auto")
