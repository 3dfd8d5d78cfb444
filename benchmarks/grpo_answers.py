"""GRPO vs continued SFT at equal extra wall-clock, and the caption-then-answer format vs the plain one (issue 21,
"Answers"; Visionary-R1's claim at small scale). docs/rl.md, "Answers: GRPO vs continued SFT (benchmark)".

Every arm starts from the same checkpoint (`--init`, a quickstart checkpoint; or `--train-steps N` trains a small
one in process from recipes/quickstart.yaml's model) and gets the same extra training budget, `--seconds S` of
stepping wall-clock per arm:

- `sft`: a continued `sft` stage (connector + LM, as grpo) on the task mix's reference answers.
- `grpo`: a `grpo` stage, rewards {accuracy: 1.0}, plain answers.
- `grpo_visionary`: the `visionary` answer format (`<info>caption</info><think>...</think><answer>...</answer>`),
  rewards {accuracy: 1.0, format: 0.2, caption: 0.2}. A tiny model never saw the format, so the arm first spends
  `--format-share` of its budget on an `sft` stage on format-templated answers built from the world's ground truth
  (the caption names the scene's objects left to right, the think part is empty, then the reference answer),
  then GRPO for the rest. Its prompts carry the format's instruction (vlkit.eval.answer_formats.format_prompt),
  as the evaluation's do.

All arms read the same training samples: `--train-samples` of the synthetic world's train split (`vqa: 2,
grounding: 1`, held-out compositions excluded), written once as files (plain, and templated for the visionary
arm). The budget: a short probe of each phase (`--probe-steps` steps from the starting checkpoint, timed by a
trainer callback after every step; the first step is not counted) gives its seconds per step, and a phase gets
floor(seconds / seconds-per-step) steps. Each arm's actual stepping seconds are measured the same way and
reported (a GRPO step's cost moves with the completion lengths, so it is not exactly the budget). `--clock wall`
(the default) times wall-clock, right on a machine of your own; `--clock cpu` times the process's CPU seconds
(time.process_time), which other people's jobs on a shared CPU do not inflate (run with OMP_NUM_THREADS=1 there).

Evaluation: vlkit's runner, greedy, on a fixed held-out test split (`--n-test` samples, split=test: it has the
held-out compositions), with blind baselines; the visionary arm asks for and is read in its format (a completion
that does not follow it scores 0; its format-failure rate is reported). Figures: overall VQA accuracy, VQA on
counting, relation and held-out-composition questions, grounding Acc@0.5 (and on held-out compositions), each
with its 95% bootstrap CI and n; paired differences on the same test samples (grpo - sft, grpo_visionary - grpo,
and each arm - the start) with paired 95% bootstrap CIs. With several `--seeds` (the arms' training seed: data
order and rollouts; the start and the test split stay fixed), 95% t-intervals over seeds of every figure and of
each paired difference. Prints JSON; progress goes to stderr.

    python benchmarks/grpo_answers.py --init runs/quickstart/final --seconds 600 --seeds 0,1,2 --n-test 600
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from arms import paired, rounded, t_interval

TASKS = {"vqa": 2, "grounding": 1}
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
VISIONARY = "visionary"


@dataclass(frozen=True)
class Arm:
    name: str
    phases: tuple[str, ...]  # the stages it trains, in order (names of PHASES)
    answer_format: str = "plain"  # how it is evaluated


@dataclass(frozen=True)
class Phase:
    """One training stage of an arm: its kind, its data (plain or templated) and its GRPO settings."""
    kind: str  # sft | grpo
    answer_format: str = "plain"  # the data's prompts and answers (visionary: templated), and the rewards' format
    rewards: Optional[dict] = None  # grpo only


PHASES = {
    "sft": Phase("sft"),
    "grpo": Phase("grpo", rewards={"accuracy": 1.0}),
    "format": Phase("sft", VISIONARY),
    "grpo_visionary": Phase("grpo", VISIONARY, {"accuracy": 1.0, "format": 0.2, "caption": 0.2}),
}
ARMS = (Arm("sft", ("sft",)), Arm("grpo", ("grpo",)), Arm("grpo_visionary", ("format", "grpo_visionary"), VISIONARY))
# (a, b): a - b on the same test samples; "init" is the starting checkpoint
DIFFERENCES = (("grpo", "sft"), ("grpo_visionary", "grpo"), ("sft", "init"), ("grpo", "init"),
               ("grpo_visionary", "init"))


@dataclass(frozen=True)
class Settings:
    batch_size: int = 32  # sft: samples per step
    prompts: int = 8  # grpo: prompts per step
    generations: int = 8  # grpo: G
    lr_sft: float = 5e-4
    lr_grpo: float = 1e-4
    temperature: float = 1.0
    max_new_tokens: int = 32  # grpo rollouts, plain
    max_new_tokens_visionary: int = 96  # grpo rollouts and evaluation, visionary (caption + answer)
    max_length: int = 256
    format_share: float = 0.25  # of the visionary arm's budget spent on the format SFT


# ---------------------------------------------------------------------------------------------------------
# pure parts: the templated answers, the stages, the budget, the slices, the aggregation


def caption_of(objects: list[dict]) -> str:
    """The scene's objects left to right (box centre x, then y), each with its article: "a red circle, an orange
    star and a blue square" (every object named once, so the caption reward scores it 1)."""
    from vlkit.data.synth.scene_tasks import _a, _list_phrase

    def centre(o: dict) -> tuple[float, float]:
        x1, y1, x2, y2 = o["box"]
        return (x1 + x2) / 2, (y1 + y2) / 2

    if not objects:
        raise ValueError("a visionary caption needs the scene's objects (meta['objects']); this sample has none")
    return _list_phrase([_a(f"{o['color']} {o['shape']}") for o in sorted(objects, key=centre)])


