"""vlkit.eval.metrics: every metric against hand-computed expectations (see docs/eval.md).

Sections: VQAv2 accuracy; ANLS / relaxed accuracy / OCR exact match / CER / edit distance; CIDEr-D (with
parity against pycocoevalcap's Cider within 1e-6); grounding Acc@0.5 / IoU, segmentation mIoU counts, bootstrap CIs.
"""
import math
import random

import numpy as np
import pytest

from vlkit.eval.metrics import (EvalError, anls, bootstrap_ci, cer, cider_d, exact_match, grounding_score, levenshtein,
                                mean_iou, mean_statistic, normalize_vqa_answer, parse_number, ptb_tokenize,
                                relaxed_accuracy, relaxed_correctness, segmentation_counts, summarize, vqa_accuracy,
                                vqa_process_digit_article, vqa_process_punctuation)


# --- VQAv2 accuracy fixtures; expectations hand-derived from the official definition (see docs/eval.md).

Y10 = ["yes"] * 10
MIX_2_3 = ["2"] * 3 + ["3"] * 7

# (prediction, answers, official, lenient)
VQA_CASES = [
    ("Yes", Y10, 0.0, 1.0),                       # official quirk: identical GT answers -> no processing
    ("yes", Y10, 1.0, 1.0),
    (" yes\n", Y10, 1.0, 1.0),                    # whitespace/newline normalization always applies
    ("yes\tplease", ["yes please"] * 10, 1.0, 1.0),
    ("yes.", Y10, 0.0, 1.0),
    ("yes!", Y10, 0.0, 1.0),
    ("two", ["2"] * 10, 0.0, 1.0),
    ("2", MIX_2_3, 0.9, 0.9),                     # (3 * 2/3 + 7 * 1) / 10
    ("two", MIX_2_3, 0.9, 0.9),                   # number word -> digit once answers differ
    ("3", MIX_2_3, 1.0, 1.0),
    ("red", ["red"] + ["blue"] * 9, 0.3, 0.3),    # 9 * 1/3 / 10
    ("red", ["red"] * 2 + ["blue"] * 8, 0.6, 0.6),  # (2 * 1/3 + 8 * 2/3) / 10
    ("red", ["red"] * 4 + ["blue"] * 6, 1.0, 1.0),
    ("green", ["red"] * 4 + ["blue"] * 6, 0.0, 0.0),
    ("a dog", ["the dog"] * 5 + ["dog"] * 5, 1.0, 1.0),   # articles dropped
    ("dont", ["dont"] * 5 + ["don't"] * 5, 1.0, 1.0),     # contraction fixed
    ("RED", ["Red"] * 5 + ["red"] * 5, 1.0, 1.0),         # lower-cased once processed
    ("zero", ["0"] * 5 + ["none"] * 5, 1.0, 1.0),
    ("1,2-3", ["123"] * 5 + ["x"] * 5, 1.0, 1.0),         # digit,digit present: punctuation deleted
    ("2-3", ["2 3"] * 5 + ["x"] * 5, 1.0, 1.0),           # otherwise punctuation -> space
    ("2-3", ["23"] * 5 + ["x"] * 5, 0.0, 0.0),
    ("3.5", ["3.5"] * 5 + ["4"] * 5, 1.0, 1.0),           # period before a digit stays
    ("3.5.", ["3.5"] * 5 + ["4"] * 5, 1.0, 1.0),
    ("cat", ["cat"], 1.0, 1.0),                           # single answer: exact match (documented)
    ("dog", ["cat"], 0.0, 0.0),
]


@pytest.mark.parametrize("pred,answers,official,lenient", VQA_CASES)
def test_vqa_accuracy_fixtures(pred, answers, official, lenient):
    assert vqa_accuracy(pred, answers, "official") == pytest.approx(official)
    assert vqa_accuracy(pred, answers, "lenient") == pytest.approx(lenient)


@pytest.mark.parametrize("text,expected", [
    ("hello, world", "hello world"),   # ", " next to a space: deleted
    ("a,b", "a b"),                    # not next to a space: becomes a space
    ("1,000", "1000"),
    ("end.", "end"),
    ("3.14", "3.14"),
    ("Mr. Smith", "Mr Smith"),
    ("what?", "what "),
    ("." * 33, "."),                   # the official call removes at most 32 periods
])
def test_punctuation_step(text, expected):
    assert vqa_process_punctuation(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("The Two Dogs", "2 dogs"), ("an apple", "apple"), ("isnt it", "isn't it"), ("none", "0"), ("Im", "im"),
])
def test_digit_article_step(text, expected):
    assert vqa_process_digit_article(text) == expected


