"""Features of known meaning: a concept (a set of words) as a direction of the residual stream and
a rule that says where it fires.

- occurrences: the positions of the concept's words in the token stream (each word as itself,
  capitalised, with and without a leading space; a word of several tokens marks all of them);
- direction: unit(mean residual at the occurrences − mean residual over every kept position);
- activation: max(0, residual · direction − threshold), the threshold being the projection that
  best separates the occurrences from the other kept positions (highest F1 of "projection >
  threshold" against "is an occurrence"; ties: the higher threshold).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DIRECTION_RULE = ("unit(mean residual at the concept's word positions − mean residual over every "
                  "kept position), at the run's hook")
ACTIVATION_RULE = ("max(0, residual · direction − threshold); threshold: the projection with the "
                   "highest F1 of 'projection > threshold' against 'is a word position' over the "
                   "kept corpus positions")


def word_forms(word: str) -> list[str]:
    """The spellings a word is looked for in: itself and capitalised, with and without a leading
    space (the tokenizers' word-start marker)."""
    spelled = dict.fromkeys([word, word.capitalize()])
    return [form for w in spelled for form in (w, " " + w)]


def occurrences(tokens: torch.Tensor, patterns: Sequence[Sequence[int]]) -> torch.Tensor:
    """Boolean [B, T]: the positions covered by any of the token-id `patterns` in `tokens`
    ([B, T]); every token of a matched pattern is marked."""
    found = torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
    length = tokens.shape[1]
    for pattern in patterns:
        k = len(pattern)
        if k == 0 or k > length:
            continue
        wanted = torch.tensor(list(pattern), dtype=tokens.dtype, device=tokens.device)
        hits = (tokens.unfold(1, k, 1) == wanted).all(-1)  # [B, T-k+1]
        for offset in range(k):
            found[:, offset:offset + hits.shape[1]] |= hits
    return found


def best_threshold(projections: torch.Tensor, labels: torch.Tensor) -> tuple[float, dict]:
    """The threshold t maximising the F1 of `projections > t` against `labels` (1-D), and the
    precision, recall and F1 there. t sits halfway between the last kept projection and the next
    lower one, so `> t` keeps exactly the chosen positions."""
    n_true = int(labels.sum())
    if n_true == 0 or len(projections) == 0:
        return float("inf"), {"precision": None, "recall": None, "f1": None}
    values = projections.double()
    order = torch.argsort(values, descending=True, stable=True)
    ranked, hit = values[order], labels[order].double()
    true_pos = torch.cumsum(hit, 0)
    kept = torch.arange(1, len(ranked) + 1, dtype=torch.float64)
    f1 = 2 * true_pos / (kept + n_true)
    # cut only between distinct values: a tie must be kept or left out as a whole
    cut = torch.ones(len(ranked), dtype=torch.bool)
    cut[:-1] = ranked[:-1] > ranked[1:]
    f1 = torch.where(cut, f1, torch.full_like(f1, -1.0))
    best = int(torch.argmax(f1))  # first maximum: the fewest positions, the higher threshold
    below = float(ranked[best + 1]) if best + 1 < len(ranked) else float(ranked[best]) - 1.0
    threshold = (float(ranked[best]) + below) / 2
    tp = float(true_pos[best])
    return threshold, {"precision": tp / (best + 1), "recall": tp / n_true, "f1": float(f1[best])}


# Common concepts of general English text, each a few everyday words (inflections listed: a word
# counts only as spelled here). A config's `calibration.concepts` replaces the list.
_CONCEPT_WORDS = {
    "music": "music song songs musical melody band sound sing singing dance rhythm album concert",
    "food": "food recipe recipes eat eating meal meals dish kitchen cooking cook ingredients taste",
    "family": "family families mother father parents children child kids brother sister son "
              "daughter",
    "sports": "sports sport game games team teams players player football soccer ball coach",
    "history": "history historical ancient century centuries war wars empire medieval king",
    "space": "space planet planets earth stars star sun moon universe galaxy orbit",
    "art": "art arts artist artists painting paintings creative creativity artistic museum",
    "technology": "technology digital computer computers software online internet data algorithm",
    "nature": "nature ocean sea water river forest forests mountain mountains beach island lake",
    "health": "health healthy medical doctor doctors disease treatment exercise patients",
    "money": "money price prices pay financial cost costs business market economy buy",
    "animals": "animal animals cat cats dog dogs species bird birds wildlife fish horse",
    "colors": "color colors colour red blue green yellow purple",
    "emotions": "love happy happiness sad fear anger joy feel feeling feelings emotions emotional",
    "time": "time year years day days week weeks month months hour hours minutes",
    "people": "people person man men woman women friend friends",
}
DEFAULT_CONCEPTS = {name: words.split() for name, words in _CONCEPT_WORDS.items()}
