"""VQAv2 accuracy fixtures; expectations hand-derived from the official definition (see docs/eval.md)."""
import pytest

from vlkit.eval.metrics import (EvalError, normalize_vqa_answer, vqa_accuracy, vqa_process_digit_article,
                                vqa_process_punctuation)

Y10 = ["yes"] * 10
MIX_2_3 = ["2"] * 3 + ["3"] * 7

# (prediction, answers, official, lenient)
CASES = [
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


@pytest.mark.parametrize("pred,answers,official,lenient", CASES)
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


@pytest.mark.parametrize("text,choice", [
    ("first", "first"), ("The first image.", "first"), ("the first one", "first"), ("image 1", "first"),
    ("2nd", "second"), ("Second", "second"), ("the second picture", "second"),
    ("first or second", "first or second"), ("neither", "neither"), ("", ""),
])
def test_ordinal_choice(text, choice):
    from vlkit.eval.metrics import ordinal_choice

    assert ordinal_choice(text) == choice
