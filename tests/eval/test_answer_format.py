"""Answer formats (plain / think / visionary): extraction edge cases, the prompt instruction, and evaluation with
a format (`run_eval(answer_format=...)`, `vlkit eval --answer-format`): answers read from <answer>, completions
that do not follow the format scored wrong and counted."""
import json

import pytest

from tests.eval.test_runner import FakePipe, build_dataset, wrong
from vlkit.errors import UserError
from vlkit.eval.answer_formats import ANSWER_FORMATS, extract_answer, format_prompt, parse_completion
from vlkit.eval.metrics import EvalError
from vlkit.eval.runner import PER_SAMPLE_FILE, SCORES_MD, run_eval
from vlkit.pipeline import Pipeline

VIS = "<info>a red square</info><think>It is red.</think><answer>red</answer>"


# ---------------------------------------------------------------------------------------------------------
# extraction

def test_well_formed_completions_and_whitespace():
    assert parse_completion(VIS, "visionary") == {"info": "a red square", "think": "It is red.", "answer": "red"}
    spaced = "\n  <info> a red square </info>\n\n<think>\tIt is red.\n</think>  <answer>\n red \n</answer>\n "
    assert extract_answer(spaced, "visionary") == "red"
    assert extract_answer("<think>multi\nline\nreasoning</think><answer>two words</answer>", "think") == "two words"
    assert extract_answer("<think></think><answer>x</answer>", "think") == "x"  # an empty think is allowed


@pytest.mark.parametrize("text", [
    "red",                                                            # no tags at all
    "<think>It is red.</think><answer>red</answer>",                  # visionary without <info>
    "<info>a</info><think>b</think><answer>red",                      # unclosed answer
    "<info>a</info><think>b<answer>red</answer>",                     # unclosed think
    "<info>a</info><answer>red</answer><think>b</think>",             # parts out of order
    "Sure! <info>a</info><think>b</think><answer>red</answer>",       # text before
    "<info>a</info><think>b</think><answer>red</answer> Hope this helps",  # text after
    "<info>a</info>so<think>b</think><answer>red</answer>",           # text between parts
    "<info>a</info><think>b</think><answer>  </answer>",              # empty answer
    "<info>a</info><think>b</think><answer>red</answer><answer>blue</answer>",  # two answers
    "<info>a</info><think>b <think>c</think> d</think><answer>red</answer>",    # nested think
    "<info>a</info><think>b</think><answer>the <answer>red</answer></answer>",  # nested answer
    "<INFO>a</INFO><THINK>b</THINK><ANSWER>red</ANSWER>",             # tags are lower-case
    "<info>a</info><think>b</think><Answer>red</Answer>",
])
def test_completions_that_do_not_follow_visionary(text):
    assert extract_answer(text, "visionary") is None
    assert parse_completion(text, "visionary") is None


def test_other_markup_inside_a_part_is_content_and_case_is_kept():
    box = "<ref>the red square</ref><box>(10,20),(30,40)</box>"
    assert extract_answer(f"<think>find it</think><answer>{box}</answer>", "think") == box
    assert extract_answer("<think>a <b>bold</b> thought</think><answer>Red</answer>", "think") == "Red"
    assert extract_answer("<think>a</think><answer>1 < 2 > 0</answer>", "think") == "1 < 2 > 0"


def test_plain_is_the_whole_completion():
    assert extract_answer("  red\n") == "red"
    assert extract_answer(VIS, "plain") == VIS  # tags mean nothing in plain
    assert extract_answer(" \n\t") is None  # an empty completion has no answer
    with pytest.raises(UserError, match=r"answer format 'json' is unknown.*\['plain', 'think', 'visionary'\]"):
        extract_answer("red", "json")


def test_each_format_asks_for_its_own_parts():
    assert format_prompt("<image>\nWhat color?", "plain") == "<image>\nWhat color?"
    for name, fmt in ANSWER_FORMATS.items():
        asked = format_prompt("<image>\nWhat color?", name)
        assert asked.startswith("<image>\nWhat color?")
        for tag in fmt.tags:  # the instruction names every part, and a completion of those parts parses
            assert f"<{tag}></{tag}>" in fmt.instruction
        completion = "".join(f"<{t}>x{k}</{t}>" for k, t in enumerate(fmt.tags)) or "x0"
        assert extract_answer(completion, name) == f"x{max(len(fmt.tags) - 1, 0)}"
    assert format_prompt("Q?", "visionary") == ("Q?\nFirst describe the image in <info></info>, then think in "
                                                 "<think></think>, then give the answer in <answer></answer>.")


# ---------------------------------------------------------------------------------------------------------
# evaluation with a format

def _index(prompt):
    return int(prompt.split("]")[0].rsplit("-", 1)[1])


class FormatPipe(FakePipe):
    """FakePipe's answers wrapped in the visionary template, except samples with index % 4 == 1 (answered bare:
    not following the format). Checks that every chat prompt asks for the format."""

    def __init__(self, truth, fmt="visionary", **kw):
        super().__init__(truth, **kw)
        self.suffix = "\n" + ANSWER_FORMATS[fmt].instruction
        self.asked = []

    def chat_batch(self, prompts, images, max_new_tokens=64, temperature=0.0):
        assert all(p.endswith(self.suffix) for p in prompts), prompts
        self.asked += prompts
        bare = [p[:-len(self.suffix)] for p in prompts]
        answers = super().chat_batch(bare, images, max_new_tokens, temperature)
        return [a if _index(p) % 4 == 1 else f"<info>an image</info>\n<think>hmm</think>\n<answer>{a}</answer>"
                for p, a in zip(bare, answers)]