def test_normalize_full():
    assert normalize_vqa_answer("  The TWO dogs!\n") == "2 dogs"


def test_vqa_errors():
    with pytest.raises(EvalError, match="at least one"):
        vqa_accuracy("x", [])
    with pytest.raises(EvalError, match="mode"):
        vqa_accuracy("x", ["x"], mode="strict")


# --- ANLS, relaxed accuracy (ChartQA), OCR exact match / CER, edit distance. Expectations are hand-computed.

@pytest.mark.parametrize("a,b,d", [("kitten", "sitting", 3), ("flaw", "lawn", 2), ("", "abc", 3), ("abc", "", 3),
                                   ("a", "a", 0), ("intention", "execution", 5), ("ab", "ba", 2)])
def test_levenshtein(a, b, d):
    assert levenshtein(a, b) == d


# (prediction, answers, official ANLS, paper-length ANLS)
ANLS_CASES = [
    ("hello", ["hello"], 1.0, 1.0),
    ("Hello", ["hello"], 1.0, 1.0),                   # lower-cased
    ("  hello  ", ["hello"], 1.0, 1.0),               # stripped
    ("new   york", ["new york"], 1.0, 1.0),           # inner whitespace collapsed
    ("helo", ["hello"], 0.8, 0.8),                    # 1 - 1/5
    ("abcx", ["abcd"], 0.75, 0.75),
    ("  abcx  ", ["abcd"], 0.875, 0.75),              # official length uses the padded prediction: 1/8
    ("  abxyz  ", ["abcde"], 1 - 3 / 9, 0.0),         # padding lifts NL 3/5 (cut) to 3/9 (kept)
    ("abxy", ["abcd"], 0.5, 0.5),                     # NL = 0.5 exactly: kept (s = 0.5 is not < 0.5)
    ("abc", ["abcdef"], 0.5, 0.5),                    # NL = 3/6
    ("ab", ["abcde"], 0.0, 0.0),                      # NL = 0.6 -> 0
    ("xyz", ["abc"], 0.0, 0.0),
    ("abcdefg", ["abcdefgh"], 0.875, 0.875),
    ("dr lobo", ["Dear Dr. Lobo", "Dr. Lobo"], 0.875, 0.875),   # best answer: 1 edit / 8
    ("abc", ["abcd", "xyz"], 0.75, 0.75),
    ("", ["abc"], 0.0, 0.0),
    ("", [""], 1.0, 1.0),                             # empty pair: NL 0
    ("   ", [""], 1.0, 1.0),
    ("1,000", ["1000"], 0.8, 0.8),
    ("ABCD", ["abcd"], 1.0, 1.0),
    ("ß", ["s"], 0.5, 0.0),                           # official length of 'ß'.upper() = 'SS' is 2
    ("straße", ["STRASSE"], 1 - 2 / 7, 1 - 2 / 7),
]


@pytest.mark.parametrize("pred,answers,official,paper", ANLS_CASES)
def test_anls_fixtures(pred, answers, official, paper):
    assert anls(pred, answers) == pytest.approx(official)
    assert anls(pred, answers, official=False) == pytest.approx(paper)


def test_anls_threshold_and_errors():
    assert anls("abxy", ["abcd"], threshold=0.6) == 0.0
    assert anls("abxy", ["abcd"], threshold=0.5) == 0.5
    with pytest.raises(EvalError):
        anls("x", [])


# (prediction, target, vlkit, official pix2struct rule)
RELAXED_CASES = [
    ("12", "12", True, True),
    ("12.5", "12", True, True),          # 0.5/12 = 4.2%
    ("12.7", "12", False, False),        # 5.8%
    ("105", "100", True, True),          # exactly 5%: inclusive
    ("106", "100", False, False),
    ("95", "100", True, True),
    ("0", "0", True, True),
    ("0.0", "0", True, False),           # target 0: numeric exact (vlkit) vs string equality (official)
    ("0.01", "0", False, False),
    ("1,000", "1000", True, False),      # thousands separator
    ("1000", "1,000", True, False),
    ("1,040", "1000", True, False),
    ("12%", "12", True, False),          # official: 12% -> 0.12
    ("12%", "12%", True, True),
    ("Yes", "yes", True, True),
    (" Paris ", "paris", True, False),
    ("12 kg", "12", True, False),        # trailing unit
    ("12 kg", "12 lb", False, False),    # different units are not compared as numbers
    ("$3.5", "3.5", True, False),
    ("-5", "5", False, False),
    ("-5", "-5.2", True, True),          # 0.2/5.2 = 3.8%
    ("1,00", "100", False, False),       # malformed separator: text
    ("nan", "nan", True, False),         # vlkit: text match; official: nan comparison is False
    ("abc", "12", False, False),
    ("12", "twelve", False, False),
]


