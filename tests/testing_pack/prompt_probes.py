"""Test-only probe: save a CONDITIONING's tensors so integration tests can compare them exactly."""

import json
import os

import folder_paths
from comfy_api.latest import io
from safetensors.torch import save_file


class ConditioningProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ZImageLabTestConditioningProbe",
            display_name="Conditioning Probe (tests)",
            category="Z-Image Lab/testing",
            description="Saves each conditioning entry's tokens, attention mask and Z-Image Lab record to output/probes.",
            inputs=[io.Conditioning.Input("conditioning"), io.String.Input("filename_prefix", default="probe")],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, conditioning, filename_prefix) -> io.NodeOutput:
        folder = os.path.join(folder_paths.get_output_directory(), "probes")
        os.makedirs(folder, exist_ok=True)
        records = []
        for i, (tokens, extras) in enumerate(conditioning):
            name = f"{filename_prefix}_{i}.safetensors"
            tensors = {"tokens": tokens.contiguous()}
            if extras.get("attention_mask") is not None:
                tensors["attention_mask"] = extras["attention_mask"].contiguous()
            meta = {"zimage_lab": json.dumps(extras.get("zimage_lab") or {}),
                    "extras_keys": json.dumps(sorted(extras)),
                    "pooled_is_none": json.dumps(extras.get("pooled_output") is None)}
            save_file(tensors, os.path.join(folder, name), metadata=meta)
            records.append({"filename": name, "subfolder": "probes", "type": "output"})
        return io.NodeOutput(ui={"probes": records})
