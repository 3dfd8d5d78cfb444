"""Sample sources: read and write samples as JSON(L) + image folder, WebDataset tar shards or HF datasets.

Formats (`FORMATS`, formats.py; one module per format, each with its reader and, where writable, its sink):
  jsonl / json  jsonl.py: `data.jsonl` (one sample per line) + `images/` (+ `masks/`), paths relative to the
                JSONL file; LLaVA's JSON list (`image`: one string, `conversations`), and image paths relative
                to a separate `image_folder` (LLaVA's --image_folder).
  webdataset    webdataset.py: `shard-000000.tar`, ... (`<key>.json` + `<key>.png`, ...), img2dataset shards.
  hf            hf_datasets.py: a Hugging Face `datasets.Dataset` saved with `save_to_disk`.
`messages` samples (TRL, LLaMA-Factory, OpenAI-style; messages.py) are taken by every format.

Reading convention (`read_samples`, read.py): every sample comes out with `id`, `images` (a list; LLaVA's
`image` becomes `images`), `conversations` ({from, value}) and, when present, `task` and `meta` (the shared
normalisation: normalize.py).
  - JSON(L) sources: `images` (and `meta["mask"]`) are absolute paths of files that exist and pass an
    integrity check; pixels are decoded later by whoever needs them.
  - tar and HF sources (and JSON samples with data: URLs): `images` keep the stored names and the decoded
    pixels are in `image_objects` (a list of RGB `PIL.Image`, same order); a segmentation mask is in
    `mask_object` ("L").
  - videos (`videos`, in `<video>` placeholder order). JSON(L) sources: each a video file or frame-folder path
    or a list of frame paths, made absolute and checked to exist; a missing one skips the sample
    (`missing_video`); these clips are decoded (vlkit.video) only when the sample is encoded. tar and HF sources:
    `videos` keep the stored names and each clip's decoded frames are in `video_objects` (all frames of a frame
    clip; a video file sampled with the default `VideoConfig`); a clip that cannot be decoded skips the sample
    (`corrupt_video`). Read with `decode_images=False`, they stay bytes in `video_bytes`.
`load_sample_images(sample)`, `load_sample_videos(sample)` and `load_sample_mask(sample)` give pixels for either
kind. Paths may be brace
patterns (`shards/{00000..00099}.tar`).

A bad sample (malformed JSON, missing or corrupt image, `<image>` placeholders that do not match the number
of images, ...) is skipped: counted by reason in a `ReadStats`, with a warning naming file and line (the first
`ReadStats.max_messages` of them, then one summary). `strict=True` raises `DataError` instead. A shard or
JSON file that cannot be read to its end is never dropped quietly: it is counted in `stats.bad_files` with a
warning giving how many of its samples were read (strict: `DataError`). A recipe source (`read_source`,
`SourceOptions`) raises `DataError` when more than its `max_skip` share (default 1%) was skipped.

Writing (`write_samples`, write.py): any of WRITE_FORMATS (jsonl, webdataset, hf).
"""
from vlkit.data.sources.base import CAPTION_PROMPT, IMAGE_EXTS, DataError, DataWarning, ReadStats, Sink
from vlkit.data.sources.formats import FORMATS, WRITE_FORMATS, Format, detect_format, expand_path, open_sink
from vlkit.data.sources.normalize import Reader
from vlkit.data.sources.read import (SOURCE_OPTIONS, SourceOptions, check_skip_share, corpus_text, load_sample_images,
                                     load_sample_mask, load_sample_videos, read_samples, read_source)
from vlkit.data.sources.write import sample_record, write_samples

__all__ = [
    "CAPTION_PROMPT", "FORMATS", "IMAGE_EXTS", "SOURCE_OPTIONS", "WRITE_FORMATS", "DataError", "DataWarning",
    "Format", "ReadStats", "Reader", "Sink", "SourceOptions", "check_skip_share", "corpus_text", "detect_format",
    "expand_path", "load_sample_images", "load_sample_mask", "load_sample_videos", "open_sink", "read_samples", "read_source",
    "sample_record", "write_samples",
]