@pytest.mark.parametrize("pred,target,vl,off", RELAXED_CASES)
def test_relaxed_fixtures(pred, target, vl, off):
    assert relaxed_correctness(pred, target) is vl
    assert relaxed_correctness(pred, target, official=True) is off


def test_relaxed_accuracy_any_answer():
    assert relaxed_accuracy("3", ["2", "3"]) == 1.0
    assert relaxed_accuracy("4", ["2", "3"]) == 0.0
    with pytest.raises(EvalError):
        relaxed_accuracy("4", [])


@pytest.mark.parametrize("text,expected", [("1,000", (1000.0, "")), ("12%", (12.0, "%")), ("-4 kg", (-4.0, "kg")),
                                           (".5", (0.5, "")), ("inf", None), ("1,00", None), ("abc", None)])
def test_parse_number(text, expected):
    assert parse_number(text) == expected


# (prediction, answers, exact case-sensitive, exact case-insensitive)
EM_CASES = [
    ("Hello", ["Hello"], 1.0, 1.0), ("hello", ["Hello"], 0.0, 1.0), (" Hello\n", ["Hello"], 1.0, 1.0),
    ("Hell", ["Hello"], 0.0, 0.0), ("HELLO WORLD", ["hello world"], 0.0, 1.0), ("straSSe", ["strasse"], 0.0, 1.0),
    ("ß", ["SS"], 0.0, 1.0), ("a b", ["a  b"], 0.0, 0.0), ("B", ["a", "B"], 1.0, 1.0), ("", [""], 1.0, 1.0),
    ("x", ["y"], 0.0, 0.0),
]


@pytest.mark.parametrize("pred,answers,cs,ci", EM_CASES)
def test_exact_match(pred, answers, cs, ci):
    assert exact_match(pred, answers) == cs
    assert exact_match(pred, answers, case_sensitive=False) == ci


CER_CASES = [
    ("hello", "hello", 0.0), ("helo", "hello", 0.2), ("", "hello", 1.0), ("hello world!!", "hello", 8 / 5),
    ("", "", 0.0), ("x", "", 1.0), ("kitten", "sitting", 3 / 7), (" abc ", "abc", 0.0), ("abd", "abc", 1 / 3),
    ("ABC", "abc", 1.0),
]


@pytest.mark.parametrize("pred,ref,expected", CER_CASES)
def test_cer(pred, ref, expected):
    assert math.isclose(cer(pred, ref), expected)


# --- CIDEr-D: hand-computed cases and parity with pycocoevalcap's Cider within 1e-6.

def test_cider_hand_computed_exact_match():
    # two images, df of every n-gram = 1, idf = log 2 for all; candidate 0 equals its reference:
    # cosine 1 for 1- and 2-grams, 0 for 3-/4-grams (empty) -> 10 * (1 + 1 + 0 + 0) / 4 = 5
    mean, per = cider_d(["a b", "x y"], [["a b"], ["c d"]])
    assert per == pytest.approx([5.0, 0.0])
    assert mean == pytest.approx(2.5)


def test_cider_hand_computed_partial():
    # candidate "a b c" vs reference "a b"; all weights are log 2 ("b c" has df 0 -> log max(1, 0) = 0)
    # 1-grams: 2 / (sqrt3 * sqrt2); 2-grams: 1 / sqrt2; 3-gram: reference norm 0 -> 0
    # length = bigram count: 2 vs 1 -> penalty exp(-1 / 72)
    _, per = cider_d(["a b c", "x"], [["a b"], ["c d"]])
    expected = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    assert per[0] == pytest.approx(expected)


def test_cider_single_image_is_zero():
    # one image: idf = log(1) - log(1) = 0 for every reference n-gram
    assert cider_d(["a cat"], [["a cat"]])[0] == 0.0


def test_cider_errors():
    with pytest.raises(EvalError):
        cider_d(["a"], [])
    with pytest.raises(EvalError):
        cider_d(["a"], [[]])
    assert cider_d([], []) == (0.0, [])


