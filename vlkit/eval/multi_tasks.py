"""Evaluation tasks for several images and for videos: multi_count and change (two images), video_qa (a clip of
frames). All are scored like VQA (vqa_acc) and broken down by `meta.question_type`; registered in
tasks.py."""
from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

from vlkit.eval import metrics as M
from vlkit.eval.metrics import EvalError
from vlkit.eval.task_base import VQATask, first_line, resolve
from vlkit.images import load_image


def sample_videos(sample: dict) -> list[list[str]]:
    """The sample's videos given as frame lists, each frame path resolved (a video file is not a frame list)."""
    if "video_objects" in sample:  # decoded frames (tar / HF / in-memory sources)
        return [[] for _ in sample["video_objects"]]
    videos = sample.get("videos")
    if not videos or not all(isinstance(v, list) and v for v in videos):
        raise EvalError(f"sample {sample.get('id')!r} (task {sample.get('task')!r}) needs `videos`: a list of "
                        f"clips, each a non-empty list of frame paths; got {videos!r}")
    return [[resolve(sample, p) for p in clip] for clip in videos]


def clip_digest(sample: dict) -> str:
    """sha256 of the first clip's frames (file bytes, or the pixels of decoded frames)."""
    h = hashlib.sha256()
    if "video_objects" in sample:
        for im in sample["video_objects"][0]:
            h.update(f"|{im.mode}{im.size}|".encode())
            h.update(im.tobytes())
        return h.hexdigest()
    for path in sample_videos(sample)[0]:
        try:
            h.update(hashlib.sha256(Path(path).read_bytes()).digest())
        except OSError as exc:  # the frame is reported unreadable when the model is asked (inputs)
            h.update(f"unreadable: {exc}".encode())
    return h.hexdigest()


class MultiCountTask(VQATask):
    """Which of two images has more X: "first" / "second"; "the first image", "image 2", "2nd" are read the same."""
    name = "multi_count"

    def extract(self, text: str) -> str:
        return M.ordinal_choice(first_line(text))


class ChangeTask(VQATask):
    """What changed between two images ("the red circle was removed"); broken down by the kind of change."""
    name = "change"
    max_new_tokens = 24


class VideoQATask(VQATask):
    """Questions about a clip (direction, appear, disappear, count, order), scored like VQA and broken down by
    question type. The model gets the clip as `videos=` (one list of frames per prompt) of `pipe.chat_batch`;
    a pipe without that argument skips the task. Blind: every frame is replaced by a blank."""
    name = "video_qa"

    def unsupported(self, pipe):
        chat = getattr(pipe, "chat_batch", None)
        if chat is None or "videos" not in inspect.signature(chat).parameters:
            return "the model takes no videos (pipe.chat_batch has no `videos` argument)"
        return None

    def validate(self, sample):
        super().validate(sample)
        sample_videos(sample)

    def settings(self, sample, max_new_tokens):
        # the clip is in the prediction's cache key here (the runner's content digest covers prompt and images)
        return {**super().settings(sample, max_new_tokens), "clip": clip_digest(sample)}

    def batch_key(self, settings):
        return json.dumps({k: v for k, v in settings.items() if k != "clip"}, sort_keys=True)

    def inputs(self, sample):
        """The clip's frames (the runner blanks each one for a blind run)."""
        if "video_objects" in sample:
            return list(sample["video_objects"][0])
        return [load_image(p) for p in sample_videos(sample)[0]]

    def media(self, inputs):
        return {"images": [[] for _ in inputs], "videos": [[frames] for frames in inputs]}
