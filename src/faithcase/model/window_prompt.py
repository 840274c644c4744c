"""The window explainer's prompt: delphi's default explainer, read in EleutherAI/delphi
(`explainers/default/prompts.py`, `prompt_builder.py`, `explainer.py`).

As delphi builds it: its system prompt (no chain of thought), its three few-shot examples as user /
assistant turns, then one user turn with the feature's windows, one `Example i:` line each, the
active tokens between `<<` and `>>` (a token is active above `threshold` × the window's peak, 0.3 as
in delphi; consecutive active tokens share one pair of delimiters). The explanation is what follows
`[EXPLANATION]:` in the reply.

Changes, stated: no activation values after the examples (delphi's `activations=False`) and no
top/bottom logits; only the reply's first line after `[EXPLANATION]:` is kept; for a local model the
reply is prefilled with `[EXPLANATION]:` (`prefill`), which a small model needs to answer in the
format at all. Which windows it sees: `shown_windows`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

SYSTEM = (
    "You are a meticulous AI researcher conducting an important investigation into patterns found "
    "in language. Your task is to analyze text and provide an explanation that thoroughly "
    "encapsulates possible patterns found in it.\nGuidelines:\n\nYou will be given a list of text "
    "examples on which special words are selected and between delimiters like <<this>>. If a "
    "sequence of consecutive tokens all are important, the entire sequence of tokens will be "
    "contained between delimiters <<just like this>>. How important each token is for the "
    "behavior is listed after each example in parentheses.\n- Try to produce a concise final "
    "description. Simply describe the text latents that are common in the examples, and what "
    "patterns you found.\n- If the examples are uninformative, you don't need to mention them. "
    "Don't focus on giving examples of important tokens, but try to summarize the patterns found "
    "in the examples.\n- Do not mention the marker tokens (<< >>) in your explanation.\n- Do not "
    "make lists of possible explanations. Keep your explanations short and concise.\n- The last "
    "line of your response must be the formatted explanation, using [EXPLANATION]:\n\n\n")

FEW_SHOT: tuple[tuple[str, str], ...] = (
    ("\nExample 1:  and he was <<over the moon>> to find\n"
     "Example 2:  we'll be laughing <<till the cows come home>>! Pro\n"
     "Example 3:  thought Scotland was boring, but really there's more <<than meets the eye>>! "
     "I'd\n",
     "\n[EXPLANATION]: Common idioms in text conveying positive sentiment.\n"),
    ("\nExample 1:  a river is wide but the ocean is wid<<er>>. The ocean\n"
     "Example 2:  every year you get tall<<er>>,\" she\n"
     "Example 3:  the hole was small<<er>> but deep<<er>> than the\n",
     "\n[EXPLANATION]: The token \"er\" at the end of a comparative adjective describing size.\n"),
    ("\nExample 1:  something happening inside my <<house>>\", he\n"
     "Example 2:  presumably was always contained in <<a box>>\", according\n"
     "Example 3:  people were coming into the <<smoking area>>\".\n\nHowever he\n"
     "Example 4:  Patrick: \"why are you getting in the << way?>>\" Later,\n",
     "\n[EXPLANATION]: Nouns representing a distinct objects that contains something, sometimes "
     "preciding a quotation mark.\n"),
)

MARKER = "[EXPLANATION]:"
THRESHOLD = 0.3  # delphi's Explainer.threshold
_EXPLANATION = re.compile(r"\[EXPLANATION\]:\s*(.*)", re.DOTALL)


def highlight(texts: Sequence[str], acts: Sequence[float], threshold: float = THRESHOLD) -> str:
    """The window's text with its active tokens (> threshold × its peak) between << and >>."""
    cut = max(acts, default=0.0) * threshold
    out, inside = [], False
    for text, act in zip(texts, acts):
        active = act > cut and act > 0
        if active != inside:
            out.append("<<" if active else ">>")
            inside = active
        out.append(text)
    if inside:
        out.append(">>")
    return "".join(out)


def examples_block(windows: Sequence[tuple[Sequence[str], Sequence[float]]],
                   threshold: float = THRESHOLD) -> str:
    """The last user turn: one `Example i:` line per (token texts, activations) window."""
    lines = [f"Example {i}: {highlight(texts, acts, threshold)}"
             for i, (texts, acts) in enumerate(windows, start=1)]
    return "\n" + "\n".join(lines) + "\n"


def messages(block: str) -> list[dict[str, str]]:
    """The chat: system, the few-shot turns, the feature's examples."""
    chat = [{"role": "system", "content": SYSTEM}]
    for user, assistant in FEW_SHOT:
        chat += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return chat + [{"role": "user", "content": block}]


def parse_explanation(reply: str, prefilled: bool = False) -> str | None:
    """The first line after `[EXPLANATION]:` (the whole reply's first line when the marker was
    prefilled), stripped; None when there is none."""
    if not prefilled:
        found = _EXPLANATION.search(reply)
        if found is None:
            return None
        reply = found.group(1)
    line = reply.strip().split("\n", 1)[0].strip()
    return line or None


def overlaps(a_seq: int, a_start: int, b_seq: int, b_start: int, length: int,
             b_length: int | None = None) -> bool:
    """Whether two token spans of one corpus intersect (same sequence, intervals meet)."""
    other = length if b_length is None else b_length
    return a_seq == b_seq and a_start < b_start + other and b_start < a_start + length


def shown_windows(windows: dict, n_windows: int) -> list:
    """The windows the explainer sees: the `max` and `mean` top windows taken in turn (max first),
    a window left out when it overlaps one already taken, up to n_windows."""
    chosen: list = []
    columns = [list(windows.get("max", [])), list(windows.get("mean", []))]
    for rank in range(max(map(len, columns), default=0)):
        for column in columns:
            if rank >= len(column) or len(chosen) >= n_windows:
                continue
            w = column[rank]
            if not any(overlaps(w.seq_id, w.start, c.seq_id, c.start, len(w.tokens),
                                len(c.tokens)) for c in chosen):
                chosen.append(w)
    return chosen
