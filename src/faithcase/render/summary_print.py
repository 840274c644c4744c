"""The case study's summary as printed tables: the groups, the explanation checks, the registered
scores, the comparisons and the calibration on features of known meaning."""

from __future__ import annotations

from faithcase.artifacts import SIDES
from faithcase.calibration import Calibration
from faithcase.render.tables import console, fmt, table
from faithcase.render.window_html import explainer_names


def print_summary(summary) -> None:
    names = explainer_names(summary)
    scores = table("case study by group (pairs with a silent feature left out; AUROC means over "
                   "the scored features)",
                   ["group", "pairs", "left out", "cos", "act. Pearson", "scored",
                    f"own {'/'.join(names)}", f"cross {'/'.join(names)}"])
    checks = table("explanation checks", ["group", "passing", "uninformative self/window",
                                          "names peak token self/window/null",
                                          "failing 1-token/other"])
    for kind, g in summary.groups.items():
        own, cross = (" / ".join(fmt(g.eleuther[side].get(n), 2) for n in names) for side in SIDES)
        scores.add_row(kind, str(g.n_pairs), str(g.n_left_out), fmt(g.mean_similarity),
                       fmt(g.mean_pearson), f"{g.n_scored}/{g.n_features}", own, cross)
        c = g.checks
        if c is not None:
            checks.add_row(kind, fmt(g.pass_rate, 2),
                           f"{c.n_uninformative} / {c.n_uninformative_window}",
                           f"{fmt(c.known_answer_rate, 2)} / {fmt(c.known_answer_window_rate, 2)} "
                           f"/ {fmt(c.known_answer_null_rate, 2)}",
                           f"{fmt(c.failure_rate_single_token, 2)} ({c.n_single_token}) / "
                           f"{fmt(c.failure_rate_other, 2)} ({c.n_other})")
    console.print(scores)
    console.print(checks)
    if summary.scores:
        extra = table("scores by group (means over the features of the pairs that fire)",
                      ["group", *summary.scores])
        for kind, g in summary.groups.items():
            extra.add_row(kind, *(fmt(g.scores.get(key)) for key in summary.scores))
        console.print(extra)
    null = summary.similarity_null
    if null is not None:
        similar = ", ".join(f"{kind} {fmt(g.mean_explanation_similarity, 2)}"
                            for kind, g in summary.groups.items() if kind != "known")
        console.print(f"explanation similarity: {similar}; null (unrelated pairs, n="
                      f"{len(null.similarities)}): {fmt(null.mean, 2)}, informative only "
                      f"{fmt(null.mean_informative, 2)}")
    for group, rows in summary.comparison.items():
        for r in rows:
            console.print(f"self − window AUROC ({group}, {r.side}, n={r.n}): "
                          f"{fmt(r.mean_difference, 3)} [{fmt(r.ci_low, 3)}, {fmt(r.ci_high, 3)}], "
                          f"self wins {fmt(r.self_wins, 2)}")
    for s in summary.sensitivity:
        sizes = f"n={s.n}" if s.paired else f"n={s.n} and {s.n_other}"
        console.print(f"smallest detectable difference ({s.power:.0%} power), {s.comparison}, "
                      f"{sizes}: {fmt(s.detectable, 3)}")
    for c in summary.correlations:
        console.print(f"Spearman ρ(decoder cos, {c.score}) over {c.pairs} pairs (n={c.n}): "
                      f"{fmt(c.rho)} [{fmt(c.ci_low)}, {fmt(c.ci_high)}]")
    for d in summary.orphans:
        console.print(f"shared − orphan, {d.metric} (n={d.n_shared} and {d.n_orphan}): "
                      f"{fmt(d.difference, 3)} [{fmt(d.ci_low, 3)}, {fmt(d.ci_high, 3)}] "
                      f"(shared {fmt(d.mean_shared, 3)}, orphan {fmt(d.mean_orphan, 3)})")
    if summary.calibration is not None and summary.calibration.enabled:
        print_calibration(summary.calibration)


def _short(text: str | None, limit: int = 40) -> str:
    if not text:
        return "—"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def print_calibration(calibration: Calibration) -> None:
    """Each known feature: its concept, whether it is scored, each explainer's text (✓ when it
    names the concept) and AUROC; then the calibration's sentences."""
    names = [r.explainer for r in calibration.explainers if not r.control]
    grid = table(f"features of known meaning ({calibration.n_scored} of "
                 f"{calibration.n_features} scored)",
                 ["concept", "fires", "scored", *names, "AUROC " + " / ".join([*names, "truth"])])
    for case in calibration.cases:
        texts = [f"{'✓ ' if case.hits.get(n) else ''}{_short(case.explanations.get(n))}"
                 for n in names]
        aurocs = " / ".join(fmt(case.aurocs.get(n), 2) for n in [*names, "truth"])
        grid.add_row(case.concept, str(case.n_firing), "yes" if case.scored else
                     (case.unscored or "no").split(":")[0], *texts, aurocs)
    console.print(grid)
    for sentence in calibration.sentences:
        console.print(sentence)
