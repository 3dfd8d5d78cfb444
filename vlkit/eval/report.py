"""Markdown tables for eval scores (used by the runner's scores.md and the quickstart report)."""
from __future__ import annotations

from typing import Any, Optional


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ci(ci: Optional[list]) -> str:
    return "-" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def scores_table(scores: dict[str, Any], breakdowns: bool = True) -> str:
    """Markdown: one row per (task, metric) with value, 95% bootstrap CI, n and parse-failure rate; then the
    per-group breakdowns (question type, held-out vs seen, category) of each task's headline metric."""
    tasks = scores.get("tasks", {})
    rows = []
    for name, t in tasks.items():
        pf = t.get("parse_failures") or {}
        rate = pf.get("rate")
        for metric, s in (t.get("metrics") or {}).items():
            rows.append([name, metric + (" *" if metric == t.get("primary") else ""), _fmt(s.get("value")),
                         _ci(s.get("ci95")), str(s.get("n", 0)), "-" if rate is None else f"{rate:.1%}"])
        if not t.get("metrics"):
            rows.append([name, "-", "-", "-", "0", "-"])
    parts = ["## Eval scores", "", _table(["task", "metric", "value", "95% CI", "n", "parse fail"], rows), "",
             "`*` headline metric. CI: percentile bootstrap over samples."]
    formats = {name: t["format_failures"] for name, t in tasks.items() if t.get("format_failures")}
    if formats:
        fmt = next(iter(formats.values()))["answer_format"]
        parts += ["", f"Answer format `{fmt}`: a completion that does not follow it scores as a wrong answer (and "
                  "counts as a parse failure). Not following it: "
                  + "; ".join(f"{k} {f['count']} ({f['rate']:.1%})" for k, f in formats.items()) + "."]
    skipped = (scores.get("skipped") or {}).get("tasks") or {}
    if skipped:
        parts += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())]
    if "blind" in scores:
        parts += ["", blind_table(scores)]
    p = scores.get("predictions")
    if p:
        parts += ["", f"Predictions: {p['reused']} of {p['total']} reused from the cache, {p['new']} new."]
    if breakdowns:
        for name, t in tasks.items():
            primary = t.get("primary")
            brows = []
            for key, groups in (t.get("breakdown") or {}).items():
                for g, d in groups.items():
                    s = d["metrics"].get(primary, {})
                    brows.append([key, g, _fmt(s.get("value")), _ci(s.get("ci95")), str(d["n"]),
                                  f"{d.get('parse_failure_rate', 0.0):.1%}"])
            if brows:
                parts += ["", f"### {name}: {primary} by group", "",
                          _table(["by", "group", primary, "95% CI", "n", "parse fail"], brows)]
    return "\n".join(parts) + "\n"


def blind_table(scores: dict[str, Any]) -> str:
    """Markdown: per task, the headline metric with images and blind (every image blanked), their difference with
    a 95% paired bootstrap CI, and a flag where the model does not beat its blind self (CI not above 0)."""
    rows = []
    for name, t in scores.get("tasks", {}).items():
        b = t.get("blind")
        if b is None:
            continue
        diff = "-" if b["difference"] is None else f"{b['difference']:+.3f}"
        rows.append([name, b["metric"], _fmt(b["with_images"]), _fmt(b["blind"]), diff, _ci(b["ci95"]),
                     str(b["n"]), "yes" if b["beats_blind"] else "**NO**"])
    info = scores["blind"]
    fill = ", ".join(str(c) for c in info.get("fill", []))
    parts = ["## With images vs blind", "",
             _table(["task", "metric", "with images", "blind", "difference", "95% CI (paired)", "n", "beats blind"],
                    rows), "",
             f"Blind: every input image replaced by a blank one of the same size (RGB {fill}). CI: paired "
             "percentile bootstrap over samples (the same resampled samples for both scores)."]
    if info.get("not_beating_blind"):
        parts += ["", "**Does not beat its blind self** (the CI of the difference includes or is below 0): "
                  + ", ".join(info["not_beating_blind"])]
    if info.get("no_input_image"):
        parts += ["", "No blind run (no input image): " + ", ".join(info["no_input_image"])]
    return "\n".join(parts)
