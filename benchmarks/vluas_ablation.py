"""The VLUAS ablation on models that see: does predicting visual codes, or dense NTP-M supervision, help
fine-grained perception?

Four arms on the CURRENT quickstart design (recipes/quickstart.yaml: conv stem, `init: fan_in`, the
spatial_merge connector = a 4 x 4 grid of LM image tokens, a `vision` stage then a `multitask` stage on the
endless `synth:` stream), each trained from scratch by vlkit's trainer for every seed:

    none-dense    vision_target: none,  NTP-M on (the quickstart itself, at this budget)
    codes-dense   vision_target: codes, NTP-M on
    none-plain    vision_target: none,  NTP-M off
    codes-plain   vision_target: codes, NTP-M off

- `codes`: the input image tokens are also labelled with their visual codes (vlkit's TargetSpec: the LM predicts
  each patch's code from the tokens before it, at the `vision_loss_weight` of recipes/quickstart-vluas.yaml). One
  tokenizer (vlkit's vq trainer, recipes/vq.yaml with `downsample` set to the LM grid's, 16 -> a 4 x 4 code grid,
  and VQ_TRAIN's settings) is trained once and shared by every codes arm; its held-out PSNR is in the output.
- NTP-M on: `model.dense_prediction` + `dense_from: connector`, the stream's `dense_labels`, and the `vision` stage
  (which exists only with dense labels). NTP-M off: no dense loss, no dense labels, no `vision` stage; its steps go
  to the multitask stage at their measured cost: a calibration run times steps of both stages of the none-dense
  recipe (median seconds per step, one thread) and the plain arms get
  `steps + round(vision_steps * vision_s_per_step / multitask_s_per_step)` multitask steps. This matches the vision
  stage, not NTP-M's own cost inside the multitask stage; `--plain-steps` sets the plain budget by hand (e.g. to
  match total wall-clock). Each run's own per-stage wall-clock is in the output, so the match can be checked.
- Same otherwise: one text tokenizer (the quickstart's, trained on its stages' stream, seed 0), the quickstart's
  multitask mix of understanding tasks, the same stream seeds (vision stage `seed`, multitask `seed + 1`, as the
  quickstart), steps, batch and learning rates; only the model's initial weights differ between arms of a seed
  where the vocabulary does (codes add 256 rows).
- Scores (vlkit's eval runner on a held-out test split, greedy, with `blind=True`): VQA overall and per question
  type, grounding Acc@0.5 overall and per object size (the grounding task's category: `small` is the small-object
  score), OCR exact match, and for each task the blind baseline (every image blanked) with the with-images minus
  blind difference (paired bootstrap CI). Per run: each score with vlkit's 95% bootstrap CI. Per arm: the mean
  over seeds with a 95% t-interval over seeds. Differences (codes - none at each NTP-M setting, NTP-M on - off at
  each target): per seed on the same test samples, mean and 95% t-interval over seeds.

Prints JSON on stdout (runs, arms, differences, timing); progress on stderr; each run's log, checkpoint, eval and
result.json under --out/runs/<arm>-s<seed>/ (a rerun reuses finished runs; `--report-only` only aggregates).

    python benchmarks/vluas_ablation.py --out /tmp/ablation --seeds 0 1 2 --vision-steps 300 --steps 700 \\
        --batch-size 32 --n-test 300 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Optional

from arms import t_interval

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
VQ_RECIPE = ROOT / "recipes" / "vq.yaml"
VLUAS_RECIPE = ROOT / "recipes" / "quickstart-vluas.yaml"  # the codes arms take its vision_loss_weight
EVAL = ["vqa", "grounding", "ocr"]
TARGETS = ("none", "codes")
# score name -> (task, metric, breakdown (key, group) or None); `vqa_<type>` are added per question type found
SCORES = {"vqa": ("vqa", "vqa_acc", None), "grounding": ("grounding", "acc@0.5", None),
          "grounding_small": ("grounding", "acc@0.5", ("category", "small")),
          "grounding_medium": ("grounding", "acc@0.5", ("category", "medium")),
          "grounding_large": ("grounding", "acc@0.5", ("category", "large")),
          "ocr": ("ocr", "exact_match", None)}


@dataclass(frozen=True)
class Arm:
    target: str  # vision_target: none | codes
    dense: bool  # NTP-M supervision (and the `vision` stage)

    @property
    def name(self) -> str:
        return f"{self.target}-{'dense' if self.dense else 'plain'}"


ARMS = tuple(Arm(t, d) for d in (True, False) for t in TARGETS)


@dataclass(frozen=True)
class Budget:
    vision_steps: int  # the `vision` stage of the NTP-M arms
    steps: int         # the multitask stage of the NTP-M arms
    plain_steps: int   # the multitask stage of the arms without NTP-M (steps + the vision stage's compute)
    batch_size: int


# ---------------------------------------------------------------------------------------------------------
# recipes


def arm_recipe(arm: Arm, seed: int, budget: Budget, out: Path, tokenizer: Optional[Path] = None,
               vq: Optional[Path] = None) -> dict:
    """recipes/quickstart.yaml as this arm's recipe dict (see the module docstring); `tokenizer`: a text
    tokenizer file every arm shares (None: the recipe trains its own); `vq`: the visual tokenizer (codes arms)."""
    from vlkit.config import load_yaml

    spec = load_yaml(QUICKSTART)
    spec["train"] = {k: v for k, v in spec["train"].items() if not k.startswith("eval_")}  # no learning curve
    spec["train"].update(out=str(out), seed=seed, log_every=20)
    if tokenizer is not None:
        spec["tokenizer"] = {"path": str(tokenizer)}
    stages = {s["name"]: s for s in spec["stages"]}
    vision, multitask = stages["vision"], stages["multitask"]
    for stage, stream_seed in ((vision, seed), (multitask, seed + 1)):  # the quickstart's: train.seed + index
        stage["batch_size"] = budget.batch_size
        (src,) = stage["data"]["train"]
        src["synth"]["seed"] = stream_seed
    model = spec["model"]
    model["vision_target"] = arm.target
    if arm.target == "codes":
        if vq is None:
            raise ValueError(f"arm {arm.name} needs a visual tokenizer")
        spec["vq"] = str(vq)
        model["vision_loss_weight"] = load_yaml(VLUAS_RECIPE)["model"]["vision_loss_weight"]
    vision["steps"] = budget.vision_steps
    if arm.dense:
        multitask["steps"] = budget.steps
        spec["stages"] = [vision, multitask]
    else:
        model["dense_prediction"] = False
        model.pop("dense_from", None)
        multitask["data"]["train"][0]["synth"]["dense_labels"] = False
        multitask["steps"] = budget.plain_steps
        spec["stages"] = [multitask]
    return spec


def lm_grid_downsample_of(recipe: dict) -> int:
    """Pixels per LM image token of the recipe's model (what the visual tokenizer's `downsample` must be)."""
    from vlkit.config import PRESETS, model_config_from_dict, to_dict
    from vlkit.models.vq import lm_grid_downsample

    model = recipe["model"]
    base = to_dict(PRESETS[model.get("preset", "tiny")]())
    for key in ("vision", "connector"):
        base[key].update(model.get(key) or {})
    return lm_grid_downsample(model_config_from_dict(base))


# ---------------------------------------------------------------------------------------------------------
# shared pieces: test split, text tokenizer, visual tokenizer, calibration


def test_split(out: Path, n_per_task: int) -> Path:
    from vlkit.data.synth import generate_dataset

    path = out / f"test-{n_per_task}"
    if not (path / "data.jsonl").is_file():
        generate_dataset(path, n=n_per_task * len(EVAL), tasks=EVAL, split="test", seed=1, progress=False, workers=1)
    return path


def text_tokenizer(out: Path, budget: Budget) -> Path:
    """The quickstart's text tokenizer (its stages' stream corpus, seed 0, its vocab_size), trained once."""
    from vlkit.config import Recipe
    from vlkit.tokenizer import Tokenizer
    from vlkit.train.stage_data import tokenizer_corpus

    path = out / "tokenizer.json"
    if not path.is_file():
        recipe = Recipe.from_dict(arm_recipe(Arm("none", True), 0, budget, out / "tok-recipe"))
        tok = Tokenizer.train(list(tokenizer_corpus(recipe.stages, 0)),
                              vocab_size=int(recipe.tokenizer.get("vocab_size", 1024)))
        tok.save(path)
    return path


# the visual tokenizer: recipes/vq.yaml with the LM grid's downsample, and the faster EMA, learning rate and batch
# that took the 8 x 8 tokenizer from 21.6 to 27.0 dB (docs/vision_as_target.md, "Figures: the tokenizer")
VQ_TRAIN = {"ema_decay": 0.8, "lr": 2e-3, "batch_size": 32}


def visual_tokenizer(out: Path, test: Path, steps: int, n_images: int, budget: Budget) -> dict:
    """The visual tokenizer (VQ_TRAIN), trained once on `n_images` images of the multitask stream (seed 100,
    apart from every run's stream); returns its metrics, PSNR on the test split's images."""
    from vlkit.config import VQConfig, from_dict, load_yaml
    from vlkit.data.synth.stream import synth_stream
    from vlkit.models.vq import VisualTokenizer
    from vlkit.train import vq_trainer

    path = out / "vq"
    if not (path / "test_metrics.json").is_file():
        recipe = arm_recipe(Arm("none", False), 0, budget, out / "vq-recipe")
        spec = load_yaml(VQ_RECIPE)
        cfg = from_dict(VQConfig, {**spec["vq"], "downsample": lm_grid_downsample_of(recipe),
                                   "ema_decay": VQ_TRAIN["ema_decay"]}, "vq")
        stream = synth_stream({**recipe["stages"][-1]["data"]["train"][0]["synth"], "seed": 100})
        images = [im for g in range(n_images) for im in stream(g)["image_objects"]]
        train = vq_trainer.train_visual_tokenizer(
            cfg, images, steps=steps, batch_size=VQ_TRAIN["batch_size"], lr=VQ_TRAIN["lr"], out_dir=path, seed=0,
            precision="fp32", progress=False)
        held = vq_trainer.evaluate_visual_tokenizer(VisualTokenizer.from_pretrained(path),
                                                    vq_trainer.load_images(test, cfg.image_size))
        metrics = {"test": held, "train_images": train["train_images"], "steps": steps,
                   "batch_size": train["batch_size"], "seconds": round(train["seconds"], 1),
                   "grid": train["grid"], "downsample": cfg.downsample, "codebook_size": cfg.codebook_size}
        (path / "test_metrics.json").write_text(json.dumps(metrics, indent=1))
    return json.loads((path / "test_metrics.json").read_text())


class StepClock:
    """A trainer callback: the wall-clock time after every global step."""

    def __init__(self):
        self.start, self.times = time.perf_counter(), []

    def __call__(self, trainer, global_step: int) -> None:
        self.times.append(time.perf_counter())

    def stage_seconds(self, steps: list[int]) -> list[float]:
        """Seconds of each stage (their step counts in order), from the training start."""
        out, prev, k = [], self.start, 0
        for n in steps:
            k += n
            out.append(round(self.times[k - 1] - prev, 1))
            prev = self.times[k - 1]
        return out

    def median_step(self, first: int, last: int) -> float:
        """Median seconds per step over global steps first+1..last (1-based)."""
        return statistics.median(b - a for a, b in zip(self.times[first:last - 1], self.times[first + 1:last]))


def calibrate(out: Path, tokenizer: Path, steps: int, batch: int) -> dict:
    """Times `steps` steps of each stage of the none-dense recipe; the median seconds per step of each (the
    first 3 steps of a stage, which set it up, are left out)."""
    from vlkit.config import Recipe
    from vlkit.train.trainer import train

    path = out / "calibration.json"
    if not path.is_file():
        budget = Budget(steps, steps, steps, batch)
        run = out / "calibration-run"
        clock = StepClock()
        train(Recipe.from_dict(arm_recipe(Arm("none", True), 0, budget, run, tokenizer)), out=run,
              callbacks=(clock,))
        vision, multitask = clock.median_step(3, steps), clock.median_step(steps + 3, 2 * steps)
        path.write_text(json.dumps({"steps_per_stage": steps, "batch_size": batch, "vision_s_per_step":
                                    round(vision, 4), "multitask_s_per_step": round(multitask, 4),
                                    "ratio": round(vision / multitask, 4)}, indent=1))
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------------
# one run (in a worker process, one thread)


def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def log_to(path: Path) -> None:
    """This worker's stdout, stderr and logging go to `path` (the driver's stdout stays the JSON's alone)."""
    import logging

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)