def templated(sample: dict, fmt: str) -> dict:
    """`sample` asked in the answer format `fmt` (its first human turn gets the format's instruction) and answered
    in it (visionary: the scene's caption, an empty think part, the reference answer); plain: unchanged."""
    from vlkit.eval.answer_formats import format_prompt

    if fmt == "plain":
        return sample
    if fmt != VISIONARY:
        raise ValueError(f"templated answers exist for plain and {VISIONARY} only, not {fmt!r}")
    turns = [dict(t) for t in sample["conversations"]]
    user = next(i for i, t in enumerate(turns) if t["from"] in ("human", "user"))
    answer = next(i for i, t in enumerate(turns) if i > user and t["from"] in ("gpt", "assistant"))
    turns[user]["value"] = format_prompt(turns[user]["value"], fmt)
    caption = caption_of((sample.get("meta") or {}).get("objects") or [])
    turns[answer]["value"] = f"<info>{caption}</info><think></think><answer>{turns[answer]['value']}</answer>"
    return {**sample, "conversations": turns[:answer + 1]}


def stage(phase_name: str, steps: int, s: Settings, data: dict[str, Path]) -> dict:
    """The recipe stage of one phase; `data`: {answer format: its training file}."""
    p = PHASES[phase_name]
    source = {"data": {"max_length": s.max_length, "train": [{"path": str(data[p.answer_format])}]}}
    if p.kind == "sft":
        return {"name": phase_name, "train": "sft", "steps": steps, "batch_size": s.batch_size, "lr": s.lr_sft,
                "warmup_steps": min(10, max(1, steps // 10)), **source}
    visionary = p.answer_format == VISIONARY
    return {"name": phase_name, "train": "grpo", "steps": steps, "batch_size": s.prompts, "lr": s.lr_grpo,
            "warmup_steps": min(10, max(1, steps // 10)), **source,
            "grpo": {"num_generations": s.generations, "temperature": s.temperature,
                     "max_new_tokens": s.max_new_tokens_visionary if visionary else s.max_new_tokens,
                     "rewards": dict(p.rewards), "answer_format": p.answer_format}}


def recipe(init: Path, phases: dict[str, int], s: Settings, data: dict[str, Path], out: Path, seed: int) -> dict:
    """A recipe that trains `phases` ({phase: steps}, in order) from the checkpoint `init`."""
    return {"init": str(init),
            "train": {"out": str(out), "seed": seed, "log_every": 5, "keep_last": 1, "grad_clip": 1.0,
                      "precision": "auto"},
            "stages": [stage(name, steps, s, data) for name, steps in phases.items()]}


def seconds_per_step(times: list[float]) -> float:
    """The median step time from the trainer callback's timestamps (one after each step); the first step (warm-up:
    allocation, first rollouts) is not counted."""
    if len(times) < 2:
        raise ValueError("a timing probe needs at least 2 steps")
    return statistics.median(b - a for a, b in zip(times, times[1:]))


def stepping_seconds(times: list[float]) -> float:
    """All steps' seconds from the callback's timestamps: the span between the first and the last, plus the first
    step counted at the median step time (its own start is not seen)."""
    return (times[-1] - times[0]) + seconds_per_step(times) if len(times) > 1 else float("nan")


def budget_steps(arm: Arm, seconds: float, rates: dict[str, float], format_share: float) -> dict[str, int]:
    """{phase: steps} giving `arm` `seconds` of stepping at the probed seconds per step `rates`; an arm of two
    phases spends `format_share` of it on the first. At least one step each."""
    if len(arm.phases) > 2 or not 0 < format_share < 1:
        raise ValueError(f"arm {arm.name}: cannot split the budget over {arm.phases} with share {format_share}")
    shares = [1.0] if len(arm.phases) == 1 else [format_share, 1.0 - format_share]
    return {p: max(1, math.floor(seconds * share / rates[p])) for p, share in zip(arm.phases, shares)}


# (slice name, task, its metric in per_sample.jsonl, which samples: a predicate on meta)
SLICES: tuple[tuple[str, str, str, Callable[[dict], bool]], ...] = (
    ("vqa", "vqa", "vqa_acc", lambda m: True),
    ("vqa_count", "vqa", "vqa_acc", lambda m: m.get("question_type") == "count"),
    ("vqa_relation", "vqa", "vqa_acc", lambda m: m.get("question_type") == "relation"),
    ("vqa_heldout", "vqa", "vqa_acc", lambda m: bool(m.get("heldout"))),
    ("grounding_acc50", "grounding", "acc@0.5", lambda m: True),
    ("grounding_acc50_heldout", "grounding", "acc@0.5", lambda m: bool(m.get("heldout"))),
)


def slice_values(rows: list[dict], metas: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{slice: {sample id: value}} from an evaluation's per-sample rows; `metas`: {sample id: the test sample's
    meta}. Grounding's acc@0.5 is read as IoU >= 0.5 (its per-sample row holds the IoU)."""
    out: dict[str, dict[str, float]] = {}
    for name, task, metric, keep in SLICES:
        vals = {}
        for r in rows:
            if r["task"] == task and keep(metas[r["id"]]):
                vals[r["id"]] = float(r["iou"] >= 0.5) if metric == "acc@0.5" else float(r[metric])
        out[name] = vals
    return out


def summary(values: dict[str, float]) -> dict:
    from vlkit.eval.metrics import summarize

    s = summarize(values.values())
    return {"value": rounded(s["value"]), "ci95": rounded(s["ci95"]), "n": s["n"]}


def differences(values: dict[str, dict[str, dict[str, float]]]) -> dict:
    """{"a_minus_b": {slice: {difference, ci95 (paired bootstrap), n}}} for the DIFFERENCES whose arms were scored."""
    out = {}
    for a, b in DIFFERENCES:
        if a in values and b in values:
            out[f"{a}_minus_{b}"] = {k: {key: p[key] for key in ("difference", "ci95", "n")}
                                     for k, p in ((k, paired(values[a][k], values[b][k])) for k in values[a])}
    return out


def aggregate(runs: list[dict]) -> dict:
    """Per arm and per difference, each figure's mean over seeds with its 95% t-interval (None for one seed) and
    the per-seed values. `runs`: one per seed, {"seed", "arms": {arm: {"scores": {slice: {value, n}}}},
    "differences": {name: {slice: {difference}}}}; a seed lacking an arm or difference is left out of that one."""
    def over(items: list[tuple[int, float]]) -> dict:
        xs = [x for _, x in items]
        m, half = t_interval(xs)
        return {"mean": rounded(m), "ci95": None if half is None else rounded([m - half, m + half]),
                "values": rounded(xs), "seeds": [s for s, _ in items]}

    arms: dict[str, dict] = {}
    for run in runs:
        for arm, res in run["arms"].items():
            for k, v in res["scores"].items():
                if v["value"] is not None:
                    arms.setdefault(arm, {}).setdefault(k, []).append((run["seed"], v["value"], v["n"]))
    diffs: dict[str, dict] = {}
    for run in runs:
        for name, res in run["differences"].items():
            for k, v in res.items():
                if v["difference"] is not None:
                    diffs.setdefault(name, {}).setdefault(k, []).append((run["seed"], v["difference"], v["n"]))
    return {"arms": {a: {k: {**over([(s, x) for s, x, _ in v]), "n_test": v[0][2]} for k, v in d.items()}
                     for a, d in arms.items()},
            "differences": {a: {k: {**over([(s, x) for s, x, _ in v]), "n_test": v[0][2]} for k, v in d.items()}
                            for a, d in diffs.items()}}


# ---------------------------------------------------------------------------------------------------------
# the run


def log(**kw) -> None:
    print(json.dumps(kw), file=sys.stderr, flush=True)


def timed_train(rec: dict, out: Path, clock: Callable[[], float] = time.perf_counter
                ) -> tuple[Path, list[float], float]:
    """Trains `rec` in process; returns (final checkpoint, the `clock` after each step, train()'s wall-clock)."""
    from vlkit.config import Recipe
    from vlkit.train.trainer import train

    times: list[float] = []
    t0 = time.perf_counter()
    final = train(Recipe.from_dict(rec), out=out, callbacks=(lambda trainer, step: times.append(clock()),))
    return final, times, time.perf_counter() - t0


def write_training_data(out: Path, n: int, seed: int) -> dict[str, Path]:
    """The arms' training samples (train split, held-out compositions excluded), plain and templated."""
    from vlkit.data.synth import generate_dataset

    folder = out / "train_data"
    if not (folder / "data.jsonl").exists():
        generate_dataset(folder, n=n, tasks=TASKS, split="train", seed=seed, progress=False)
    files = {"plain": folder / "data.jsonl", VISIONARY: folder / f"{VISIONARY}.jsonl"}
    if not files[VISIONARY].exists():
        lines = files["plain"].read_text().splitlines()
        files[VISIONARY].write_text("".join(json.dumps(templated(json.loads(x), VISIONARY)) + "\n" for x in lines))
    return files


def start_checkpoint(a: argparse.Namespace, out: Path) -> Path:
    if a.init:
        return Path(a.init)
    from arms import quickstart_model, shared_tokenizer, train_arm
    from vlkit.data.synth.stream import synth_stream

    synth = {"tasks": TASKS}
    tok = shared_tokenizer(synth_stream(synth, 0), out / "tokenizer.json", vocab_size=768)
    final = out / "init" / "final"
    if not final.exists():
        final, info = train_arm(quickstart_model(), {"train": [{"synth": synth}], "max_length": 200}, tok,
                                out / "init", a.train_steps, 32, 2e-3, 0)
        log(init=str(final), **info)
    return final


def evaluate(ckpt: Path, test: Path, out: Path, fmt: str, s: Settings) -> dict:
    from vlkit.eval.runner import run_eval
    from vlkit.pipeline import load

    return run_eval(load(ckpt), test, tasks=sorted(TASKS), batch_size=32, out_dir=out, progress=False, blind=True,
                    answer_format=fmt, max_new_tokens=s.max_new_tokens_visionary if fmt == VISIONARY else None)


def scored(ckpt: Path, test: Path, out: Path, fmt: str, s: Settings, metas: dict) -> tuple[dict, dict]:
    """(the report of an evaluation, {slice: {id: value}})."""
    scores = evaluate(ckpt, test, out, fmt, s)
    rows = [json.loads(x) for x in (out / "per_sample.jsonl").read_text().splitlines()]
    values = slice_values(rows, metas)
    report = {"scores": {k: summary(v) for k, v in values.items()},
              "blind": {t: {"metric": r["blind"]["metric"], "n": r["blind"]["n"],
                            **{k: rounded(r["blind"][k]) for k in ("with_images", "blind", "difference", "ci95")}}
                        for t, r in scores["tasks"].items() if "blind" in r},
              "parse_failure_rate": {t: rounded(r["parse_failures"]["rate"]) for t, r in scores["tasks"].items()}}
    if fmt != "plain":
        report["format_failure_rate"] = {t: rounded(r["format_failures"]["rate"]) for t, r in scores["tasks"].items()}
    return report, values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", help="the starting checkpoint (a quickstart checkpoint: runs/quickstart/final)")
    ap.add_argument("--train-steps", type=int, help="without --init: train a start for this many multitask steps")
    ap.add_argument("--out", default="/tmp/grpo_answers")
    ap.add_argument("--seconds", type=float, default=600, help="extra stepping seconds per arm (of --clock)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall: wall-clock; cpu: the process's CPU seconds (a shared CPU)")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    ap.add_argument("--arms", default=",".join(a.name for a in ARMS))
    ap.add_argument("--n-test", type=int, default=600)
    ap.add_argument("--train-samples", type=int, default=5000)
    ap.add_argument("--probe-steps", type=int, default=6)
    ap.add_argument("--format-share", type=float, default=Settings.format_share)
    ap.add_argument("--batch-size", type=int, default=Settings.batch_size)
    ap.add_argument("--prompts", type=int, default=Settings.prompts)
    ap.add_argument("--generations", type=int, default=Settings.generations)
    ap.add_argument("--lr-sft", type=float, default=Settings.lr_sft)
    ap.add_argument("--lr-grpo", type=float, default=Settings.lr_grpo)
    ap.add_argument("--max-new-tokens", type=int, default=Settings.max_new_tokens)
    ap.add_argument("--max-new-tokens-visionary", type=int, default=Settings.max_new_tokens_visionary)
    a = ap.parse_args()
    if not a.init and not a.train_steps:
        ap.error("give --init CKPT (a quickstart checkpoint) or --train-steps N")
    unknown = sorted(set(a.arms.split(",")) - {x.name for x in ARMS})
    if unknown:
        ap.error(f"unknown arm(s) {unknown}; choose from {[x.name for x in ARMS]}")
    arms = [x for x in ARMS if x.name in a.arms.split(",")]
    seeds = [int(x) for x in a.seeds.split(",")]
    s = Settings(batch_size=a.batch_size, prompts=a.prompts, generations=a.generations, lr_sft=a.lr_sft,
                 lr_grpo=a.lr_grpo, max_new_tokens=a.max_new_tokens,
                 max_new_tokens_visionary=a.max_new_tokens_visionary, format_share=a.format_share)
    out = Path(a.out)
    from vlkit.data.synth import generate_dataset

    init = start_checkpoint(a, out)
    data = write_training_data(out, a.train_samples, seed=1000)
    test = out / "test"
    if not (test / "data.jsonl").exists():
        generate_dataset(test, n=a.n_test, tasks=TASKS, split="test", seed=2000, progress=False)
    metas = {r["id"]: r.get("meta") or {} for r in map(json.loads, (test / "data.jsonl").read_text().splitlines())}

    # the probe: seconds per step of every phase, from the start
    rates = {}
    for phase in sorted({p for arm in arms for p in arm.phases}):
        _, times, _ = timed_train(recipe(init, {phase: a.probe_steps}, s, data, out / "probe" / phase, 0),
                                  out / "probe" / phase, CLOCKS[a.clock])
        rates[phase] = seconds_per_step(times)
        log(probe=phase, seconds_per_step=round(rates[phase], 3))

    init_report, init_values = scored(init, test, out / "eval" / "init", "plain", s, metas)
    log(evaluated="init", scores=init_report["scores"])
    runs = []
    for seed in seeds:
        run = {"seed": seed, "arms": {}}
        values = {"init": init_values}
        for arm in arms:
            steps = budget_steps(arm, a.seconds, rates, s.format_share)
            where = out / f"seed{seed}" / arm.name
            final, times, wall = timed_train(recipe(init, steps, s, data, where, seed), where, CLOCKS[a.clock])
            # the phases' steps, in order: split the step timestamps between them
            used, k = {}, 0
            for p, n in steps.items():
                used[p] = round(stepping_seconds(times[k:k + n]) if n > 1 else rates[p], 1)
                k += n
            report, values[arm.name] = scored(final, test, where / "eval", arm.answer_format, s, metas)
            run["arms"][arm.name] = {"steps": steps, "stepping_seconds": used,
                                     "seconds_used": round(sum(used.values()), 1), "train_wall_seconds": round(wall, 1),
                                     **report, **_last_rewards(where)}
            log(seed=seed, arm=arm.name, steps=steps, seconds_used=run["arms"][arm.name]["seconds_used"],
                scores=report["scores"])
        run["differences"] = differences(values)
        runs.append(run)
    result = {"init": str(init), "seconds": a.seconds, "clock": a.clock, "seeds": seeds, "n_test": a.n_test,
              "train_samples": a.train_samples, "settings": s.__dict__,
              "probe_seconds_per_step": {k: round(v, 3) for k, v in rates.items()},
              "start": init_report, "runs": runs}
    if len(seeds) > 1:
        result["over_seeds"] = aggregate(runs)
    print(json.dumps(result, indent=2))


def _last_rewards(run: Path) -> dict:
    """The last logged GRPO row's reward figures (the training-side view: mean reward and components)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward" in r]
    if not rows:
        return {}
    return {"last_logged_rewards": {k: rounded(v) for k, v in rows[-1].items()
                                    if k.startswith("reward") or k in ("completion_length", "step")}}


if __name__ == "__main__":
    main()
