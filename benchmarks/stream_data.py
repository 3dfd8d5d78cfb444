"""Streaming vs in-memory training data: peak RSS per rank, time to first step, samples/s. Prints JSON.

The data: LLaVA-format samples (a JSONL file of `{"id", "images", "conversations"}` + an image folder) at 224 px,
made by the synthetic world (the quickstart's understanding tasks) once into a cache folder outside the repo.
Each configuration trains the quickstart-size model (recipes/quickstart.yaml `model:`) for `--steps` steps of
global batch 32 on `torchrun --nproc_per_node 2` (gloo, OMP_NUM_THREADS=1 per rank):

    memory  today's in-memory path (`load_examples`: every sample decoded and encoded up front, on every rank)
    stream  the streaming path (`load_feed`: records indexed, batches decoded in `train.num_workers` workers)

    python benchmarks/stream_data.py                         # n = 200,000 (generates ~3 GB once, ~10 min)
    python benchmarks/stream_data.py --n 4000 --memory-n 1000,2000 --stream-n 2000,4000 --steps 12   # quick

Reported per run: peak RSS of each rank (and of its DataLoader workers), RSS growth per sample between the
in-memory sizes, time from launch to the end of the first optimizer step (and to data ready; `data_s`: reading
and indexing or encoding alone), samples/s as a
mean over windows of `--window` steps (after `--warmup` steps) with a 95% confidence interval (t distribution).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from arms import t_interval

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"vqa": 2, "grounding": 1, "reg": 0.5, "ocr": 1, "caption": 0.5, "chart": 0.5, "doc": 0.5}
SIZE = 224
BATCH = 32


# ---------------------------------------------------------------------------------------------------------
# the driver


def dataset(cache: Path, n: int) -> Path:
    """`cache/synth224-n{n}/data.jsonl` (+ images/), generated once."""
    from vlkit.data.synth import generate_dataset

    out = cache / f"synth{SIZE}-n{n}"
    if not (out / "data.jsonl").is_file():
        tmp = out.with_name(out.name + ".tmp")
        generate_dataset(tmp, n=n, tasks=TASKS, size=SIZE, seed=0, progress=True, workers=1)
        tmp.rename(out)
    return out / "data.jsonl"


def subset(full: Path, n: int) -> Path:
    """The first n lines of the full JSONL, beside it (image paths stay relative to the same folder)."""
    path = full.with_name(f"first-{n}.jsonl")
    if n >= sum(1 for _ in open(full)):
        return full
    if not path.is_file():
        with open(full) as src, open(path.with_suffix(".tmp"), "w") as dst:
            for i, line in enumerate(src):
                if i >= n:
                    break
                dst.write(line)
        path.with_suffix(".tmp").rename(path)
    return path


def tokenizer(cache: Path, data: Path) -> Path:
    from vlkit.data.sources import corpus_text, read_samples
    from vlkit.tokenizer import Tokenizer

    path = cache / "tokenizer-768.json"
    if not path.is_file():
        samples = (s for i, s in zip(range(4000), read_samples(data, check_images=False)))
        Tokenizer.train(list(corpus_text(samples)), vocab_size=768).save(path)
    return path


def launch(args, mode: str, data: Path, n: int, workers: int, tok: Path, rep: int = 0) -> dict:
    out = args.cache / "runs" / f"{mode}-n{n}-w{workers}-r{rep}"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rank*.json"):
        old.unlink()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(args.port), str(Path(__file__).resolve()), "--rank-run", "--mode", mode, "--data", str(data),
           "--num-workers", str(workers), "--steps", str(args.steps), "--tokenizer", str(tok), "--out", str(out),
           "--t0", repr(time.time())]
    print(f"[stream_data] {mode} n={n} num_workers={workers}", file=sys.stderr, flush=True)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    times = ranks[0]["step_end_s"]
    gaps = [b - a for a, b in zip(times, times[1:])][args.warmup - 1:]
    windows = [BATCH * args.window / sum(gaps[i:i + args.window])
               for i in range(0, len(gaps) - args.window + 1, args.window)]
    return {"mode": mode, "n_samples": n, "num_workers": workers, "repeat": rep, "steps": len(times),
            "global_batch": BATCH, "window_samples_per_s": [round(w, 2) for w in windows],
            "peak_rss_mb_per_rank": [r["peak_rss_mb"] for r in ranks],
            "peak_rss_mb_dataloader_workers": [r["peak_rss_children_mb"] for r in ranks],
            "rss_mb_after_data_per_rank": [r["rss_after_data_mb"] for r in ranks],
            "data_s": round(max(r["data_s"] for r in ranks), 2),
            "data_ready_s": round(max(r["data_ready_s"] for r in ranks), 2),
            "time_to_first_step_s": round(max(r["step_end_s"][0] for r in ranks), 2),
            "samples_per_s": mean_ci(windows), "windows": len(windows)}


def mean_ci(xs: list[float]) -> dict:
    """Mean and 95% confidence interval (t distribution) of per-window rates."""
    if not xs:
        return {"mean": None}
    m, half = t_interval(xs)
    if half is None:
        return {"mean": round(m, 2)}
    return {"mean": round(m, 2), "ci95": [round(m - half, 2), round(m + half, 2)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200_000, help="samples generated (the largest streamed run)")
    p.add_argument("--cache", type=Path, default=Path("/work/bench_data"), help="data cache, outside the repo")
    p.add_argument("--memory-n", default="5000,20000", help="in-memory runs (comma list)")
    p.add_argument("--stream-n", default="20000,200000", help="streamed runs (comma list)")
    p.add_argument("--stream-workers", default="1", help="train.num_workers of the streamed runs (comma list)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the throughput windows")
    p.add_argument("--window", type=int, default=5, help="steps per throughput window")
    p.add_argument("--repeat", type=int, default=2, help="rounds over all configurations (interleaved, so load drift "
                   "on a shared machine hits each alike)")
    p.add_argument("--port", type=int, default=29533)
    p.add_argument("--rank-run", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode"), p.add_argument("--data"), p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--tokenizer"), p.add_argument("--out"), p.add_argument("--t0", type=float)
    args = p.parse_args()
    if args.rank_run:
        return rank_run(args)
    full = dataset(args.cache, args.n)
    tok = tokenizer(args.cache, full)
    configs = [("memory", int(n), 0) for n in args.memory_n.split(",") if n]
    configs += [("stream", int(n), int(w)) for w in args.stream_workers.split(",") if w
                for n in args.stream_n.split(",") if n]
    runs = [launch(args, mode, subset(full, n), n, w, tok, rep) for rep in range(args.repeat) for mode, n, w in configs]
    summary: dict = {"cpu_cores": os.cpu_count(), "image_px": SIZE, "configs": [], "runs": runs}
    for mode, n, w in configs:  # pooled over repeats: worst-case RSS and first step, rate over all windows
        rs = [r for r in runs if (r["mode"], r["n_samples"], r["num_workers"]) == (mode, n, w)]
        summary["configs"].append({
            "mode": mode, "n_samples": n, "num_workers": w, "repeats": len(rs),
            "peak_rss_mb_per_rank": max(max(r["peak_rss_mb_per_rank"]) for r in rs),
            "peak_rss_mb_dataloader_worker": max(max(r["peak_rss_mb_dataloader_workers"]) for r in rs),
            "data_s": max(r["data_s"] for r in rs),
            "time_to_first_step_s": max(r["time_to_first_step_s"] for r in rs),
            "samples_per_s": mean_ci([x for r in rs for x in r["window_samples_per_s"]]),
            "windows": sum(r["windows"] for r in rs)})
    runs = summary["configs"]
    mem = sorted((r for r in runs if r["mode"] == "memory"), key=lambda r: r["n_samples"])
    if len(mem) >= 2:
        a, b = mem[0], mem[-1]
        summary["memory_rss_kb_per_sample"] = round(
            (b["peak_rss_mb_per_rank"] - a["peak_rss_mb_per_rank"]) * 1024 / (b["n_samples"] - a["n_samples"]), 2)
    for w in {r["num_workers"] for r in runs if r["mode"] == "stream"}:
        st = sorted((r for r in runs if r["mode"] == "stream" and r["num_workers"] == w), key=lambda r: r["n_samples"])
        if len(st) >= 2:
            a, b = st[0], st[-1]
            summary[f"stream_w{w}_rss_kb_per_sample"] = round(
                (b["peak_rss_mb_per_rank"] - a["peak_rss_mb_per_rank"]) * 1024
                / (b["n_samples"] - a["n_samples"]), 4)
    if mem:  # the peer: today's in-memory path at the smallest (quickstart-like) size
        base = mem[0]["samples_per_s"]["mean"]
        for r in runs:
            r["samples_per_s_ratio_vs_memory"] = round(r["samples_per_s"]["mean"] / base, 3)
    print(json.dumps(summary, indent=2))
    (args.cache / "stream_data.json").write_text(json.dumps(summary, indent=2))


# ---------------------------------------------------------------------------------------------------------
# one rank (under torchrun)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def rank_run(args) -> None:
    import torch
    import yaml

    from vlkit.config import DataConfig, StageConfig, TrainConfig
    from vlkit.train import distributed
    from vlkit.train.stage_data import load_examples, load_feed
    from vlkit.train.trainer import Recipe, Trainer, build_pipeline

    torch.set_num_threads(1)
    quick = yaml.safe_load((ROOT / "recipes" / "quickstart.yaml").read_text())
    recipe = Recipe.from_dict({"model": quick["model"], "tokenizer": {"path": args.tokenizer},
                               "stages": [{"name": "bench"}]})
    torch.manual_seed(0)
    pipe = build_pipeline(recipe, corpus=lambda: [])
    out = Path(args.out)
    steps: list[float] = []
    trainer = Trainer(pipe, TrainConfig(out=str(out / "run"), precision="auto", log_every=10_000,
                                        num_workers=args.num_workers, keep_last=1),
                      out / "run", callbacks=(lambda t, s: steps.append(time.time() - args.t0),))
    data = DataConfig(train=[{"path": args.data}], max_length=200)
    stage = StageConfig(name="bench", train="multitask", steps=args.steps, lr=2e-3, warmup_steps=5, batch_size=BATCH,
                        data=data)
    t_data = time.time()
    feed = load_examples(pipe, data, 0) if args.mode == "memory" else load_feed(pipe, data, 0)
    data_ready, rss_after = time.time() - args.t0, rss_mb()
    data_s = time.time() - t_data
    trainer.run_stage(0, stage, feed)
    usage, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    (out / f"rank{trainer.rank}.json").write_text(json.dumps({
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "peak_rss_children_mb": round(children.ru_maxrss / 1024, 1),
        "rss_after_data_mb": round(rss_after, 1), "data_ready_s": round(data_ready, 2), "data_s": round(data_s, 2),
        "step_end_s": [round(s, 3) for s in steps]}))
    distributed.cleanup()


if __name__ == "__main__":
    main()
