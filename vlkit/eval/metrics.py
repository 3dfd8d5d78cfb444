"""Evaluation metrics, pure Python (numpy only for the bootstrap).

Each metric follows a reference definition; docs/eval.md lists where vlkit agrees with or deviates from the
official scripts (VQAv2 vqaEval.py, the RRC DocVQA ANLS script, pix2struct's ChartQA relaxed accuracy,
pycocoevalcap's CIDEr-D) and lmms-eval. The rules are re-implemented from their published behaviour.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from vlkit.errors import UserError
from vlkit.grounding import Box, iou, parse_first_box


class EvalError(UserError):
    """Evaluation input that cannot be scored (no ground truth, unknown task, bad data); the message says why."""


# ---------------------------------------------------------------------------------------------------------
# VQA accuracy (VQAv2)
# ---------------------------------------------------------------------------------------------------------

# Normalization tables of the official VQAv2 evaluation (data, written out as "typo=fixed" pairs). Keys with
# capitals ("Im", "Ive") can never match because the official code lower-cases first; kept for fidelity.
_CONTRACTION_PAIRS = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've couldnt've=couldn't've
didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't havent=haven't
hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm
Ive=I've isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't
notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't
shed've=she'd've she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've
shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've
somebodyll=somebody'll somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've
someonell=someone'll someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd thered've=there'd've
there'dve=there'd've therere=there're theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've
theyll=they'll theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've
werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll
whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've
yall=y'all yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've
youd=you'd youd've=you'd've you'dve=you'd've youll=you'll youre=you're youve=you've
"""
VQA_CONTRACTIONS: dict[str, str] = dict(pair.split("=", 1) for pair in _CONTRACTION_PAIRS.split())
VQA_NUMBER_WORDS: dict[str, str] = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                                    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
VQA_ARTICLES = frozenset({"a", "an", "the"})
# Characters the official script removes or turns into spaces. Note: no apostrophe, no colon; '.' is separate.
VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern intends "a period not between digits", but its look-behind is mistyped and never fires,
# so any period not followed by a digit goes ("5." -> "5", "3.5" stays). It is also called with re.UNICODE in
# the `count` position, so at most 32 periods are removed per answer; both quirks are reproduced.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_OFFICIAL_PERIOD_COUNT = 32


def vqa_process_punctuation(text: str) -> str:
    """Official punctuation step: a punctuation mark next to a space (or any text containing digit,digit) is
    deleted; otherwise it becomes a space. Conditions are tested on the input text, not the running result."""
    out = text
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in VQA_PUNCT:
        if delete_all or (p + " " in text) or (" " + p in text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def vqa_process_digit_article(text: str) -> str:
    """Official word step: lower-case, split on whitespace, number words -> digits, drop articles, fix
    contractions, join with single spaces."""
    words = []
    for w in text.lower().split():
        w = VQA_NUMBER_WORDS.get(w, w)
        if w not in VQA_ARTICLES:
            words.append(w)
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words)


def _vqa_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(text: str) -> str:
    """Full VQA answer normalization (whitespace, punctuation, digits, articles, contractions)."""
    return vqa_process_digit_article(vqa_process_punctuation(_vqa_whitespace(text)))


ORDINALS = {"first": ("first", "1st", "1"), "second": ("second", "2nd", "2")}


def ordinal_choice(text: str) -> str:
    """"first" or "second" for an answer naming one of two images ("The first image.", "image 2", "2nd"), else the
    normalized text (which matches neither)."""
    norm = normalize_vqa_answer(text)
    words = set(norm.split())
    named = [k for k, forms in ORDINALS.items() if words & set(forms)]
    return named[0] if len(named) == 1 else norm


