"""core/save.py: SaveImage's pixel conversion, text chunks and names; PNG bytes; the background writer."""

import json
import os
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from core import save


def chunks_of(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every PNG chunk, checking the signature and each CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, payload = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + payload) & 0xFFFFFFFF, kind
        out.append((kind, payload))
        pos += 12 + length
    return out


def test_pixels_are_truncated_after_clipping_as_savimage_does():
    x = np.array([[[0.0, 1.0, 0.5], [-0.2, 1.7, 0.999]]], dtype=np.float32)  # [1, 2, 3]
    got = save.to_uint8(x)
    # 255 * 0.5 = 127.5 -> 127 (astype truncates); 255 * 0.999 = 254.745 -> 254; out of range clipped
    assert got.dtype == np.uint8 and got.tolist() == [[[0, 255, 127], [0, 255, 254]]]


def test_pixels_equal_saveimages_expression_everywhere():
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float16, np.float64):
        x = (rng.random((64, 64, 3)) * 1.4 - 0.2).astype(dtype)
        x[0, :3, 0] = [np.nan, np.inf, -np.inf]
        with np.errstate(invalid="ignore"):
            expected = np.clip(255. * x, 0, 255).astype(np.uint8)  # nodes.py SaveImage.save_images
            assert np.array_equal(save.to_uint8(x), expected), dtype


def test_pixels_from_a_torch_tensor():
    torch = pytest.importorskip("torch")
    x = torch.rand(5, 7, 3)
    assert np.array_equal(save.to_uint8(x), save.to_uint8(x.numpy()))


def test_text_chunks_are_the_prompt_then_each_extra_entry_as_json():
    prompt = {"1": {"class_type": "X", "inputs": {"t": "é"}}}
    extra = {"workflow": {"nodes": [1]}, "other": [1, 2]}
    assert save.text_chunks(prompt, extra) == [("prompt", json.dumps(prompt)), ("workflow", '{"nodes": [1]}'),
                                                ("other", "[1, 2]")]
    assert save.text_chunks(None, None) == [] and save.text_chunks(None, {"workflow": 1}) == [("workflow", "1")]


def test_names_follow_saveimage(tmp_path):
    assert save.file_names("img", 7, 2) == ["img_00007_.png", "img_00008_.png"]
    assert save.file_names("b%batch_num%", 1, 2) == ["b0_00001_.png", "b1_00002_.png"]


def test_reserve_makes_placeholders_and_skips_taken_names(tmp_path):
    (tmp_path / "a_00002_.png").write_bytes(b"x")
    (tmp_path / "a_00004_.png.part").write_bytes(b"")
    names = save.reserve(str(tmp_path), "a", 1, 2)  # 1 is free but 2 is taken: the batch moves on to 5, 6
    assert names == ["a_00005_.png", "a_00006_.png"]
    assert (tmp_path / "a_00005_.png.part").exists() and (tmp_path / "a_00006_.png.part").exists()
    assert not (tmp_path / "a_00001_.png.part").exists()  # the abandoned try gave its placeholder back
    assert save.reserve(str(tmp_path), "a", 5, 1) == ["a_00007_.png"]


def test_png_bytes_match_pil_as_saveimage_calls_it(tmp_path):
    rng = np.random.default_rng(0)
    array = (rng.random((48, 40, 3)) * 255).astype(np.uint8)
    chunks = [("prompt", '{"1": 2}'), ("workflow", '{"nodes": []}')]
    path = str(tmp_path / "x_00001_.png")
    save.write_png(array, path, chunks, 4)
    reference = tmp_path / "reference.png"
    Image.fromarray(array).save(reference, pnginfo=save.png_info(chunks), compress_level=4)
    data = open(path, "rb").read()
    assert data == reference.read_bytes() and not os.path.exists(path + ".part")
    parsed = chunks_of(data)
    kinds = [k for k, _ in parsed]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
    width, height, depth, colour = struct.unpack(">IIBB", parsed[0][1][:10])
    assert (width, height, depth, colour) == (40, 48, 8, 2)
    texts = [p.split(b"\0", 1) for k, p in parsed if k == b"tEXt"]
    assert texts == [[b"prompt", b'{"1": 2}'], [b"workflow", b'{"nodes": []}']]
    assert kinds.index(b"tEXt") < kinds.index(b"IDAT")
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im), array)


def test_no_metadata_writes_no_text_chunks(tmp_path):
    path = str(tmp_path / "n.png")
    save.write_png(np.zeros((4, 4, 4), np.uint8), path, None, 0)
    kinds = [k for k, _ in chunks_of(open(path, "rb").read())]
    assert b"tEXt" not in kinds and b"iTXt" not in kinds and b"zTXt" not in kinds


def test_every_level_keeps_the_pixels(tmp_path):
    array = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
    for level in range(10):
        path = str(tmp_path / f"l{level}.png")
        save.write_png(array, path, [], level)
        with Image.open(path) as im:
            assert np.array_equal(np.asarray(im), array), level


def test_background_writer_writes_everything_and_tracks_pending(tmp_path):
    writer = save.BackgroundWriter(workers=2, max_bytes=3 * 64 * 64 * 3)  # room for 3 images: submit must wait
    gate = threading.Event()
    original = save.write_png

    def slow_write(*args):
        gate.wait(10)
        original(*args)

    arrays = [np.full((64, 64, 3), n, np.uint8) for n in range(8)]
    names = save.reserve(str(tmp_path), "w", 1, len(arrays))
    paths = [str(tmp_path / n) for n in names]
    writer._write = lambda a, p, c, lvl: slow_write(a, p, c, lvl)
    first = writer.submit(arrays[0], paths[0], [], 1)
    assert writer.pending(paths[0]) is first and not os.path.exists(paths[0])
    threading.Timer(0.2, gate.set).start()
    for array, path in zip(arrays[1:], paths[1:]):
        writer.submit(array, path, [], 1)
    assert writer.flush(timeout=30)
    assert writer.pending_count() == 0 and writer.pending(paths[0]) is None
    for n, path in enumerate(paths):
        with Image.open(path) as im:
            assert np.asarray(im)[0, 0, 0] == n
    assert sorted(os.listdir(tmp_path)) == sorted(names)
    status = writer.status()
    assert status["written"] == 8 and status["failed"] == 0 and status["waited_for_room_s"] > 0


def test_a_failed_write_is_counted_and_leaves_no_placeholder(tmp_path):
    writer = save.BackgroundWriter(workers=1)
    path = str(tmp_path / "gone" / "f_00001_.png")  # its folder was removed after the name was reserved
    writer.submit(np.zeros((8, 8, 3), np.uint8), path, [], 1)
    assert writer.flush(timeout=30)
    status = writer.status()
    assert status["failed"] == 1 and status["written"] == 0 and "f_00001_.png" in status["last_error"]
    assert writer.pending_count() == 0 and not os.path.exists(path)


def test_writer_from_env():
    writer = save.writer_from_env({"ZIMAGE_LAB_SAVE_WORKERS": "3", "ZIMAGE_LAB_SAVE_QUEUE_MB": "64"})
    assert writer.workers == 3 and writer.max_bytes == 64 << 20
