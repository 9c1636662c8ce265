"""zlab.server_score without a server: model choice from /object_info, the appended score nodes, reading scores."""

from __future__ import annotations

import pytest

from zlab import server_score as ss

V3_INFO = {"ZImageLabImageScore": {"input": {"required": {"model": ["COMBO", {"options": [
    "clip/b32", "clip/l14", "hpsv2/HPS_v2.1_compressed.pt"]}]}}}}
CELL = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["9", 0]},
              "_meta": {"title": "Positive Prompt"}},
        "2": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["7", 0]}},
        "3": {"class_type": "ZImageLabSaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}


def test_score_models_first_of_each_folder_or_named():
    assert ss.score_models(V3_INFO, ["clip_score", "hpsv2"]) == {"clip_score": "clip/b32",
                                                                  "hpsv2": "hpsv2/HPS_v2.1_compressed.pt"}
    assert ss.score_models(V3_INFO, {"clip_score": "clip/l14"}) == {"clip_score": "clip/l14"}
    old_format = {"ZImageLabImageScore": {"input": {"required": {"model": [["clip/b32"], {}]}}}}
    assert ss.score_models(old_format, ["clip_score"]) == {"clip_score": "clip/b32"}


@pytest.mark.parametrize("wanted, words", [
    (["pickscore"], "models/metrics/pickscore/ holds no model"),
    ({"clip_score": "clip/nope"}, "holds clip/b32, clip/l14"),
    (["lpips"], "zlab score"),
])
def test_score_models_errors_name_the_fix(wanted, words):
    with pytest.raises(ss.ServerScoreError, match=words):
        ss.score_models(V3_INFO, wanted)
    with pytest.raises(ss.ServerScoreError, match="no ZImageLabImageScore node"):
        ss.score_models({}, ["clip_score"])


def test_add_scoring_feeds_the_saved_images_and_prompt():
    out = ss.add_scoring(CELL, {"clip_score": "clip/b32", "hpsv2": "hpsv2/HPS_v2.1_compressed.pt"})
    assert set(out) - set(CELL) == {"zlab_score_clip_score", "zlab_score_hpsv2"} and "zlab_score_hpsv2" not in CELL
    assert out["zlab_score_clip_score"]["inputs"] == {"images": ["2", 0], "prompt": "a fox", "model": "clip/b32"}
    assert ss.add_scoring(CELL, {}) is CELL
    with pytest.raises(ss.ServerScoreError, match="no ZImageLabSaveImage"):
        ss.add_scoring({k: v for k, v in CELL.items() if k != "3"}, {"clip_score": "clip/b32"})


def test_read_scores_takes_the_first_image_of_each_score_node():
    outputs = {"3": {"images": [{"filename": "x.png"}]},
               "zlab_score_clip_score": {"zlab_scores": [{"metric": "clip_score", "model": "clip/b32",
                                                          "scores": [23.5, 1.0]}], "text": ["..."]}}
    assert ss.read_scores(outputs) == {"clip_score": 23.5}


def test_plan_splits_the_research_notes_metrics():
    assert ss.plan(["fid", "clip_score", "lpips", "user_pref", "hpsv2"]) == {
        "server": ["clip_score", "hpsv2"], "zlab score": ["fid", "lpips"], "zlab rate": ["user_pref"]}
    with pytest.raises(ss.ServerScoreError, match="unknown metric 'clipscore'"):
        ss.plan(["clipscore"])