def normalized_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the prediction equals one of the answers after full VQA normalization (normalize_vqa_answer), else
    0.0: the `match` of referring-expression generation, where the answers are different valid phrasings."""
    if not answers:
        raise EvalError("normalized_match needs at least one ground-truth answer, got none")
    p = normalize_vqa_answer(prediction)
    return float(any(p == normalize_vqa_answer(a) for a in answers))


def vqa_accuracy(prediction: str, answers: Sequence[str], mode: str = "official") -> float:
    """VQAv2 accuracy: for each GT answer, min(1, #matches among the *other* answers / 3); the mean of these.

    mode="official": whitespace (newline, tab, strip) is always normalized, but punctuation/digit/article
    processing is applied to the prediction and the answers only when the answers are not all identical (the
    official script's behaviour: "Yes" against ten "yes" scores 0).
    mode="lenient": the full normalization is always applied to both sides (so matching is case-insensitive).
    Leave-one-out is by position. With a single answer the official formula is always 0, so vlkit scores a
    single-answer question as exact match after the same processing (a documented deviation).
    """
    if mode not in ("official", "lenient"):
        raise EvalError(f"vqa_accuracy mode must be 'official' or 'lenient', got {mode!r}")
    if not answers:
        raise EvalError("vqa_accuracy needs at least one ground-truth answer, got none")
    pred = _vqa_whitespace(prediction)
    gts = [_vqa_whitespace(a) for a in answers]
    if mode == "lenient" or len(set(gts)) > 1:
        pred = vqa_process_digit_article(vqa_process_punctuation(pred))
        gts = [vqa_process_digit_article(vqa_process_punctuation(a)) for a in gts]
    if len(gts) == 1:
        return 1.0 if gts[0] == pred else 0.0
    matches = [g == pred for g in gts]
    total = sum(matches)
    # the others of answer i match (total - matches[i]) times
    accs = [min(1.0, (total - int(m)) / 3.0) for m in matches]
    return sum(accs) / len(accs)


# ---------------------------------------------------------------------------------------------------------
# Edit distance, ANLS, OCR
# ---------------------------------------------------------------------------------------------------------

def levenshtein(a: str, b: str) -> int:
    """Character edit distance (insert, delete, substitute: cost 1 each)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _anls_norm(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5, official: bool = True) -> float:
    """ANLS for one question, as the RRC DocVQA/InfographicVQA script computes it.

    Both strings are lower-cased, stripped and whitespace-collapsed; NL = levenshtein / length; the question
    scores s = 1 - min over answers of NL, and s is set to 0 when s < threshold. So NL = 0.5 exactly is
    *kept* (s = 0.5): the cutoff is "NL <= 0.5 kept, NL > 0.5 -> 0" (the paper writes NL < tau).
    official=True: length = max(len(raw answer), len(raw prediction)) on the *unnormalized* strings (the
    script's quirk: padding a prediction with spaces lowers its NL). official=False: lengths of the normalized
    strings (the paper's definition). An empty pair has NL 0.
    """
    if not answers:
        raise EvalError("anls needs at least one ground-truth answer, got none")
    det = _anls_norm(prediction)
    nls = []
    for ans in answers:
        gt = _anls_norm(ans)
        dist = levenshtein(gt, det)
        # .upper() mirrors the script, where length is taken after upper-casing (e.g. 'ß' -> 'SS')
        length = max(len(ans.upper()), len(prediction.upper())) if official else max(len(gt), len(det))
        nls.append(0.0 if length == 0 else dist / length)
    score = 1.0 - min(nls)
    return 0.0 if score < threshold else score


def exact_match(prediction: str, answers: Sequence[str], case_sensitive: bool = True) -> float:
    """1.0 if the stripped prediction equals a stripped answer (optionally case-folded), else 0.0."""
    if not answers:
        raise EvalError("exact_match needs at least one ground-truth answer, got none")
    p = prediction.strip()
    if case_sensitive:
        return float(any(p == a.strip() for a in answers))
    return float(any(p.casefold() == a.strip().casefold() for a in answers))


def cer(prediction: str, reference: str) -> float:
    """Character error rate: levenshtein(pred, ref) / len(ref) after strip; can exceed 1 (insertions).
    An empty reference gives 0.0 for an empty prediction and 1.0 otherwise."""
    p, r = prediction.strip(), reference.strip()
    if not r:
        return 0.0 if not p else 1.0
    return levenshtein(p, r) / len(r)


# ---------------------------------------------------------------------------------------------------------
# Relaxed accuracy (ChartQA)
# ---------------------------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(
    r"^(?P<sign>[-+]?)\s*(?P<cur>[$€£¥]?)\s*(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"\s*(?P<unit>%|[A-Za-z]+(?:\s+[A-Za-z]+)?)?$")


def parse_number(text: str) -> Optional[tuple[float, str]]:
    """'1,000' -> (1000.0, ''), '12%' -> (12.0, '%'), '$3.5' -> (3.5, ''), '-4 kg' -> (-4.0, 'kg'); else None.
    Thousands separators must be well-formed ('1,00' is not a number); 'nan'/'inf' are not numbers."""
    m = _NUMBER_RE.match(text.strip())
    if not m:
        return None
    value = float(m.group("num").replace(",", ""))
    if m.group("sign") == "-":
        value = -value
    return value, (m.group("unit") or "").lower()


def _official_to_float(text: str) -> Optional[float]:
    # pix2struct's rule: a trailing '%' divides by 100; anything float() rejects is text
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str, target: str, tolerance: float = 0.05, official: bool = False) -> bool:
    """ChartQA relaxed correctness: numbers within `tolerance` relative error (inclusive), text exact
    (case-insensitive, stripped).

    vlkit (official=False): '1,000' == '1000'; '12%' == '12' (the % is a unit, not /100); a currency sign and a
    trailing unit word are allowed, and two different units are not compared numerically; a target of 0 needs a
    prediction that is numerically 0 ('0.0' counts).
    official=True: pix2struct's rule as used by ChartQA papers and lmms-eval: float() parsing only ('1,000' is
    text), '12%' -> 0.12, a target of 0 falls back to case-insensitive string equality.
    """
    if official:
        p, t = _official_to_float(prediction), _official_to_float(target)
        if p is not None and t:
            return abs(p - t) / abs(t) <= tolerance
        return prediction.lower() == target.lower()
    p_num, t_num = parse_number(prediction), parse_number(target)
    if p_num is not None and t_num is not None:
        (p, pu), (t, tu) = p_num, t_num
        if not pu or not tu or pu == tu:
            if t == 0:
                return p == 0
            return abs(p - t) / abs(t) <= tolerance
    return prediction.strip().lower() == target.strip().lower()


def relaxed_accuracy(prediction: str, answers: Sequence[str], tolerance: float = 0.05, official: bool = False) -> float:
    """1.0 if the prediction is relaxed-correct against any answer."""
    if not answers:
        raise EvalError("relaxed_accuracy needs at least one ground-truth answer, got none")
    return float(any(relaxed_correctness(prediction, a, tolerance, official) for a in answers))


# ---------------------------------------------------------------------------------------------------------
# Captioning: PTB-like tokenizer and CIDEr-D
# ---------------------------------------------------------------------------------------------------------

# Tokens the COCO caption PTB tokenizer drops after tokenizing.
_PTB_DROP = frozenset({"''", "'", "``", "`", "-lrb-", "-rrb-", "-lcb-", "-rcb-", ".", "?", "!", ",", ":", "-", "--",
                       "...", ";"})
# PTB escapes brackets; the COCO drop list then removes round and curly ones but keeps -lsb-/-rsb-.
_PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}
_PTB_SPLIT = re.compile(
    r"\.\.\.|--|``|''|[a-z0-9]+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|[a-z0-9]+(?:-[a-z0-9]+)*(?:[.,][0-9]+)*|\S")


