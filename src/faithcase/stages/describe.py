"""The describe stage: the window explainer, the comparison the self-explanation method claims to
match (Kharlapenko et al.: "similar or superior interpretation accuracy compared to the LLM Neuron
explainer"). An instruction-tuned model reads a feature's top windows, active tokens marked, and
writes what they share: delphi's default explainer (`model/window_prompt.py`), greedy.

What it sees: `describe.n_windows` of the feature's top `max` and `mean` windows (taken in turn,
overlapping ones left out), never a scoring context: the windows stage leaves every context that
overlaps one of those top windows out of the scoring samples (delphi's split of explanation and
test examples). The embed stage then scores these explanations on the same documents as the
self-explanations.

Cached per feature: an explanation is reused while its fingerprint (the settings, the explainer,
the exact prompt) is unchanged, so a rerun with more pairs explains only the new features.
"""

from __future__ import annotations

from collections.abc import Mapping

from faithcase.artifacts import FeatureWindows
from faithcase.config import affecting
from faithcase.explainers.backends import backend
from faithcase.model.window_prompt import (
    FEW_SHOT,
    MARKER,
    SYSTEM,
    examples_block,
    messages,
    parse_explanation,
    shown_windows,
)
from faithcase.numerics.explanation_checks import (
    UNINFORMATIVE_RULE,
    normalize,
    of_class,
    uninformative_reasons,
)
from faithcase.render.tables import console, table
from faithcase.run.graph import Stage
from faithcase.run.store import fingerprint
from faithcase.window_artifacts import (
    DESCRIBE_FILE,
    DescribeArtifact,
    ShownWindow,
    WindowExplanation,
)

METHOD = ("delphi's default explainer prompt (EleutherAI/delphi explainers/default): its system "
          "prompt, its three few-shot examples, the feature's windows as `Example i:` lines with "
          "active tokens (> threshold × the window's peak) between << >>; no activation values, "
          "no chain of thought; the first line after [EXPLANATION]: is the explanation")
SEPARATION = ("the explainer sees only top `max` and `mean` windows; every scoring context "
              "(activating or not) that overlaps one of the feature's top `max` or `mean` windows "
              "is left out of the embed documents, for both explainers")
NO_WINDOW = "no window: the feature never fires on the corpus"
COPY_WORDS = 6  # sharing this many consecutive words with a few-shot answer is a copy
ANCHORS = ("A", "B")  # two last turns whose chats share exactly the explainer's fixed prefix


def explainer_name(cfg, run_model: str) -> str:
    return backend(cfg).label(cfg, run_model)


def explainer_key(rt) -> dict:
    """What the explainer's replies depend on besides the prompt."""
    return backend(rt.cfg.describe).key(rt)


def make_explainer(rt):
    return backend(rt.cfg.describe).make(rt)


def prompt_of(feature: FeatureWindows, cfg) -> tuple[str, list[ShownWindow]]:
    shown = shown_windows(feature.windows, cfg.n_windows)
    block = examples_block([(w.texts, w.acts) for w in shown], cfg.threshold)
    return block, [ShownWindow(seq_id=w.seq_id, start=w.start, length=len(w.tokens))
                   for w in shown]


def describe(features: Mapping[str, list[int]], windows: Mapping[str, Mapping[str, FeatureWindows]],
             cfg, explainer, name: str, key: dict, stock: tuple[float, int],
             previous: DescribeArtifact | None = None, progress=None) -> DescribeArtifact:
    """Window explanations of the features ({sae: indices}) from their windows ({sae: {str(f):
    FeatureWindows}}); `explainer` (or a function returning one) has `replies(chats, anchor)`;
    `previous` explanations with the same fingerprint are reused."""
    settings = affecting(cfg)
    prefilled = cfg.prefill and not cfg.url
    done: dict[str, dict[str, WindowExplanation]] = {k: {} for k in features}
    todo = []
    for sae, indices in features.items():
        for f in indices:
            block, shown = prompt_of(windows[sae][str(f)], cfg)
            tag = fingerprint("describe-feature", settings, key, block)
            old = previous.features.get(sae, {}).get(str(f)) if previous else None
            if old is not None and old.fingerprint == tag:
                done[sae][str(f)] = old
            elif not shown:
                done[sae][str(f)] = WindowExplanation(feature=f, explanation=None, reason=NO_WINDOW,
                                                      reply="", prompt=block, shown=[],
                                                      fingerprint=tag)
            else:
                todo.append((sae, f, block, shown, tag))
    if todo:
        explainer = explainer() if callable(explainer) else explainer
        replies = explainer.replies([messages(block) for _, _, block, _, _ in todo],
                                    [messages(a) for a in ANCHORS], progress)
        for (sae, f, block, shown, tag), reply in zip(todo, replies):
            text = parse_explanation(reply, prefilled)
            done[sae][str(f)] = WindowExplanation(
                feature=f, explanation=text, reason=None if text else f"no {MARKER} line",
                reply=reply, prompt=block, shown=shown, fingerprint=tag)
    reasons, found = _flag(done, stock, known=False)  # the SAE features' stock texts: the rule's
    _flag(done, stock, known=True)  # the known features' counted apart
    rule = {"rule": UNINFORMATIVE_RULE.split(", equals a baseline")[0] + ", is a stock text (as "
            "for the self-explanations), or copies a few-shot answer: shares "
            f"{COPY_WORDS} consecutive normalized words with one",
            "stock_share": stock[0], "stock_min": stock[1], "stock": found,
            "n_uninformative": sum(r is not None for r in reasons.values())}
    return DescribeArtifact(
        enabled=True, explainer=name, method=METHOD, system=SYSTEM,
        few_shot=[list(turn) for turn in FEW_SHOT], prefill=MARKER if prefilled else None,
        separation=SEPARATION, uninformative_rule=rule,
        features={k: dict(sorted(g.items(), key=lambda kv: int(kv[0]))) for k, g in done.items()})


