"""Does the model use time? Video QA accuracy on the synthetic clips (the video_qa task: direction of motion,
which object appeared or left, counts over time, order of events) against two baselines:

- blind: the same model, every frame of every clip replaced by a blank one (vlkit's `--blind` evaluation);
- single frame: a model trained and evaluated on only the first frame of each clip (`data.video.max_frames: 1`
  in its recipe; its test clips cut to their first frame), with the same steps, batch, tokenizer and seed.

Both models: the quickstart's model (conv stem, 2x2 merge, 4 x 128 LM; arms.py), trained from scratch in process by vlkit's trainer on the `synth:` stream of
video_qa clips. Evaluation: vlkit's runner on held-out test-split clips; VQA accuracy with its 95% bootstrap CI,
broken down by question type, and clip - blind and clip - single frame with paired 95% bootstrap CIs. Prints JSON.

    python benchmarks/video_qa.py --out /tmp/video_qa [--steps 3000 --batch 32 --frames 8 --n-test 500]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from arms import evaluate, paired, per_sample, quickstart_model, shared_tokenizer, train_arm

TASK, METRIC = "video_qa", "vqa_acc"


def single_frame_copy(test: Path) -> Path:
    """The test set with every clip cut to its first frame (same samples, same ids, same frame files)."""
    out = test / "single_frame.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for line in (test / "data.jsonl").read_text().splitlines():
            s = json.loads(line)
            s["videos"] = [clip[:1] for clip in s["videos"]]
            f.write(json.dumps(s) + "\n")
    return out


def arm_summary(scores: dict, values: dict) -> dict:
    t = scores["tasks"][TASK]
    by_type = t["breakdown"].get("question_type", {})
    return {METRIC: _rounded(t["metrics"][METRIC]), "n": len(values),
            "by_question_type": {k: _rounded(v["metrics"][METRIC]) for k, v in by_type.items()}}


def _rounded(m: dict) -> dict:
    return {"value": round(m["value"], 4), "ci95": m["ci95"] and [round(x, 4) for x in m["ci95"]], "n": m["n"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/video_qa")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--frames", type=int, default=8, help="frames per clip (synth video_frames)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    from vlkit.data.synth import generate_dataset
    from vlkit.data.synth.stream import synth_stream

    synth = {"tasks": [TASK], "size": a.size, "video_frames": a.frames}
    tok = shared_tokenizer(synth_stream(synth, a.seed), out / "tokenizer.json")
    test = out / "test"
    if not (test / "data.jsonl").exists():
        generate_dataset(test, n=a.n_test, tasks=[TASK], split="test", seed=a.seed + 1, size=a.size,
                         video_frames=a.frames, progress=False)
    model = quickstart_model()
    data = {"train": [{"synth": synth}], "max_length": a.max_length}
    result = {"steps": a.steps, "batch": a.batch, "lr": a.lr, "frames": a.frames, "n_test": a.n_test, "seed": a.seed}

    final, info = train_arm(model, data, tok, out / "clip", a.steps, a.batch, a.lr, a.seed)
    scores = evaluate(final, test, [TASK], out / "clip" / "eval", blind=True)
    clip = per_sample(out / "clip" / "eval", TASK, METRIC)
    blind = scores["tasks"][TASK]["blind"]
    result["clip"] = {**info, **arm_summary(scores, clip)}
    result["blind"] = {METRIC: {"value": round(blind["blind"], 4), "ci95": [round(x, 4) for x in blind["blind_ci95"]]}}
    result["clip_minus_blind"] = {"value": round(blind["difference"], 4), "ci95": [round(x, 4) for x in blind["ci95"]]}
    print(json.dumps({"clip": result["clip"]}), file=sys.stderr)

    single_data = {**data, "video": {"max_frames": 1}}
    final, info = train_arm(model, single_data, tok, out / "single_frame", a.steps, a.batch, a.lr, a.seed)
    scores = evaluate(final, single_frame_copy(test), [TASK], out / "single_frame" / "eval")
    single = per_sample(out / "single_frame" / "eval", TASK, METRIC)
    result["single_frame"] = {**info, **arm_summary(scores, single)}
    p = paired(clip, single)
    result["clip_minus_single_frame"] = {"value": p["difference"], "ci95": p["ci95"], "n": p["n"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