@pytest.mark.parametrize("text,expected", [
    ("A man riding a horse.", "a man riding a horse"),
    ("Two dogs, one cat!", "two dogs one cat"),
    ("It's the dog's ball", "it 's the dog 's ball"),
    ("He doesn't know", "he does n't know"),
    ("a black-and-white photo", "a black-and-white photo"),
    ("3.5 kg; (approx)", "3.5 kg approx"),          # round brackets -> -LRB-/-RRB- -> dropped
    ("a [b]", "a -lsb- b -rsb-"),                    # square brackets are escaped but not dropped
    ("Hello...   world\n", "hello world"),
])
def test_ptb_tokenize(text, expected):
    assert ptb_tokenize(text) == expected


def _fixture_sets():
    words = "a an the man woman dog cat red blue green ball field park sits runs on in with near big small".split()
    rng = random.Random(1234)

    def sent(lo=1, hi=12):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    sets = []
    for n_images, n_refs in [(2, 1), (3, 5), (10, 5), (25, 3), (40, 7)]:
        cands, refs = [], []
        for i in range(n_images):
            r = [sent() for _ in range(rng.randint(1, n_refs))]
            refs.append(r)
            # mix exact copies, near copies, unrelated, single-word and empty candidates
            kind = i % 5
            cands.append(r[0] if kind == 0 else (r[0] + " " + sent(1, 2)) if kind == 1 else
                         sent() if kind == 2 else rng.choice(words) if kind == 3 else "")
        sets.append((cands, refs))
    return sets


@pytest.mark.parametrize("cands,refs", _fixture_sets())
def test_cider_matches_pycocoevalcap(cands, refs):
    cider_mod = pytest.importorskip("pycocoevalcap.cider.cider")
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [c] for i, c in enumerate(cands)}
    ref_mean, ref_scores = cider_mod.Cider().compute_score(gts, res)
    mean, per = cider_d(cands, refs)
    assert abs(mean - float(ref_mean)) < 1e-6
    assert len(per) == len(ref_scores)
    for a, b in zip(per, ref_scores):
        assert abs(a - float(b)) < 1e-6
    assert max(per) > 0  # the fixture is not degenerate


# --- Grounding Acc@0.5 / IoU (vlkit [0,1000) boxes), segmentation mIoU counts, bootstrap CIs. Hand-computed.

GT = [[0, 0, 100, 100]]

# (prediction text, gt boxes, iou, parse_failed)
GROUNDING_CASES = [
    ("<box>(0,0),(100,100)</box>", GT, 1.0, False),
    ("<ref>x</ref><box>(0,0),(50,100)</box>", GT, 0.5, False),          # exactly 0.5 counts as a hit
    ("<box>(0,0),(49,100)</box>", GT, 0.49, False),
    ("<box>(50,50),(150,150)</box>", GT, 2500 / 17500, False),
    ("<box>(100,100),(0,0)</box>", GT, 0.0, False),                       # inverted: zero area, not reordered
    ("<box>(10,10),(10,50)</box>", GT, 0.0, False),                       # degenerate
    ("the dog is on the left", GT, 0.0, True),                            # no box
    ("", GT, 0.0, True),
    ("<box>(0,0),(1200,100)</box>", GT, 0.0, True),                       # out of [0, 1000]: invalid
    ("<box>(-5,0),(100,100)</box>", GT, 0.0, True),
    ("<ref>dog</ref>", GT, 0.0, True),
    ("<box>(500,500),(600,600)</box><box>(0,0),(100,100)</box>", GT, 0.0, False),   # first box only
    ("<box>(0,0),(2000,5)</box><box>(0,0),(100,100)</box>", GT, 1.0, False),         # first *valid* box
    ("<box> ( 0 , 0 ) , ( 100 , 100 ) </box>", GT, 1.0, False),
    ("<box>(0,0),(100,100)", GT, 1.0, False),                             # missing </box>
    ("Answer: <ref>it</ref><box>(0,0),(100,100)</box> done", GT, 1.0, False),
    ("<box>(200,200),(300,300)</box>", [[0, 0, 100, 100], [200, 200, 300, 300]], 1.0, False),  # best GT box
    ("<box>(25,25),(75,75)</box>", GT, 0.25, False),
    ("<box>(0,0),(0,0)</box>", [[0, 0, 0, 0]], 0.0, False),               # degenerate vs degenerate: 0/0 -> 0
    ("<box>(0,0),(100,100)</box>", [[0, 0, 200, 100]], 0.5, False),
    ("<box>(0.4,0),(100,100)</box>", GT, 1.0, False),                     # rounds to the nearest bin
]


