"""The report's explanation checks as HTML: the group table of scoring rules and checks, the rules
in words, and each feature's flags (unscored, uninformative, single-token) and known answer."""

from __future__ import annotations

from html import escape

from faithcase.artifacts import PAIR_KINDS
from faithcase.case_study import CaseStudySummary, PairCase
from faithcase.render.tables import fmt


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _counted(value: float | None, n: int, show=pct) -> str:
    return f'{show(value)} <span class="muted">({n})</span>'


def checks_row_html(kind: str, summary: CaseStudySummary) -> str:
    g = summary.groups[kind]
    c = g.checks
    if c is None:
        return ""
    unscored = ", ".join(f"{n} {escape(rule)}" for rule, n in c.unscored.items()) or "none"
    informative = "".join(
        f"<td>{_counted(c.eleuther_informative[side]['self'], c.n_informative[side], fmt)}</td>"
        for side in ("own", "cross"))
    similarity = _counted(c.explanation_similarity_informative, c.n_similarity_informative,
                          lambda v: fmt(v, 2))
    return (
        f'<tr data-kind="{escape(kind)}"><td><span class="badge {escape(kind)}">{escape(kind)}'
        f"</span></td><td>{g.n_scored} / {g.n_features}</td><td>{unscored}</td>"
        f"<td>{c.n_uninformative} · {c.n_uninformative_window}</td>{informative}"
        f"<td>{fmt(g.mean_explanation_similarity, 2)} · {similarity}</td>"
        f"<td>{_counted(c.known_answer_rate, c.n_known_answer)}</td>"
        f"<td>{_counted(c.known_answer_window_rate, c.n_known_answer_window)}</td>"
        f"<td>{_counted(c.known_answer_null_rate, c.n_known_answer_null)}</td>"
        f"<td>{_counted(c.failure_rate_single_token, c.n_single_token)}</td>"
        f"<td>{_counted(c.failure_rate_other, c.n_other)}</td></tr>")


def checks_table_html(summary: CaseStudySummary) -> str:
    """Per group: how many features are scored, why not, the uninformative explanations, the
    informative-only AUROC and similarity means, the known-answer rate beside its null, and the
    failure rates of single-token features and the others."""
    rows = "".join(checks_row_html(kind, summary) for kind in PAIR_KINDS
                   if kind in summary.groups)
    if not rows:
        return ""
    null = summary.similarity_null
    null_text = ("—" if null is None else
                 f"{fmt(null.mean, 2)} all · {fmt(null.mean_informative, 2)} informative, "
                 f"{len(null.similarities)} pairs")
    head = ('<table class="checks"><tr><th rowspan="2">group</th>'
            '<th rowspan="2">scored / features</th><th rowspan="2">unscored</th>'
            '<th rowspan="2">uninformative<br>self · window</th>'
            '<th colspan="2">self AUROC, informative only</th>'
            '<th rowspan="2">explanation similarity<br>all · informative</th>'
            '<th colspan="3">names a peak token</th><th colspan="2">failing</th></tr>'
            "<tr><th>own</th><th>cross</th><th>self</th><th>window</th><th>null</th>"
            "<th>single-token</th><th>other</th></tr>")
    return (f"{head}{rows}</table>"
            f'<p class="sub" id="similarity-null">Explanation similarity of unrelated features '
            f"(random non-matched pairs, the null): {escape(null_text)}.</p>{rules_html(summary)}")


def rules_html(summary: CaseStudySummary) -> str:
    rules = summary.rules
    if not rules:
        return ""
    uninformative = rules.get("uninformative") or {}
    share, least = uninformative.get("stock_share"), uninformative.get("stock_min")
    items = [rules.get("scored"), rules.get("counted"),
             uninformative.get("rule") and (
                 f"uninformative: {uninformative['rule']} (stock_share {share}, "
                 f"stock_min {least})"),
             rules.get("known_answer"),
             rules.get("single_token_share") is not None and (
                 f"single-token: the top token id carries more than "
                 f"{rules['single_token_share']:g} of the feature's activation"),
             rules.get("means")]
    shown = "".join(f"<li>{escape(str(item))}</li>" for item in items if item)
    return f'<details class="rules"><summary>the rules</summary><ul>{shown}</ul></details>'


def feature_flags_html(case: PairCase, slot: int) -> str:
    """The flags beside a feature's name: unscored (why), uninformative (why), single-token."""
    if slot >= len(case.checks):
        return ""
    c, spread = case.checks[slot], case.stats[slot].spread
    flags = []
    if not c.scored:
        flags.append(("unscored", f"no AUROC: {c.unscored or 'unscored'}"))
    if c.uninformative:
        flags.append(("uninformative", f"left out of the informative means: {c.uninformative}"))
    if c.single_token and spread is not None:
        token = "".join(spread.texts)
        flags.append(("single-token", f"{spread.top_token_share:.0%} of its activation on "
                                      f"{token!r}"))
    return "".join(f' <span class="check-flag" title="{escape(title)}">{label}</span>'
                   for label, title in flags)


def feature_checks_html(case: PairCase, slot: int) -> str:
    """Metrics spans: the corpus windows the scoring rules count, the known answer."""
    if slot >= len(case.checks):
        return ""
    c = case.checks[slot]
    windows = ("—" if c.n_activating_windows is None else
               f"{c.n_activating_windows} / {c.n_activating_windows + c.n_non_activating_windows}")
    named = {True: "yes", False: "no", None: "—"}
    tokens = escape(", ".join(c.peak_tokens)) or "no peak token"
    return ('<span title="activating / all aligned windows of the corpus pass">'
            f"<em>activating windows</em>{windows}</span>"
            f'<span title="peak tokens: {tokens}"><em>names a peak token</em>'
            f"{named[c.known_answer]} · null {named[c.known_answer_null]}</span>")
