"""Prompt Formatter on a real ComfyUI: byte-exact default, token counts, think blocks, turns, presets."""

import pytest
import torch

from prompt_graphs import TEMPLATE, encoder, expect_error, formatter, qwen_tokenizer, read_probe, with_probes

pytestmark = pytest.mark.integration

def run_formatters(lab, nodes: dict) -> dict:
    """{key: (text, token_count)} of each formatter, read from its UI output."""
    result = lab.run(with_probes(nodes, "fmt"))
    return {k: (result.outputs[k]["formatted_text"][0], result.outputs[k]["token_count"][0]) for k in nodes
            if nodes[k]["class_type"] == "ZImageLabPromptFormatter"}


@pytest.fixture(scope="module")
def tokenizer(comfyui_path):
    return qwen_tokenizer(comfyui_path)


def test_default_text_is_comfyui_template_byte_for_byte_and_counts_its_tokens(lab, tokenizer):
    prompts = {"a": "a red fox in the snow", "b": "multi\nline {braces} ünïcødé 猫", "c": "  spaced  "}
    out = run_formatters(lab, {k: formatter(p) for k, p in prompts.items()})
    for key, prompt in prompts.items():
        text, count = out[key]
        assert text.encode() == TEMPLATE.format(prompt).encode()
        assert count == len(tokenizer(text)["input_ids"])


def test_token_count_is_what_comfyui_feeds_the_encoder(lab, tokenizer):
    # ComfyUI's tokenizer front end turns \( into ( even with prompt weights disabled
    result = lab.run(with_probes({"x": formatter(r"\(\(masterpiece\)\) fox"), "enc": encoder(["x", 0])}, "escape"))
    text, count = result.outputs["x"]["formatted_text"][0], result.outputs["x"]["token_count"][0]
    assert text == TEMPLATE.format(r"\(\(masterpiece\)\) fox")
    assert read_probe(lab, result, "enc")[2]["token_count"] == count
    assert count == len(tokenizer(TEMPLATE.format("((masterpiece)) fox"))["input_ids"])
    assert count != len(tokenizer(text)["input_ids"])


def test_think_blocks_system_prompt_and_prefill(lab, tokenizer):
    out = run_formatters(lab, {
        "plain": formatter("a cat"),
        "empty": formatter("a cat", think_mode="empty"),
        "content": formatter("a cat", think_mode="with content", thinking="soft window light", assistant_prefill="A cat"),
        "system": formatter("a cat", system_prompt="You draw."),
    })
    assert out["empty"][0] == TEMPLATE.format("a cat") + "<think>\n\n</think>\n\n"
    assert out["empty"][1] == out["plain"][1] + 4   # <think> \n\n </think> \n\n
    assert out["content"][0] == TEMPLATE.format("a cat") + "<think>\nsoft window light\n</think>\n\nA cat"
    assert out["system"][0] == "<|im_start|>system\nYou draw.<|im_end|>\n" + TEMPLATE.format("a cat")
    for text, count in out.values():
        assert count == len(tokenizer(text)["input_ids"])


def test_turns_chain_through_the_chat_output(lab):
    out = run_formatters(lab, {
        "first": formatter("a cat", system_prompt="S", assistant_prefill="A grey cat."),
        "second": formatter("now make it blue", history="first", assistant_prefill="A blue cat."),
        "third": formatter("and bigger", history="second", think_mode="empty"),
    })
    assert out["third"][0] == ("<|im_start|>system\nS<|im_end|>\n"
                               "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\nA grey cat.<|im_end|>\n"
                               "<|im_start|>user\nnow make it blue<|im_end|>\n<|im_start|>assistant\nA blue cat.<|im_end|>\n"
                               "<|im_start|>user\nand bigger<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_encoder_records_the_prompt_span_of_formatted_text(lab, tokenizer):
    nodes = {
        "first": formatter("a cat", system_prompt="You draw.", assistant_prefill="ok"),
        "second": formatter("a lighthouse at dawn", history="first", think_mode="with content", thinking="warm light"),
        "enc": encoder(["second", 0]),
        "plain": encoder("a lighthouse at dawn"),
        "empty": encoder(["thinkfmt", 0]),
        "thinkfmt": formatter("a lighthouse at dawn", think_mode="empty"),
    }
    result = lab.run(with_probes(nodes, "span"))
    text = result.outputs["second"]["formatted_text"][0]
    tokens, _, record = read_probe(lab, result, "enc")
    ids = tokenizer(text)["input_ids"]
    start, end = record["content_span"]
    assert tokenizer.decode(ids[start:end]) == "a lighthouse at dawn"
    assert record["token_count"] == len(ids) == result.outputs["second"]["token_count"][0] == tokens.shape[1]
    # a think block appends tokens; the causal Qwen3 leaves the tokens before it unchanged
    plain, think = read_probe(lab, result, "plain")[0], read_probe(lab, result, "empty")[0]
    assert think.shape[1] == plain.shape[1] + 4
    assert torch.allclose(think[:, :plain.shape[1]], plain, atol=1e-5)
    assert not torch.allclose(think[:, -1], plain[:, -1], atol=1e-3)


def test_presets_are_listed_used_and_extended_by_dropping_a_file(lab, repo):
    shipped = sorted(p.stem for p in (repo / "presets" / "system_prompts").glob("*.txt"))
    options = lab.client.get_json("/object_info/ZImageLabPromptFormatter")["ZImageLabPromptFormatter"]
    assert options["input"]["required"]["preset"][1]["options"] == ["none", *shipped]
    text = run_formatters(lab, {"p": formatter("a cat", preset=shipped[0], system_prompt="Extra.")})["p"][0]
    preset = (repo / "presets" / "system_prompts" / f"{shipped[0]}.txt").read_text().strip("\n")
    assert text == f"<|im_start|>system\n{preset}\nExtra.<|im_end|>\n" + TEMPLATE.format("a cat")
    user_folder = lab.base / "user" / "zimage_lab" / "system_prompts"
    user_folder.mkdir(parents=True, exist_ok=True)
    mine = user_folder / "zz_my_preset.txt"
    mine.write_text("My own system prompt.\n")
    try:
        options = lab.client.get_json("/object_info/ZImageLabPromptFormatter")["ZImageLabPromptFormatter"]
        assert "zz_my_preset" in options["input"]["required"]["preset"][1]["options"]
        text = run_formatters(lab, {"p": formatter("a dog", preset="zz_my_preset")})["p"][0]
        assert text.startswith("<|im_start|>system\nMy own system prompt.<|im_end|>\n")
    finally:
        mine.unlink()


def test_bad_formatter_inputs_get_clear_errors(lab):
    expect_error(lab, with_probes({"f": formatter("  \n")}, "bad"), "prompt is empty")
    expect_error(lab, with_probes({"f": formatter("a cat", think_mode="with content")}, "bad"),
                 "thinking is empty", "think_mode 'empty'")
