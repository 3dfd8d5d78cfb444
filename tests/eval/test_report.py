"""vlkit.eval.report: the markdown tables, from hand-built score dicts (the runner's own output is checked in
test_runner.py and test_blind.py)."""
from vlkit.eval.report import blind_table, scores_table

SCORES = {
    "tasks": {
        "vqa": {"primary": "vqa_acc", "parse_failures": {"count": 1, "rate": 0.25},
                "metrics": {"vqa_acc": {"value": 0.5, "ci95": [0.1, 0.9], "n": 4},
                            "vqa_acc_lenient": {"value": 0.75, "ci95": None, "n": 4}},
                "breakdown": {"question_type": {"color": {"n": 2, "parse_failure_rate": 0.5,
                                                          "metrics": {"vqa_acc": {"value": 0.0, "ci95": [0.0, 0.0]}}}}}},
        "generation": {"primary": "gen_correct", "metrics": {}},
    },
    "skipped": {"tasks": {"segmentation": "no mask head"}},
    "predictions": {"reused": 3, "total": 4, "new": 1},
}


def test_scores_table_rows_skips_cache_and_breakdowns():
    md = scores_table(SCORES)
    lines = md.splitlines()
    assert lines[0] == "## Eval scores"
    assert "| task | metric | value | 95% CI | n | parse fail |" in lines
    assert "| vqa | vqa_acc * | 0.500 | [0.100, 0.900] | 4 | 25.0% |" in lines       # headline metric starred
    assert "| vqa | vqa_acc_lenient | 0.750 | - | 4 | 25.0% |" in lines            # no CI: a dash
    assert "| generation | - | - | - | 0 | - |" in lines                            # no metrics: one empty row
    assert "Skipped: segmentation (no mask head)" in lines
    assert "Predictions: 3 of 4 reused from the cache, 1 new." in lines
    assert "### vqa: vqa_acc by group" in lines
    assert "| question_type | color | 0.000 | [0.000, 0.000] | 2 | 50.0% |" in lines
    assert "## With images vs blind" not in md                                      # no blind run: no blind table
    assert md.endswith("\n")
    assert "### vqa" not in scores_table(SCORES, breakdowns=False)


def test_blind_table_flags_a_model_that_does_not_beat_its_blind_self():
    scores = {
        "tasks": {
            "vqa": {"blind": {"metric": "vqa_acc", "with_images": 0.75, "blind": 0.0, "difference": 0.75,
                              "ci95": [0.5, 1.0], "n": 20, "beats_blind": True}},
            "ocr": {"blind": {"metric": "exact_match", "with_images": 1.0, "blind": 1.0, "difference": 0.0,
                              "ci95": [0.0, 0.0], "n": 12, "beats_blind": False}},
            "generation": {},                                                        # no blind score: no row
        },
        "blind": {"fill": [128, 128, 128], "not_beating_blind": ["ocr"], "no_input_image": ["generation"]},
    }
    md = blind_table(scores)
    lines = md.splitlines()
    assert "| vqa | vqa_acc | 0.750 | 0.000 | +0.750 | [0.500, 1.000] | 20 | yes |" in lines
    assert "| ocr | exact_match | 1.000 | 1.000 | +0.000 | [0.000, 0.000] | 12 | **NO** |" in lines
    assert not any(line.startswith("| generation") for line in lines)
    assert "RGB 128, 128, 128" in md
    assert md.splitlines()[-3:] == [
        "**Does not beat its blind self** (the CI of the difference includes or is below 0): ocr", "",
        "No blind run (no input image): generation"]
    # scores_table appends the blind table when the scores hold a blind run
    assert md in scores_table({**scores, "tasks": {k: {**v, "metrics": {}} for k, v in scores["tasks"].items()}})