@pytest.fixture
def dataset(tmp_path):
    samples, truth = build_dataset(tmp_path / "data")
    return tmp_path / "data", samples, truth


def test_eval_reads_answers_from_the_format_and_counts_parse_failures(dataset, tmp_path):
    data, samples, truth = dataset
    pipe = FormatPipe(truth)
    scores = run_eval(pipe, data, tasks=["vqa", "grounding", "generation"], out_dir=tmp_path / "out",
                      answer_format="visionary", blind=True, resamples=100, progress=False)
    assert scores["answer_format"] == "visionary"
    vqa, grounding = scores["tasks"]["vqa"], scores["tasks"]["grounding"]
    # right = not wrong (index % 3 == 0) and formatted (index % 4 != 1)
    right = [i for i in range(12) if not wrong(f"[vqa-{i}]") and i % 4 != 1]
    assert vqa["metrics"]["vqa_acc"]["value"] == pytest.approx(len(right) / 12)
    unformatted = [i for i in range(12) if i % 4 == 1]
    assert vqa["format_failures"] == {"answer_format": "visionary", "count": len(unformatted),
                                      "rate": pytest.approx(len(unformatted) / 12)}
    assert vqa["parse_failures"]["count"] == len(unformatted)  # the wrong answers ("blue") are answers
    # the blind comparison reads answers the same way (the fake pipe ignores the images)
    assert vqa["blind"]["with_images"] == pytest.approx(len(right) / 12)
    # grounding: the box inside <answer> is read; failures = no box (wrong) or no format
    g_right = [i for i in range(6) if not wrong(f"[grounding-{i}]") and i % 4 != 1]
    g_fail = [i for i in range(6) if wrong(f"[grounding-{i}]") or i % 4 == 1]
    assert grounding["metrics"]["acc@0.5"]["value"] == pytest.approx(len(g_right) / 6)
    assert grounding["parse_failures"]["count"] == len(g_fail)
    assert grounding["format_failures"]["count"] == len([i for i in range(6) if i % 4 == 1])
    # text-to-image is not a text answer: its prompt and scores are as without a format
    assert "format_failures" not in scores["tasks"]["generation"]
    assert sorted(p for p, _ in pipe.gen_calls) == ["thing 0", "thing 1", "thing 2"]
    # per-sample rows: the raw completion and whether it parsed
    rows = [json.loads(line) for line in (tmp_path / "out" / PER_SAMPLE_FILE).read_text().splitlines()]
    vqa_rows = {r["id"]: r for r in rows if r["task"] == "vqa"}
    assert vqa_rows["vqa-1"]["parsed"] is False and vqa_rows["vqa-1"]["completion"] == "red"
    assert vqa_rows["vqa-1"]["prediction"] == ""
    assert vqa_rows["vqa-2"]["parsed"] is True and vqa_rows["vqa-2"]["completion"].startswith("<info>")
    assert vqa_rows["vqa-2"]["prediction"] == "red"
    assert "parsed" not in next(r for r in rows if r["task"] == "generation")
    md = (tmp_path / "out" / SCORES_MD).read_text()
    assert "Answer format `visionary`" in md and f"vqa {len(unformatted)} (" in md


def test_a_format_gets_its_own_cache_keys_and_plain_is_unchanged(dataset, tmp_path):
    data, samples, truth = dataset
    out = tmp_path / "out"
    plain = run_eval(FakePipe(truth), data, tasks=["vqa"], out_dir=out, resamples=100, progress=False)
    formatted = run_eval(FormatPipe(truth), data, tasks=["vqa"], out_dir=out, answer_format="visionary",
                         resamples=100, progress=False)
    assert formatted["predictions"]["reused"] == 0  # the format changes the prompt: no plain answer reused
    assert "format_failures" not in plain["tasks"]["vqa"] and plain["answer_format"] == "plain"
    again = FakePipe(truth)
    rerun = run_eval(again, data, tasks=["vqa"], out_dir=out, answer_format="plain", resamples=100, progress=False)
    assert again.chat_calls == [] and rerun["tasks"]["vqa"] == plain["tasks"]["vqa"]
    with pytest.raises(EvalError, match="answer format 'xml' is unknown"):
        run_eval(FakePipe(truth), data, out_dir=out, answer_format="xml", progress=False)


def test_cli_eval_with_a_format_on_a_tiny_model(make_model, tokenizer, tmp_path):
    from vlkit.apps.cli import main
    from vlkit.data.synth import generate_dataset

    ckpt = Pipeline(make_model("mlp"), tokenizer).save_pretrained(tmp_path / "ckpt")
    data = generate_dataset(tmp_path / "data", n=4, tasks=["vqa", "ocr"], split="test", progress=False)
    out = tmp_path / "eval"
    assert main(["eval", str(ckpt), "--data", str(data), "--answer-format", "think", "--out", str(out),
                 "--batch-size", "4"]) == 0
    scores = json.loads((out / "scores.json").read_text())
    rows = [json.loads(line) for line in (out / PER_SAMPLE_FILE).read_text().splitlines()]
    assert scores["answer_format"] == "think" and len(rows) == 4
    for task, res in scores["tasks"].items():
        task_rows = [r for r in rows if r["task"] == task]
        # what the runner counts is what the rows say, and each row's flag is the format's verdict on its completion
        assert all(r["parsed"] == (extract_answer(r["completion"], "think") is not None) for r in task_rows)
        assert res["format_failures"]["count"] == sum(not r["parsed"] for r in task_rows)
        assert res["parse_failures"]["count"] >= res["format_failures"]["count"]
        assert all(r["prediction"] == "" for r in task_rows if not r["parsed"])
    with pytest.raises(SystemExit):
        main(["eval", str(ckpt), "--data", str(data), "--answer-format", "xml"])