def logged(log: Path, fn, *args):
    """fn(*args) in a worker whose output goes to `log`."""
    log_to(log)
    return fn(*args)


def run_one(arm: Arm, seed: int, budget: Budget, out: Path, tokenizer: Path, vq: Optional[Path], test: Path) -> dict:
    """Train and evaluate one (arm, seed) in a worker process (its output goes to <run>/log.txt); returns (and
    writes) <run>/result.json."""
    run = out / "runs" / f"{arm.name}-s{seed}"
    if (run / "result.json").is_file():
        return finished(run, arm, budget)
    log_to(run / "log.txt")
    from vlkit.config import Recipe
    from vlkit.eval.runner import run_eval
    from vlkit.pipeline import load
    from vlkit.train.trainer import train

    recipe = Recipe.from_dict(arm_recipe(arm, seed, budget, run / "train", tokenizer, vq))
    steps = [s.steps for s in recipe.stages]
    clock = StepClock()
    t0 = time.perf_counter()
    final = train(recipe, out=run / "train", callbacks=(clock,))
    t_train = time.perf_counter() - t0
    scores = run_eval(load(final), test, tasks=EVAL, batch_size=64, out_dir=run / "eval", blind=True,
                      progress=False)
    t_eval = time.perf_counter() - t0 - t_train
    losses = [json.loads(r) for r in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    result = {"arm": arm.name, "target": arm.target, "dense": arm.dense, "seed": seed,
              "steps": dict(zip([s.name for s in recipe.stages], steps)), "batch_size": budget.batch_size,
              "seconds": {"train": round(t_train, 1), **dict(zip([f"{s.name}_stage" for s in recipe.stages],
                                                                 clock.stage_seconds(steps))),
                          "eval": round(t_eval, 1), "total": round(t_train + t_eval, 1)},
              "final_loss": [r["loss"] for r in losses if "loss" in r][-1],
              "scores": run_scores(scores), "blind": blind_scores(scores)}
    (run / "result.json").write_text(json.dumps(result, indent=1))
    return result


def planned_steps(arm: Arm, budget: Budget) -> dict:
    return {"vision": budget.vision_steps, "multitask": budget.steps} if arm.dense else \
        {"multitask": budget.plain_steps}


def finished(run: Path, arm: Arm, budget: Budget) -> dict:
    """A finished run's result.json, if it was trained with this budget (else a clear error)."""
    r = json.loads((run / "result.json").read_text())
    want = planned_steps(arm, budget)
    if r["steps"] != want or r["batch_size"] != budget.batch_size:
        raise ValueError(f"{run} was trained with steps {r['steps']} x batch {r['batch_size']}, not {want} x "
                         f"{budget.batch_size}: use another --out (or the same flags)")
    return r


def rounded(m: dict) -> dict:
    """vlkit's {"value", "ci95", "n"} summary with 4 decimals."""
    return {"value": None if m["value"] is None else round(m["value"], 4),
            "ci95": m["ci95"] and [round(x, 4) for x in m["ci95"]], "n": m["n"]}


def run_scores(scores: dict) -> dict:
    """{score name: value with its bootstrap CI and n} from run_eval's scores (SCORES + `vqa_<question type>`)."""
    out = {}
    wanted = dict(SCORES)
    for qtype in scores["tasks"]["vqa"]["breakdown"].get("question_type", {}):
        wanted[f"vqa_{qtype}"] = ("vqa", "vqa_acc", ("question_type", qtype))
    for name, (task, metric, group) in wanted.items():
        t = scores["tasks"][task]
        if group is not None:
            t = t["breakdown"].get(group[0], {}).get(group[1])
            if t is None:
                continue
        out[name] = rounded(t["metrics"][metric])
    return out


def blind_scores(scores: dict) -> dict:
    """Per task: its headline metric with images and blind, and the difference with a paired bootstrap CI."""
    out = {}
    for task in EVAL:
        b = scores["tasks"][task]["blind"]
        out[task] = {"metric": b["metric"], "with_images": round(b["with_images"], 4), "blind": round(b["blind"], 4),
                     "difference": round(b["difference"], 4), "ci95": [round(x, 4) for x in b["ci95"]],
                     "beats_blind": b["beats_blind"], "n": b["n"]}
    return out


# ---------------------------------------------------------------------------------------------------------
# aggregation


def mean_ci(xs: list[float]) -> dict:
    """Mean over seeds with a 95% t-interval (none for one seed)."""
    m, half = t_interval(xs)
    out = {"mean": round(m, 4), "n_seeds": len(xs), "values": [round(x, 4) for x in xs]}
    if half is not None:
        out["ci95"] = [round(m - half, 4), round(m + half, 4)]
    return out


def flat(result: dict) -> dict[str, float]:
    """A run's scores as {name: value}, blind baselines and with-images minus blind included."""
    out = {k: v["value"] for k, v in result["scores"].items() if v["value"] is not None}
    for task, b in result["blind"].items():
        out[f"{task}_blind"] = b["blind"]
        out[f"{task}_minus_blind"] = b["difference"]
    return out


def aggregate(results: list[dict]) -> dict:
    """Per arm: the mean and t-interval over seeds of every score, with the test-sample n of the first run; the
    differences between arms per seed (paired by seed), mean and t-interval over the seeds both arms finished."""
    by = {(r["arm"], r["seed"]): flat(r) for r in results}
    n = {(r["arm"], k): v["n"] for r in results for k, v in r["scores"].items()}
    arms = {}
    for arm in ARMS:
        runs = sorted(s for a, s in by if a == arm.name)
        if not runs:
            continue
        keys = sorted(set.intersection(*(set(by[arm.name, s]) for s in runs)))
        arms[arm.name] = {"seeds": runs, "scores": {k: {**mean_ci([by[arm.name, s][k] for s in runs]),
                                                        "n_test": n.get((arm.name, k))} for k in keys}}
    diffs = {}
    pairs = [(f"codes_minus_none/{d}", f"codes-{d}", f"none-{d}") for d in ("dense", "plain")]
    pairs += [(f"dense_minus_plain/{t}", f"{t}-dense", f"{t}-plain") for t in TARGETS]
    for name, a, b in pairs:
        seeds = sorted(s for x, s in by if x == a and (b, s) in by)
        if seeds:
            keys = sorted(set.intersection(*(set(by[a, s]) & set(by[b, s]) for s in seeds)))
            diffs[name] = {"seeds": seeds, "scores": {k: mean_ci([by[a, s][k] - by[b, s][k] for s in seeds])
                                                      for k in keys}}
    return {"arms": arms, "differences": diffs}


# ---------------------------------------------------------------------------------------------------------
# the driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/vluas_ablation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=[a.name for a in ARMS], choices=[a.name for a in ARMS])
    ap.add_argument("--vision-steps", type=int, default=300, help="the vision stage of the NTP-M arms")
    ap.add_argument("--steps", type=int, default=700, help="the multitask stage of the NTP-M arms")
    ap.add_argument("--plain-steps", type=int, help="the multitask stage of the arms without NTP-M (default: "
                    "--steps + the vision stage's measured compute in multitask steps)")
    ap.add_argument("--calibrate-steps", type=int, default=30, help="steps per stage of the calibration run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=300, help="held-out test samples per task")
    ap.add_argument("--vq", help="a visual tokenizer to use (its grid must be the LM's 4 x 4); default: train one")
    ap.add_argument("--vq-steps", type=int, default=2000)
    ap.add_argument("--vq-images", type=int, default=4000)
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    ap.add_argument("--stop-after", type=float, help="start no run after this many seconds (finished runs report)")
    ap.add_argument("--report-only", action="store_true", help="aggregate the finished runs, train nothing")
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch starts here or in a worker
    one_thread()
    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    arms = [arm for arm in ARMS if arm.name in a.arms]
    say = lambda msg: print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    budget = Budget(a.vision_steps, a.steps, a.plain_steps or a.steps, a.batch_size)
    test = test_split(out, a.n_test)
    tokenizer = text_tokenizer(out, budget)
    need_vq = any(arm.target == "codes" for arm in arms) and not a.vq
    need_cal = any(not arm.dense for arm in arms) and a.plain_steps is None
    vq_metrics, cal = None, None
    if not a.report_only and (need_vq or need_cal):
        say(f"shared pieces (trained once, then reused from --out): {'visual tokenizer ' if need_vq else ''}"
            f"{'calibration' if need_cal else ''}")
        with ProcessPoolExecutor(max(1, min(a.jobs, 2)), mp_context=get_context("spawn"), initializer=one_thread) as ex:
            fv = fc = None
            if need_vq:
                fv = ex.submit(logged, out / "vq.log", visual_tokenizer, out, test, a.vq_steps, a.vq_images, budget)
            if need_cal:
                fc = ex.submit(logged, out / "calibration.log", calibrate, out, tokenizer, a.calibrate_steps,
                               a.batch_size)
            vq_metrics, cal = fv and fv.result(), fc and fc.result()
    elif need_vq and (out / "vq" / "test_metrics.json").is_file():
        vq_metrics = json.loads((out / "vq" / "test_metrics.json").read_text())
    if cal is None and (out / "calibration.json").is_file():
        cal = json.loads((out / "calibration.json").read_text())
    if a.plain_steps is None and cal is not None:
        budget = Budget(a.vision_steps, a.steps, a.steps + round(a.vision_steps * cal["ratio"]), a.batch_size)
    vq = Path(a.vq) if a.vq else out / "vq"
    say(f"budget {budget}; visual tokenizer {vq}: {vq_metrics and vq_metrics['test']}")

    todo = [(arm, s) for s in a.seeds for arm in arms]
    results = []
    if a.report_only:
        try:
            results = [finished(run, arm, budget) for arm, s in todo
                       if ((run := out / "runs" / f"{arm.name}-s{s}") / "result.json").is_file()]
        except ValueError as exc:
            sys.exit(f"vluas_ablation: {exc}")
    else:
        with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn"), initializer=one_thread) as ex:
            pending = list(todo)
            running = {}
            while pending or running:
                while pending and len(running) < a.jobs and (a.stop_after is None or
                                                              time.perf_counter() - t0 < a.stop_after):
                    arm, s = pending.pop(0)
                    say(f"start {arm.name} seed {s}")
                    running[ex.submit(run_one, arm, s, budget, out, tokenizer, vq, test)] = (arm, s)
                if not running:
                    break
                done = next(iter(_wait(running)))
                arm, s = running.pop(done)
                try:
                    r = done.result()
                except Exception as exc:  # one failed run does not stop the others; its log says why
                    say(f"FAILED {arm.name} seed {s}: {exc!r} (see {out / 'runs' / f'{arm.name}-s{s}' / 'log.txt'})")
                    continue
                results.append(r)
                say(f"done {arm.name} seed {s}: {r['seconds']} VQA {r['scores']['vqa']['value']} "
                    f"grounding {r['scores']['grounding']['value']} OCR {r['scores']['ocr']['value']}")
            if pending:
                say(f"--stop-after: {len(pending)} runs not started: {[f'{x.name}-s{s}' for x, s in pending]}")
    report = {"command": " ".join(sys.argv), "budget": budget.__dict__, "seeds": a.seeds, "n_test_per_task": a.n_test,
              "calibration": cal, "visual_tokenizer": vq_metrics, "wall_s": round(time.perf_counter() - t0, 1),
              "runs": sorted(results, key=lambda r: (r["seed"], r["arm"])), **aggregate(results)}
    print(json.dumps(report, indent=1))


def _wait(running: dict):
    from concurrent.futures import FIRST_COMPLETED, wait

    return wait(running, return_when=FIRST_COMPLETED).done


if __name__ == "__main__":
    main()
