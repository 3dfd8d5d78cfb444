"""Evaluation tasks for several images and for videos: multi_count and change (two images), video_qa (a clip of
frames). All are scored like VQA (vqa_acc) and broken down by `meta.question_type`; registered in
tasks.py."""
from __future__ import annotations

import inspect

from vlkit.eval import metrics as M
from vlkit.eval.task_base import VQATask, first_line, sample_videos
from vlkit.images import load_image


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

    def inputs(self, sample):
        """The clip's frames (the runner blanks each one for a blind run)."""
        if "video_objects" in sample:
            return list(sample["video_objects"][0])
        return [load_image(p) for p in sample_videos(sample)[0]]

    def media(self, inputs):
        return {"images": [[] for _ in inputs], "videos": [[frames] for frames in inputs]}