def _flag(done: dict, stock: tuple[float, int], known: bool) -> tuple[dict, dict]:
    """Flags the uninformative window explanations of the SAE features (or the known ones)."""
    texts = {k: e.explanation for k, e in of_class(done, known).items()}
    reasons, found = uninformative_reasons(texts, {}, *stock)
    for (sae, f), reason in reasons.items():
        done[sae][f].uninformative = reason or copied_example(texts[sae, f])
    return reasons, found


def copied_example(text: str | None) -> str | None:
    """Why a window explanation copies a few-shot answer (COPY_WORDS consecutive words), or None."""
    if not text:
        return None
    words = normalize(text).split()
    said = {tuple(words[i:i + COPY_WORDS]) for i in range(len(words) - COPY_WORDS + 1)}
    for n, (_, answer) in enumerate(FEW_SHOT, start=1):
        shown = normalize(answer.replace(MARKER, "")).split()
        if said & {tuple(shown[i:i + COPY_WORDS]) for i in range(len(shown) - COPY_WORDS + 1)}:
            return f"copies few-shot example {n}"
    return None


def described_features(pairs, kinds) -> dict[str, list[int]]:
    """{sae: feature indices} of the selected pairs whose group is in `kinds`."""
    chosen = [p for p in pairs.all_pairs() if p.kind in kinds]
    return {"sae1": sorted({p.index1 for p in chosen}), "sae2": sorted({p.index2 for p in chosen})}


def disabled() -> DescribeArtifact:
    return DescribeArtifact(enabled=False, explainer="off (describe.enabled: false)", method=METHOD,
                            system=SYSTEM, few_shot=[], prefill=None, separation=SEPARATION)


# ---------------------------------------------------------------- printing and the stage


def print_describe(artifact: DescribeArtifact, inputs: dict) -> None:
    if not artifact.enabled:
        console.print("window explainer off (describe.enabled: false)")
        return
    pairs = inputs["pairs"]
    grid = table(f"window explanations ({artifact.explainer})",
                 ["kind", "rank", "sae1 explanation", "sae2 explanation"])
    for p in pairs.all_pairs():
        cells = []
        for sae, index in (("sae1", p.index1), ("sae2", p.index2)):
            e = artifact.features.get(sae, {}).get(str(index))
            text = "—" if e is None or e.explanation is None else e.explanation
            cells.append(text + (" [uninformative]" if e and e.uninformative else ""))
        grid.add_row(p.kind, str(p.rank), *cells)
    console.print(grid)


def _compute(job) -> DescribeArtifact:
    rt, cfg = job.ctx, job.settings
    if not cfg.enabled:
        artifact = disabled()
    else:
        features = (described_features(job.inputs["pairs"], cfg.kinds)
                    | job.inputs["known"].selection())
        windows = {k: w.features for k, w in job.inputs["windows"].items()}
        previous = job.previous(DESCRIBE_FILE, DescribeArtifact)
        with rt.console.status("describing features from their top windows …") as status:
            def progress(what: str, done: int, total: int) -> None:
                status.update(f"window explainer: {done}/{total} features")

            artifact = describe(features, windows, cfg, lambda: make_explainer(rt),
                                explainer_name(cfg, rt.cfg.model.name), explainer_key(rt),
                                (rt.cfg.explain.stock_share, rt.cfg.explain.stock_min),
                                previous, progress)
        reused = sum(e.fingerprint == p.fingerprint for k, g in artifact.features.items()
                     for f, e in g.items() if previous and (p := previous.features.get(k, {})
                                                            .get(f)))
        if reused:
            rt.console.print(f"[green]cached[/green] describe: {reused} features reused")
    job.write(DESCRIBE_FILE, artifact)
    return artifact


def stage_key(rt) -> dict:
    return {"settings": affecting(rt.cfg.describe), "explainer": explainer_key(rt),
            "stock": [rt.cfg.explain.stock_share, rt.cfg.explain.stock_min]}


STAGE = Stage(
    "describe", _compute, inputs=("pairs", "windows", "known"), section="describe",
    artifact=DescribeArtifact, printer=print_describe, key=stage_key,
    doc="The window explainer: an instruction-tuned model (the run's, a local file or an "
        "OpenAI-compatible endpoint) explains each feature from its top windows (delphi's prompt).")
