"""The eval runner: batched generation with a crash-safe prediction cache, then scoring and reports.

Predictions are appended to `<out_dir>/predictions.jsonl` and flushed after every batch, so a crash loses at
most one batch. Each record is keyed by what decides the answer: the model fingerprint, the task, the prompt text,
a hash of each input image's bytes, the generation settings and whether the images were blanked (`blind`). A
rerun skips keys already present and only asks the model for the rest; a sample that kept its id but got a new
image or question gets a new key. Scores are recomputed from the cache every run, so an interrupted + resumed run
scores exactly like an uninterrupted one.

`blind=True` ("a model must beat its blind self") also asks the model with every input image replaced by a blank
one of the same size (BLIND_FILL, mid-grey) and reports, per task, the difference with images minus blind with a
95% paired bootstrap CI.

`answer_format` (vlkit.eval.answer_formats: plain | think | visionary) asks every text task's question with the
format's instruction and extracts the answer with `extract_answer` before the task's own extraction; a completion
that does not follow the format is scored as an empty (wrong) answer and counted (`format_failures` per task; the
per-sample rows keep the raw completion and whether it parsed). `plain`, the default, changes nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from PIL import Image

from vlkit.data.sources import read_samples
from vlkit.errors import UserError
from vlkit.eval.answer_formats import extract_answer, get_format
from vlkit.eval.metrics import EvalError
from vlkit.eval.report import scores_table
from vlkit.eval.scoring import paired_difference
from vlkit.eval.task_base import Job, Task, sample_images, sample_videos
from vlkit.eval.tasks import TASKS, get_task
from vlkit.images import ImageError
from vlkit.io import read_records, write_json

PREDICTIONS_FILE = "predictions.jsonl"
SCORES_JSON = "scores.json"
SCORES_MD = "scores.md"
PER_SAMPLE_FILE = "per_sample.jsonl"
KEY_VERSION = 2  # 1 keyed on the sample id, so a changed image or question reused the old answer
# Blind runs replace each input image by this colour at the image's size: mid-grey is ~0 after the usual
# (x - 0.5) / 0.5 normalization, an input with no signal rather than an extreme one (black is -1).
BLIND_FILL = (128, 128, 128)

log = logging.getLogger("vlkit.eval")


# ---------------------------------------------------------------------------------------------------------
# Reading samples
# ---------------------------------------------------------------------------------------------------------

def load_samples(data: Union[str, os.PathLike]) -> list[dict]:
    """The samples of `data` (any source vlkit.data.sources.read_samples reads) as dicts with `_base` set."""
    path = Path(data)
    if not path.exists():
        raise EvalError(f"eval data {path} does not exist (give a sample .jsonl/.json file or its folder)")
    base = str(path if path.is_dir() else path.parent)
    # images are opened (and failures reported per sample) by the runner itself
    return [{"_base": base, **s} for s in read_samples(path, strict=False, check_images=False)]


# ---------------------------------------------------------------------------------------------------------
# Prediction cache
# ---------------------------------------------------------------------------------------------------------

def prediction_key(fingerprint: str, task: str, content: str, settings: dict, blind: bool = False) -> str:
    """The cache key of one prediction: model, task, `content` (content_digest: prompt + image bytes), generation
    settings, and whether the images were blanked."""
    blob = json.dumps([KEY_VERSION, fingerprint, task, content, settings, blind], sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def content_digest(task: Task, sample: dict, file_digests: Optional[dict] = None) -> str:
    """sha256 of what the model is given for `sample`: the prompt text and the bytes of each input image and video
    frame (the file's bytes, or the decoded pixels of tar / HF sources). `file_digests` memoizes files shared by
    samples."""
    h = hashlib.sha256(task.prompt(sample).encode("utf-8"))
    if not task.input_images:  # the sample's image is the target, not an input
        return h.hexdigest()
    if "image_objects" in sample or "video_objects" in sample:
        frames = [f for clip in sample.get("video_objects") or [] for f in clip]
        for im in [*(sample.get("image_objects") or []), *frames]:
            h.update(f"|{im.mode}{im.size}|".encode())
            h.update(im.tobytes())
        return h.hexdigest()
    memo = file_digests if file_digests is not None else {}
    videos = sample.get("videos") or []
    as_frames = videos and all(isinstance(v, list) for v in videos)  # clips given as frame lists (video_qa)
    frames = [f for clip in sample_videos(sample) for f in clip] if as_frames else []
    for path in [*sample_images(sample), *frames]:
        if path not in memo:
            try:
                memo[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except OSError as exc:  # reported by _run_batch, which never caches it
                memo[path] = f"unreadable: {exc}"
        h.update(f"|{memo[path]}".encode())
    return h.hexdigest()


class PredictionCache:
    """Append-only JSONL of predictions; a torn last line (a crash mid-write) is ignored and never glued to."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        if path.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a torn write from an interrupted run is expected, not news
                self.records = {rec["key"]: rec for rec in read_records(path) if "key" in rec}

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> Optional[dict]:
        return self.records.get(key)

    def append(self, records: Iterable[dict]) -> None:
        records = list(records)
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")  # end a torn line so the new record starts clean
            for rec in records:
                f.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        for rec in records:
            self.records[rec["key"]] = rec


# ---------------------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------------------

def _sample_ids(samples: Sequence[dict], task: str) -> list[str]:
    """Sample ids; a missing id becomes '<task>-<index>', a repeated id gets '#k' so ids stay unique."""
    seen: dict[str, int] = {}
    out = []
    for i, s in enumerate(samples):
        sid = str(s.get("id")) if s.get("id") is not None else f"{task}-{i}"
        k = seen.get(sid, 0)
        seen[sid] = k + 1
        out.append(sid if k == 0 else f"{sid}#{k}")
    return out


def _make_jobs(pipe: Any, by_task: dict[str, list[dict]], order: list[str], limit: Optional[int],
               max_new_tokens: Optional[int], blind: bool, skipped: dict[str, str],
               answer_format: str = "plain") -> tuple[dict, dict]:
    """({task: [job]}, {task: [blind job, same order]}) for the tasks the pipe can answer; the others go to
    `skipped`. Blind jobs exist for tasks with input images (not text-to-image). A text task's jobs carry the
    answer format in their settings (so in their cache key) unless it is plain."""
    fingerprint = str(pipe.fingerprint())
    file_digests: dict[str, str] = {}
    jobs: dict[str, list[Job]] = {}
    blind_jobs: dict[str, list[Job]] = {}
    for name in order:
        task = get_task(name)
        reason = task.unsupported(pipe)
        if reason:
            skipped[name] = reason
            continue
        ss = by_task[name][:limit] if limit is not None else by_task[name]
        jobs[name] = []
        if blind and task.input_images:
            blind_jobs[name] = []
        for s, sid in zip(ss, _sample_ids(ss, name)):
            task.validate(s)  # missing ground truth is a data error: report before any model call
            settings = task.settings(s, max_new_tokens)
            if answer_format != "plain" and task.text_answer:
                settings = {**settings, "answer_format": answer_format}
            content = content_digest(task, s, file_digests)
            jobs[name].append(Job(task, s, sid, settings, prediction_key(fingerprint, name, content, settings)))
            if name in blind_jobs:
                key = prediction_key(fingerprint, name, content, settings, blind=True)
                blind_jobs[name].append(Job(task, s, sid, settings, key, blind=True))
    return jobs, blind_jobs


def blank_like(image: Any) -> Any:
    """The blind run's stand-in for `image`: the same size, every pixel BLIND_FILL (RGB)."""
    return Image.new("RGB", image.size, BLIND_FILL)


def _job_images(job: Job) -> list:
    """The images the model gets for `job` (blanks of the same size in a blind job); raises ImageError."""
    images = job.task.inputs(job.sample)
    return [blank_like(im) for im in images] if job.blind else images


def _run_batch(pipe: Any, jobs: list[Job], out_dir: Path) -> tuple[list[dict], dict[str, str]]:
    """Ask the model for one batch (one task); returns cache records and {sample id: error} for samples whose
    inputs could not be used (these are reported, not cached, so a rerun retries them)."""
    errors: dict[str, str] = {}
    ready: list[Job] = []
    images: list[list] = []
    for j in jobs:
        try:
            images.append(_job_images(j))
            ready.append(j)
        except ImageError as exc:
            errors[j.sid] = str(exc)
    if not ready:
        return [], errors
    outputs = ready[0].task.predict(pipe, ready, images, out_dir)
    records = [{"key": j.key, "task": j.task.name, "id": j.sid, "blind": j.blind, "settings": j.settings,
                "prediction": out} for j, out in zip(ready, outputs)]
    return records, errors


def _generate(pipe: Any, jobs: list[Job], cache: PredictionCache, batch_size: int, out: Path,
              progress: bool) -> dict[tuple[str, bool], dict[str, str]]:
    """Ask the model for every job not in the cache, batch by batch (each batch appended to the cache at once).
    Returns {(task, blind): {sample id: error}} for samples whose inputs could not be used."""
    from tqdm.auto import tqdm

    errors: dict[tuple[str, bool], dict[str, str]] = {}
    # a batch shares task, blindness and the task's batch_key (chat: one max_new_tokens per call)
    groups: dict[tuple, list[Job]] = {}
    for j in jobs:
        if j.key not in cache:
            groups.setdefault((j.task.name, j.blind, j.task.batch_key(j.settings)), []).append(j)
    with tqdm(total=sum(map(len, groups.values())), desc="eval", unit="sample", disable=not progress,
              dynamic_ncols=True) as bar:
        for (name, blind, _), group in groups.items():
            bar.set_postfix_str(f"{name} (blind)" if blind else name)
            for i in range(0, len(group), batch_size):
                batch = group[i:i + batch_size]
                records, errs = _run_batch(pipe, batch, out)
                cache.append(records)  # flushed per batch: a crash loses at most this batch
                errors.setdefault((name, blind), {}).update(errs)
                bar.update(len(batch))
    return errors


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------

def _group_value(sample: dict, key: str) -> Optional[str]:
    m = sample.get("meta") or {}
    if key not in m or m[key] is None:
        return None
    if key == "heldout":
        return "heldout" if m[key] else "seen"
    return str(m[key])


def _score_task(task: Task, jobs: list[Job], raws: list[Any], out_dir: Path, resamples: int,
                seed: int) -> tuple[dict, list[dict]]:
    """A task's scores from its jobs' cached raw predictions, and its per-sample rows."""
    samples = [j.sample for j in jobs]
    formatted = [_formatted(j, raw) for j, raw in zip(jobs, raws)]
    preds = [task.prediction(text, out_dir) for text, _ in formatted]
    ts = task.score(samples, preds)
    followed = [ok for _, ok in formatted]  # None: no answer format step for this job
    parse_failed = [bool(f) or ok is False for f, ok in zip(ts.parse_failed, followed)]
    rows = list(range(len(samples)))
    out: dict[str, Any] = {
        "n": len(samples),
        "primary": task.metrics[0],
        "metrics": {name: m.summary(rows, resamples, seed) for name, m in ts.metrics.items()},
    }
    nfail = sum(parse_failed)
    out["parse_failures"] = {"count": nfail, "rate": nfail / len(samples) if samples else None}
    fmt = jobs[0].settings.get("answer_format") if jobs else None
    if fmt is not None:
        bad = sum(ok is False for ok in followed)
        out["format_failures"] = {"answer_format": fmt, "count": bad, "rate": bad / len(samples)}
    breakdown: dict[str, dict] = {}
    for key in task.breakdowns:
        groups: dict[str, list[int]] = {}
        for r, s in enumerate(samples):
            g = _group_value(s, key)
            if g is not None:
                groups.setdefault(g, []).append(r)
        if groups:
            breakdown[key] = {}
            for g in sorted(groups):
                rr = groups[g]
                fails = sum(parse_failed[r] for r in rr)
                breakdown[key][g] = {"n": len(rr),
                                     "metrics": {name: m.summary(rr, resamples, seed) for name, m in ts.metrics.items()},
                                     "parse_failure_rate": fails / len(rr)}
    out["breakdown"] = breakdown
    if ts.extra:
        out["extra"] = ts.extra
    per_sample = [{"task": task.name, "id": j.sid, "prediction": p, **d}
                  for j, p, d in zip(jobs, preds, ts.per_sample or [{}] * len(jobs))]
    if fmt is not None:
        for row, raw, ok in zip(per_sample, raws, followed):
            row.update(completion=raw, parsed=ok)
    return out, per_sample


def _formatted(job: Job, raw: Any) -> tuple[Any, Optional[bool]]:
    """(what the task extracts its answer from, whether the completion followed the job's answer format). Without
    an answer format: (raw, None). A completion that does not follow it becomes an empty answer (scored wrong)."""
    fmt = job.settings.get("answer_format")
    if fmt is None:
        return raw, None
    answer = extract_answer(str(raw), fmt)
    return ("", False) if answer is None else (answer, True)


def _prediction(cache: PredictionCache, job: Job, out: Path) -> Any:
    return job.task.prediction(_formatted(job, cache.get(job.key)["prediction"])[0], out)


def _task_result(task: Task, jobs: list[Job], cache: PredictionCache, errors: dict[str, str], out: Path,
                 resamples: int, seed: int) -> tuple[dict, list[dict]]:
    done = [j for j in jobs if j.key in cache]
    if not done:
        return {"n": 0, "primary": task.metrics[0], "metrics": {}, "errors": len(errors)}, []
    res, per_sample = _score_task(task, done, [cache.get(j.key)["prediction"] for j in done], out, resamples, seed)
    res["errors"] = len(errors)
    if errors:
        res["error_examples"] = dict(list(errors.items())[:5])
    return res, per_sample


def _blind_comparison(task: Task, jobs: list[Job], blind_jobs: list[Job], cache: PredictionCache, out: Path,
                      resamples: int, seed: int) -> dict:
    """The headline metric with images and blind on the samples that have both predictions, and their difference
    with a 95% paired bootstrap CI. `beats_blind`: the CI lies above 0."""
    pairs = [(j, b) for j, b in zip(jobs, blind_jobs) if j.key in cache and b.key in cache]
    primary = task.metrics[0]
    if not pairs:
        return {"metric": primary, "n": 0, "with_images": None, "blind": None, "difference": None, "ci95": None,
                "beats_blind": False}
    samples = [j.sample for j, _ in pairs]
    seen = task.score(samples, [_prediction(cache, j, out) for j, _ in pairs]).metrics[primary]
    blank = task.score(samples, [_prediction(cache, b, out) for _, b in pairs]).metrics[primary]
    diff = paired_difference(seen, blank, range(len(pairs)), resamples, seed)
    return {"metric": primary, "n": len(pairs), **diff,
            "beats_blind": diff["ci95"] is not None and diff["ci95"][0] > 0}


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------

def _check_args(pipe: Any, tasks: Optional[Sequence[str]], batch_size: int, limit: Optional[int],
                out_dir: Optional[Union[str, os.PathLike]], max_new_tokens: Optional[int], answer_format: str) -> Path:
    """Raise EvalError on a bad argument; returns the output folder (created)."""
    try:
        get_format(answer_format)
    except UserError as exc:
        raise EvalError(str(exc)) from None
    if not isinstance(batch_size, int) or batch_size < 1:
        raise EvalError(f"batch_size must be a positive integer, got {batch_size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise EvalError(f"limit must be a non-negative integer or None, got {limit!r}")
    if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
        raise EvalError(f"max_new_tokens must be a positive integer or None, got {max_new_tokens!r}")
    for t in tasks or ():
        get_task(t)  # unknown names -> EvalError listing the known ones
    if out_dir is None:
        ckpt = getattr(pipe, "path", None)
        if not ckpt:
            raise EvalError("out_dir is required: this model has no checkpoint path to put '<ckpt>/eval' under")
        out_dir = Path(ckpt) / "eval"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _group_samples(samples: list[dict], tasks: Optional[Sequence[str]], data: Any) -> tuple[dict, list, dict]:
    """({task: samples}, task order, skipped info) for the requested tasks present in the data."""
    by_task: dict[str, list[dict]] = {}
    no_task, unknown = 0, {}
    for s in samples:
        name = s.get("task")
        if not name:
            no_task += 1
        elif name not in TASKS:
            unknown[name] = unknown.get(name, 0) + 1
        elif tasks is None or name in tasks:
            by_task.setdefault(name, []).append(s)
    order = [t for t in (tasks or list(TASKS)) if t in by_task]
    if not order:
        raise EvalError(f"no samples to evaluate in {data} for tasks {tasks or sorted(TASKS)} "
                        f"(tasks in the data: {sorted({str(s.get('task')) for s in samples})})")
    skipped = {"tasks": {t: "no samples of this task in the data" for t in (tasks or []) if t not in by_task},
               "samples_without_task": no_task, "unknown_tasks": unknown}
    return by_task, order, skipped


def run_eval(pipe: Any, data: Union[str, os.PathLike], tasks: Optional[Sequence[str]] = None, batch_size: int = 32,
             limit: Optional[int] = None, out_dir: Optional[Union[str, os.PathLike]] = None,
             max_new_tokens: Optional[int] = None, *, blind: bool = False, answer_format: str = "plain",
             resamples: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    """Evaluate `pipe` on the samples in `data` and return the scores dict (also written to out_dir).

    tasks: task names to run (default: every known task present in the data). limit: at most this many samples
    per task (the first ones in file order). max_new_tokens: overrides each task's default answer length.
    blind: also score every task with input images with each image replaced by a blank one (blank_like) and
    report with images vs blind, their difference and its 95% paired bootstrap CI (`tasks[t]["blind"]`).
    answer_format: plain | think | visionary (vlkit.eval.answer_formats): text tasks ask for the format and read
    the answer out of it; completions that do not follow it score as wrong and are counted per task
    (`tasks[t]["format_failures"]`, also in `parse_failures`); per-sample rows get `completion` and `parsed`.
    out_dir default: `<pipe.path>/eval`. Files: predictions.jsonl (the cache), per_sample.jsonl, scores.json,
    scores.md, generations/*.png and masks/*.png for image outputs.
    """
    out = _check_args(pipe, tasks, batch_size, limit, out_dir, max_new_tokens, answer_format)
    by_task, order, skipped = _group_samples(load_samples(data), tasks, data)
    jobs, blind_jobs = _make_jobs(pipe, by_task, order, limit, max_new_tokens, blind, skipped["tasks"], answer_format)
    cache = PredictionCache(out / PREDICTIONS_FILE)
    everything = [j for jl in [*jobs.values(), *blind_jobs.values()] for j in jl]
    reused = sum(j.key in cache for j in everything)
    log.info("eval: %d of %d predictions reused from %s; asking the model for the rest", reused, len(everything),
             out / PREDICTIONS_FILE)
    errors = _generate(pipe, everything, cache, batch_size, out, progress)
    results, per_sample = _results(jobs, blind_jobs, cache, errors, out, resamples, seed)
    scores = {
        "fingerprint": str(pipe.fingerprint()),
        "data": str(data),
        "answer_format": answer_format,
        "bootstrap": {"resamples": resamples, "seed": seed, "ci": 0.95},
        "tasks": results,
        "skipped": skipped,
        "predictions": {"total": len(everything), "reused": reused,
                        "new": sum(j.key in cache for j in everything) - reused},
    }
    if blind:
        scores["blind"] = {"fill": list(BLIND_FILL), "no_input_image": sorted(set(jobs) - set(blind_jobs)),
                           "not_beating_blind": [t for t in blind_jobs if not results[t]["blind"]["beats_blind"]]}
    _write_outputs(out, scores, per_sample)
    return scores


def _results(jobs: dict[str, list[Job]], blind_jobs: dict[str, list[Job]], cache: PredictionCache,
             errors: dict[tuple[str, bool], dict[str, str]], out: Path, resamples: int,
             seed: int) -> tuple[dict[str, Any], list[dict]]:
    """({task: scores (with the blind comparison where there are blind jobs)}, per-sample rows of every task)."""
    results: dict[str, Any] = {}
    per_sample_all: list[dict] = []
    for name, jl in jobs.items():
        task = get_task(name)
        results[name], per_sample = _task_result(task, jl, cache, errors.get((name, False), {}), out, resamples, seed)
        per_sample_all.extend(per_sample)
        if name in blind_jobs:
            results[name]["blind"] = _blind_comparison(task, jl, blind_jobs[name], cache, out, resamples, seed)
    return results, per_sample_all


def _write_outputs(out: Path, scores: dict, per_sample: list[dict]) -> None:
    """per_sample.jsonl, scores.json and scores.md in `out`."""
    with open(out / PER_SAMPLE_FILE, "w", encoding="utf-8") as f:
        for rec in per_sample:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    write_json(out / SCORES_JSON, scores)
    (out / SCORES_MD).write_text(scores_table(scores), encoding="utf-8")