@pytest.mark.parametrize("text,gt,expected_iou,failed", GROUNDING_CASES)
def test_grounding_fixtures(text, gt, expected_iou, failed):
    r = grounding_score(text, gt)
    assert r["iou"] == pytest.approx(expected_iou)
    assert r["parse_failed"] is failed
    assert r["acc@0.5"] == (1.0 if expected_iou >= 0.5 else 0.0)
    assert (r["box"] is None) is failed


def test_grounding_needs_gt():
    with pytest.raises(EvalError):
        grounding_score("<box>(0,0),(1,1)</box>", [])


def _counts(pred, gt, c):
    i, u = segmentation_counts(np.array(pred), np.array(gt), c)
    return i.tolist(), u.tolist()


# (pred, gt, n_classes, intersections, unions)
SEG_CASES = [
    ([[0, 1], [1, 1]], [[0, 1], [1, 1]], 2, [1, 3], [1, 3]),
    ([[0, 0], [0, 0]], [[0, 1], [1, 1]], 2, [1, 0], [4, 3]),
    ([[1, 1], [1, 1]], [[0, 0], [0, 0]], 2, [0, 0], [4, 4]),
    ([[0, 2], [1, 1]], [[0, 1], [1, 2]], 3, [1, 1, 0], [1, 3, 2]),
    ([[5, 1], [1, 1]], [[0, 1], [1, 1]], 2, [0, 3], [1, 3]),       # out-of-range label: no class
    ([[-1, 1], [1, 1]], [[0, 1], [1, 1]], 2, [0, 3], [1, 3]),
    ([[0, 0]], [[0, 0]], 3, [2, 0, 0], [2, 0, 0]),                  # absent classes: union 0
]


@pytest.mark.parametrize("pred,gt,c,inter,union", SEG_CASES)
def test_segmentation_counts(pred, gt, c, inter, union):
    assert _counts(pred, gt, c) == (inter, union)


@pytest.mark.parametrize("inter,union,expected", [
    ([1, 3], [1, 3], 1.0), ([1, 0], [4, 3], 0.125), ([0, 0], [4, 4], 0.0), ([1, 1, 0], [1, 3, 2], (1 + 1 / 3) / 3),
    ([2, 0, 0], [2, 0, 0], 1.0),                                     # only classes present are averaged
    ([0, 0], [0, 0], None), ([3, 5], [4, 10], (0.75 + 0.5) / 2), ([0, 3], [1, 3], 0.5),
    ([10, 10, 10], [20, 40, 10], (0.5 + 0.25 + 1) / 3), ([7], [7], 1.0), ([0], [9], 0.0), ([1, 1], [2, 0], 0.5),
    ([0, 0, 1], [0, 0, 4], 0.25), ([2, 2], [4, 8], 0.375),
])
def test_mean_iou(inter, union, expected):
    v = mean_iou(inter, union)
    assert (v is None) if expected is None else v == pytest.approx(expected)


def test_segmentation_errors():
    with pytest.raises(EvalError, match="shape"):
        segmentation_counts(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(EvalError, match="labels"):
        segmentation_counts(np.zeros((2, 2)), np.full((2, 2), 4), 2)


def test_bootstrap_ci_properties():
    vals = [1.0] * 30 + [0.0] * 70
    s = summarize(vals, resamples=500, seed=3)
    assert s["value"] == 0.3 and s["n"] == 100
    lo, hi = s["ci95"]
    assert lo < 0.3 < hi and hi - lo < 0.3
    assert summarize(vals, resamples=500, seed=3) == s                 # seeded: reproducible
    assert summarize([0.5] * 10)["ci95"] == [0.5, 0.5]                  # constant values: a point
    assert summarize([]) == {"value": None, "n": 0, "ci95": None}
    assert bootstrap_ci(0, mean_statistic([])) is None
    # wider with fewer samples
    small = summarize([1.0] * 3 + [0.0] * 7, resamples=500, seed=3)["ci95"]
    assert small[1] - small[0] > hi - lo


@pytest.mark.parametrize("text,choice", [
    ("first", "first"), ("The first image.", "first"), ("the first one", "first"), ("image 1", "first"),
    ("2nd", "second"), ("Second", "second"), ("the second picture", "second"),
    ("first or second", "first or second"), ("neither", "neither"), ("", ""),
])
def test_ordinal_choice(text, choice):
    from vlkit.eval.metrics import ordinal_choice

    assert ordinal_choice(text) == choice
