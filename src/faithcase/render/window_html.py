"""The report's other explainers: each feature's explanation by every explainer beside the
self-explanation (window, plugins) with its AUROCs, and the paired comparison of the
self-explanation against the window explainer."""

from __future__ import annotations

from html import escape

from faithcase.case_study import CaseStudySummary, PairCase
from faithcase.render.tables import fmt


def explainer_names(summary: CaseStudySummary) -> list[str]:
    """The explainers a summary scored that some group has means of (the true answer: only with
    known features), controls last (older summaries: from the group means)."""
    found = list(dict.fromkeys(n for g in summary.groups.values()
                               for n in g.eleuther.get("own", {})))
    if summary.explainers:
        return [n for n in summary.explainers if n in found or not summary.groups]
    return found


def controls_of(summary: CaseStudySummary) -> list[str]:
    """The controls of the SAE features (the true answer explains known features only)."""
    if summary.explainers:
        return [n for n, e in summary.explainers.items() if e.control and e.only is None]
    return [n for n in ("baseline", "null") if n in explainer_names(summary)]


def explainer_html(case: PairCase, slot: int, name: str) -> str:
    """Another explainer's explanation of one feature of a pair, with its own and cross AUROC."""
    text = case.explanation(name, slot)
    own, cross = case.auroc("own", name)[slot], case.auroc("cross", name)[slot]
    check = case.checks[slot] if case.checks and name == "window" else None
    flag = (f' <span class="flag" title="{escape(check.uninformative_window)}">uninformative'
            "</span>") if check and check.uninformative_window else ""
    body = escape(text) if text is not None else f"no {escape(name)} explanation"
    return (f'<blockquote class="window-explanation{"" if text else " none"}" '
            f'data-explainer="{escape(name)}" title="the {escape(name)} explainer\'s explanation">'
            f'<span class="muted">{escape(name)}:</span> {body}{flag} '
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


def sensitivity_html(summary: CaseStudySummary) -> str:
    """What the run can detect: each comparison's smallest detectable difference."""
    items = "".join(
        f"<li>{escape(s.comparison)} (n = {s.n}"
        f"{'' if s.paired else f' and {s.n_other}'}): <b>{fmt(s.detectable)}</b></li>"
        for s in summary.sensitivity)
    if not items:
        return ""
    return ('<p class="sub">Smallest difference in mean AUROC each comparison would detect '
            "(80% power, the bootstrap's 95% interval; from the run's number of scored features "
            f"and their spread):</p><ul class=\"sensitivity\">{items}</ul>")


def orphans_html(summary: CaseStudySummary) -> str:
    """Shared against orphan features, metric by metric, with the unpaired interval."""
    if not summary.orphans:
        return ""
    rows = "".join(
        f"<tr><td>{escape(d.metric)}</td><td>{fmt(d.mean_shared)} <span class=\"muted\">"
        f"({d.n_shared})</span></td><td>{fmt(d.mean_orphan)} <span class=\"muted\">"
        f"({d.n_orphan})</span></td><td><b>{fmt(d.difference)}</b></td>"
        f"<td>[{fmt(d.ci_low)}, {fmt(d.ci_high)}]</td></tr>" for d in summary.orphans)
    return ('<h2>Shared against orphan features</h2>'
            '<table class="summary" id="orphans"><tr><th>metric</th><th>shared (n)</th>'
            "<th>orphan (n)</th><th>shared − orphan</th><th>95% interval (unpaired: each "
            f"group resampled on its own)</th></tr>{rows}</table>")
