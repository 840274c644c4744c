"""The report's window explainer: each feature's window explanation with its AUROCs, and the paired
comparison of the self-explanation against it."""

from __future__ import annotations

from html import escape

from faithcase.artifacts import SAE_KEYS, CaseStudySummary, PairCase
from faithcase.render.tables import fmt


def window_explanation_html(case: PairCase, slot: int) -> str:
    """The window explanation of one feature of a pair, with its own and cross AUROC."""
    if not case.window_explanations:
        return ""
    text = case.window_explanations[slot]
    docs, partner = SAE_KEYS[slot], SAE_KEYS[1 - slot]
    own = case.eleuther[docs][docs].get("window")
    cross = case.eleuther[docs][partner].get("window")
    check = case.checks[slot] if case.checks else None
    flag = (f' <span class="flag" title="{escape(check.uninformative_window)}">uninformative'
            "</span>") if check and check.uninformative_window else ""
    body = escape(text) if text is not None else "no window explanation"
    return (f'<blockquote class="window-explanation{"" if text else " none"}" '
            'title="written by the window explainer from the top windows (delphi\'s prompt)">'
            f'<span class="muted">from windows:</span> {body}{flag} '
            f'<span class="muted">own {fmt(own, 2)} · cross {fmt(cross, 2)}</span></blockquote>')


def comparison_html(summary: CaseStudySummary) -> str:
    """Self minus window AUROC per group and side, with the bootstrap interval and win share."""
    if not summary.comparison:
        return ('<p class="sub">Window explainer off: no comparison '
                "(describe.enabled: false).</p>")
    rows = "".join(
        f"<tr><td>{escape(group)}</td><td>{r.side}</td><td>{r.n}</td>"
        f"<td>{fmt(r.mean_self)}</td><td>{fmt(r.mean_window)}</td>"
        f"<td><b>{fmt(r.mean_difference)}</b></td>"
        f'<td class="ci">[{fmt(r.ci_low)}, {fmt(r.ci_high)}]</td>'
        f'<td>{"—" if r.self_wins is None else f"{r.self_wins:.0%}"}</td></tr>'
        for group, items in summary.comparison.items() for r in items)
    return ('<table class="summary"><tr><th>pairs</th><th>side</th><th>features</th>'
            "<th>self AUROC</th><th>window AUROC</th><th>self − window</th>"
            "<th>95% bootstrap interval</th><th>self wins</th></tr>"
            f"{rows}</table>")
