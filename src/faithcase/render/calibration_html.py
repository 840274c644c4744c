"""The report's calibration: each feature of known meaning with every explainer's text (marked when
it names the concept) and AUROC beside the true answer's, and the sentences that place the matched
pairs on that scale."""

from __future__ import annotations

from html import escape

from faithcase.calibration import TRUTH, Calibration
from faithcase.case_study import CaseStudySummary
from faithcase.render.tables import fmt


def _text(text: str | None, hit: bool | None, auroc: float | None) -> str:
    mark = '<b title="names the concept">✓</b> ' if hit else ""
    shown = escape(text) if text else '<span class="muted">—</span>'
    return f'{mark}{shown} <span class="muted">({fmt(auroc, 2)})</span>'


def calibration_html(summary: CaseStudySummary) -> str:
    calibration: Calibration | None = summary.calibration
    if calibration is None or not calibration.enabled:
        return ('<p class="muted">calibration off: no features of known meaning '
                "(<code>calibration: off</code>)</p>")
    names = [r.explainer for r in calibration.explainers if r.explainer != TRUTH]
    heads = "".join(f"<th>{escape(n)} (AUROC)</th>" for n in names)
    rows = []
    for c in calibration.cases:
        status = "scored" if c.scored else escape((c.unscored or "not scored").split(":")[0])
        cells = "".join(f"<td>{_text(c.explanations.get(n), c.hits.get(n), c.aurocs.get(n))}</td>"
                        for n in names)
        rows.append(f'<tr><td><b>{escape(c.concept)}</b><br><span class="muted">'
                    f'{escape(", ".join(c.words))}</span></td><td>{c.n_firing}</td>'
                    f"<td>{fmt(c.f1, 2)}</td><td>{status}</td>{cells}"
                    f"<td>{fmt(c.aurocs.get(TRUTH), 2)}</td></tr>")
    summary_rows = "".join(
        f"<tr><td>{escape(r.explainer)}</td><td>{r.n_hits}/{r.n}</td><td>{fmt(r.hit_rate, 2)}</td>"
        f"<td>{fmt(r.mean_auroc, 2)}</td><td>{fmt(r.truth_auroc, 2)}</td><td>{r.n_scored}</td>"
        f"<td>{fmt(r.pass_rate, 2)}</td><td>{fmt(r.best_auroc, 2)}</td></tr>"
        for r in calibration.explainers)
    sentences = "".join(f"<li>{escape(s)}</li>" for s in calibration.sentences)
    warning = ('<div class="warn"><b>calibration:</b> the true answer does not separate these '
               "documents: the explainers' AUROCs below and in the group table are not findings."
               "</div>"
               if calibration.separable is False else "")
    return (f'{warning}<ul class="calibration">{sentences}</ul>'
            '<table class="summary" id="calibration"><tr><th>explainer</th><th>hits</th>'
            "<th>hit rate</th><th>AUROC</th><th>true answer's AUROC</th><th>scored</th>"
            "<th>passing</th><th>best pairs' AUROC</th></tr>"
            f"{summary_rows}</table>"
            '<table class="summary" id="known"><tr><th>concept</th><th>fires on</th>'
            f"<th>F1</th><th>scored</th>{heads}<th>true answer AUROC</th></tr>"
            f'{"".join(rows)}</table>'
            f'<p class="muted">{escape(calibration.rules.get("direction", ""))}; '
            f'{escape(calibration.rules.get("activation", ""))}. '
            f'{escape(calibration.hit_rule)}.</p>')
