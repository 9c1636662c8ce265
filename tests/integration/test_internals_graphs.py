"""nodes/_internals/graphs.py weights_signature on the running ComfyUI's NextDiT (CPU, in-process).

The CUDA-graph key reads every parameter's address through a per-model cache. Measured on an H100 (ComfyUI 0.30.2,
--disable-cuda-malloc): a cache that held the modules kept each replaced model's weights alive, so every re-run of
the Accelerate node (a new resident copy) left 12 GB on the GPU until later prompts failed with out-of-memory.
"""

import copy
import gc
import weakref

import pytest
import torch

import comfy_inprocess as ci
import harness

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def comfy(lab):
    ci.import_comfy(harness.find_comfyui())
    return lab.base / "models"


@pytest.fixture(scope="module")
def graphs(comfy):
    return ci.pack_module("nodes._internals.graphs")


def test_signature_is_every_parameter_address(comfy, graphs):
    dm = ci.tiny_dit(comfy).get_model_object("diffusion_model")
    expected = tuple(p.data_ptr() for m in dm.modules() for _, p in m.named_parameters(recurse=False))
    assert graphs.weights_signature(dm) == expected
    assert graphs.weights_signature(dm, torch.device("cpu")) == expected
    assert graphs.weights_signature(dm, torch.device("meta")) is None  # a weight elsewhere: no graph


def fresh_dit(models_dir):
    """A NextDiT of its own (ci.tiny_dit's is shared by the session's tests)."""
    import tiny_models

    path = models_dir / "diffusion_models" / harness.TINY_FILES["unet_name"]
    return tiny_models.load_dit(str(path)).get_model_object("diffusion_model")


def test_a_model_read_once_stays_collectable(comfy, graphs):
    dm = fresh_dit(comfy)
    assert graphs.weights_signature(dm) is not None
    model_ref, weight_ref = weakref.ref(dm), weakref.ref(dm.layers[0].attention.qkv.weight)
    del dm
    gc.collect()
    assert model_ref() is None and weight_ref() is None, "the signature cache keeps a replaced model's weights alive"


def test_a_swapped_block_and_a_moved_weight_change_the_signature(comfy, graphs):
    dm = fresh_dit(comfy)
    before = graphs.weights_signature(dm)
    old = dm.layers[0]
    replacement = type(old).__new__(type(old))
    replacement.__dict__.update(old.__dict__)
    replacement._modules = {name: copy.deepcopy(m) for name, m in old._modules.items()}
    dm.layers[0] = replacement
    del old
    gc.collect()
    after = graphs.weights_signature(dm)
    assert after != before and after == tuple(
        p.data_ptr() for m in dm.modules() for _, p in m.named_parameters(recurse=False))
    with torch.no_grad():
        dm.layers[1].attention.qkv.weight = torch.nn.Parameter(dm.layers[1].attention.qkv.weight.clone())
    assert graphs.weights_signature(dm) != after
