"""The streaming index (records.py): light records that read back as the reader yields them, task filters
and weights, tar shards kept as undecoded bytes."""
import pytest


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_records_are_light_and_read_back_as_the_reader_yields(records_dir, tmp_path, fmt):
    from vlkit.data.records import FileMixture, LineStore, RecordStore
    from vlkit.data.sources import read_samples

    src = records_dir
    if fmt == "json":  # LLaVA's layout: one JSON list (read once into the spill file)
        lines = (records_dir / "data.jsonl").read_text().splitlines()
        src = records_dir / "list.json"
        src.write_text("[" + ",".join(lines) + "]")
    try:
        mix = FileMixture([{"path": str(src)}], strict=False, seed=0)
        direct = list(read_samples(src, check_images=False))
    finally:
        if fmt == "json":
            src.unlink()
    store = mix.stores[0]
    assert isinstance(store, LineStore if fmt == "jsonl" else RecordStore)
    assert len(mix) == len(direct) == 30
    assert [mix[k] for k in range(len(mix))] == direct  # text and image paths, nothing decoded
    if fmt == "jsonl":  # RAM: a few integers per line
        assert sum(a.nbytes for a in (store.file_id, store.start, store.end, store.lineno)) <= 32 * len(store)


def test_file_mixture_keeps_tasks_and_weights(records_dir):
    from vlkit.data.records import FileMixture
    from vlkit.data.sources import read_samples

    tasks = [s["task"] for s in read_samples(records_dir, check_images=False)]
    n_vqa, n_cap = tasks.count("vqa"), tasks.count("caption")
    mix = FileMixture([{"path": str(records_dir), "tasks": ["vqa"], "weight": 2.0},
                       {"path": str(records_dir), "tasks": ["caption"], "weight": 0.5}], strict=False, seed=0)
    got = [mix[k]["task"] for k in range(len(mix))]
    assert got.count("vqa") == 2 * n_vqa and got.count("caption") == round(0.5 * n_cap)
    assert len(mix.stores) == 1  # one folder named twice is read once
    assert len({mix.key(k) for k in range(len(mix)) if got[k] == "vqa"}) == n_vqa  # repeated, not invented


def test_tar_shards_stream_undecoded_bytes_and_decode_to_the_same_pixels(records_dir, encode, tmp_path):
    import torch

    from vlkit.data.collate import EncodeStats
    from vlkit.data.records import FileMixture
    from vlkit.data.sources import read_samples, write_samples

    write_samples(read_samples(records_dir), tmp_path / "wds", fmt="webdataset", shard_size=7)
    tar = FileMixture([{"path": str(tmp_path / "wds")}], strict=False, seed=0)
    jsonl = FileMixture([{"path": str(records_dir)}], strict=False, seed=0)
    assert len(tar) == len(jsonl) == 30
    first = tar[0]
    assert isinstance(first["image_bytes"][0], bytes) and "image_objects" not in first
    a = encode([tar[k] for k in range(5)], EncodeStats())
    b = encode([jsonl[k] for k in range(5)], EncodeStats())
    assert [e.input_ids for e in a] == [e.input_ids for e in b]
    assert all(torch.equal(x.images[0], y.images[0]) for x, y in zip(a, b))


def test_packed_records_keep_clip_bytes_in_their_shape():
    """video_bytes (a video file's bytes, or a list of frame bytes per clip) pack and unpack beside images."""
    from vlkit.data.records import pack, unpack

    sample = {"id": "v", "videos": ["v.video.mp4", ["v.video1.000.png", "v.video1.001.png"]],
              "image_bytes": [b"img0", b""], "mask_bytes": b"mask",
              "video_bytes": [b"\x00mp4 data", [b"frame-0", b"frame-11"]]}
    assert unpack(pack(sample)) == sample
    assert unpack(pack({"id": "t", "image_bytes": []})) == {"id": "t", "image_bytes": []}