def ptb_tokenize(text: str) -> str:
    """A simple pure-Python stand-in for the COCO (Stanford PTB) caption tokenizer: lower-case, split words,
    clitics ("n't", "'s") and punctuation, then drop punctuation tokens. It is not the Java tokenizer: results
    on ordinary captions agree, exotic text (URLs, brackets, hyphenation) may tokenize differently."""
    toks = [_PTB_BRACKETS.get(t, t) for t in _PTB_SPLIT.findall(text.lower().replace("\n", " "))]
    return " ".join(t for t in toks if t not in _PTB_DROP)


def _ngram_counts(sentence: str, n: int) -> dict[tuple[str, ...], int]:
    words = sentence.split()
    counts: dict[tuple[str, ...], int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D as pycocoevalcap's `Cider` computes it, on already tokenized (space-separated) text.

    Per n (1..n): TF-IDF vectors with idf = log(#images) - log(max(1, df)), df counted over each image's
    reference *set* in this evaluation; similarity = sum over candidate n-grams of min(w_c, w_r) * w_r (clipping)
    divided by |c|*|r| when both norms are non-zero, times exp(-delta^2 / (2 sigma^2)). pycocoevalcap's length
    is the number of *bigrams* (its index-1 check), so delta is the bigram-count difference; reproduced.
    Image score = 10 * mean over n of (sum over references / #references). Returns (mean, per-image scores).
    """
    if len(candidates) != len(references):
        raise EvalError(f"cider_d: {len(candidates)} candidates but {len(references)} reference lists")
    for i, refs in enumerate(references):
        if not refs:
            raise EvalError(f"cider_d: item {i} has no reference captions")
    if not candidates:
        return 0.0, []
    cand_counts = [_ngram_counts(c, n) for c in candidates]
    ref_counts = [[_ngram_counts(r, n) for r in refs] for refs in references]
    df: dict[tuple[str, ...], int] = defaultdict(int)
    for refs in ref_counts:
        for g in {g for r in refs for g in r}:
            df[g] += 1
    log_images = math.log(float(len(references)))

    def vectorize(counts: Mapping[tuple[str, ...], int]):
        vec: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        sq = [0.0] * n
        length = 0
        for g, tf in counts.items():
            k = len(g) - 1
            w = float(tf) * (log_images - math.log(max(1.0, df.get(g, 0))))
            vec[k][g] = w
            sq[k] += w * w
            if k == 1:
                length += tf
        return vec, [math.sqrt(s) for s in sq], length

    scores = []
    for cc, refs in zip(cand_counts, ref_counts):
        vc, nc, lc = vectorize(cc)
        per_n = [0.0] * n
        for rc in refs:
            vr, nr, lr = vectorize(rc)
            penalty = math.exp(-((lc - lr) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vc[k].items())
                if nc[k] != 0 and nr[k] != 0:
                    val /= nc[k] * nr[k]
                per_n[k] += val * penalty
        scores.append(10.0 * (sum(per_n) / n) / len(refs))
    return sum(scores) / len(scores), scores


# ---------------------------------------------------------------------------------------------------------
# Grounding
# ---------------------------------------------------------------------------------------------------------

def grounding_score(prediction: str, gt_boxes: Sequence[Sequence[float]]) -> dict:
    """IoU of the *first valid* predicted box (chosen without looking at the ground truth) against the GT.

    Coordinates: vlkit's [0, 1000) bins (x1, y1, x2, y2). With several GT boxes the best IoU counts. No parsable
    box -> parse_failed, IoU 0. An inverted or degenerate box has zero area and scores IoU 0 (never reordered).
    Returns {"iou", "acc@0.5" (IoU >= 0.5), "parse_failed", "box"}.
    """
    if not gt_boxes:
        raise EvalError("grounding_score needs at least one ground-truth box, got none")
    box: Optional[Box] = parse_first_box(prediction)
    if box is None:
        return {"iou": 0.0, "acc@0.5": 0.0, "parse_failed": True, "box": None}
    best = max(iou(box, g) for g in gt_boxes)
    return {"iou": best, "acc@0.5": float(best >= 0.5), "parse_failed": False, "box": list(box)}


# ---------------------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------------------

def segmentation_counts(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersection and union pixel counts for one image (labels index into the class list).
    Predicted labels outside [0, num_classes) belong to no class: they add to the GT class's union only."""
    pred = np.asarray(pred).astype(np.int64)
    gt = np.asarray(gt).astype(np.int64)
    if pred.shape != gt.shape:
        raise EvalError(f"segmentation: predicted mask {pred.shape} and ground-truth mask {gt.shape} differ in shape")
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        raise EvalError(f"segmentation: ground-truth labels must be in [0, {num_classes}), got "
                        f"{int(gt.min())}..{int(gt.max())}")
    invalid = num_classes  # an extra bin for out-of-range predictions
    p = np.where((pred >= 0) & (pred < num_classes), pred, invalid)
    c = num_classes + 1
    inter = np.bincount(gt[p == gt], minlength=c)[:num_classes]
    area_p = np.bincount(p.ravel(), minlength=c)[:num_classes]
    area_g = np.bincount(gt.ravel(), minlength=c)[:num_classes]
    return inter.astype(np.int64), (area_p + area_g - inter).astype(np.int64)


def mean_iou(inter: Sequence[float], union: Sequence[float]) -> Optional[float]:
    """mIoU from dataset-summed counts: IoU_c = I_c / U_c over classes with U_c > 0 (present in the GT or the
    prediction somewhere in the set), averaged. None when no class is present."""
    ious = [i / u for i, u in zip(inter, union) if u > 0]
    return sum(ious) / len(ious) if ious else None


# ---------------------------------------------------------------------------------------------------------
# Confidence intervals
# ---------------------------------------------------------------------------------------------------------

def bootstrap_ci(n: int, statistic: Callable[[np.ndarray], np.ndarray], resamples: int = 1000, seed: int = 0,
                 chunk: int = 100) -> Optional[tuple[float, float]]:
    """Percentile 95% CI. `statistic(W)` gets a (B, n) matrix of resample counts (row b: how often each item
    is drawn in resample b) and returns B values; NaN values (undefined statistic) are ignored."""
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    vals = []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        w = np.zeros((b, n), dtype=np.float64)
        np.add.at(w, (np.repeat(np.arange(b), n), idx.ravel()), 1.0)
        vals.append(np.asarray(statistic(w), dtype=np.float64))
    v = np.concatenate(vals)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return None
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def mean_statistic(values: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    x = np.asarray(values, dtype=np.float64)
    return lambda w: (w @ x) / w.sum(axis=1)


def miou_statistic(inter: np.ndarray, union: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Resampled mIoU: inter/union are (n_images, n_classes) count arrays."""
    def stat(w: np.ndarray) -> np.ndarray:
        i, u = w @ inter, w @ union
        present = u > 0
        ious = np.where(present, i / np.where(present, u, 1), 0.0)
        k = present.sum(axis=1)
        return np.where(k > 0, ious.sum(axis=1) / np.maximum(k, 1), np.nan)
    return stat


def summarize(values: Iterable[float], resamples: int = 1000, seed: int = 0) -> dict:
    """{"value": mean, "n": count, "ci95": [lo, hi]} for per-sample scores (value None when empty)."""
    x = [float(v) for v in values]
    if not x:
        return {"value": None, "n": 0, "ci95": None}
    ci = bootstrap_ci(len(x), mean_statistic(x), resamples, seed)
    return {"value": sum(x) / len(x), "n": len(x), "ci95": list(ci) if ci else None}
