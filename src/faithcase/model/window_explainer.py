"""The window explainer's model: a local causal LM (HF id, folder or GGUF file) or an
OpenAI-compatible chat endpoint. Both take chats (`window_prompt.messages`) and return replies,
greedy (temperature 0), so a rerun writes the same texts.

Local: the chats are rendered with the model's chat template (at the fixed date of
`model/prompt.py`) and prefilled with `[EXPLANATION]:` when asked. Their common token prefix (the
system prompt and the few-shot turns) is run once; the features then run in batches over copies of
that KV cache, each row's own tokens left-padded and masked. A row ends at EOS or at its first
newline. HTTP: one POST per feature to `{url}/chat/completions`, `concurrency` at a time; an
unreachable URL, an HTTP error or a reply without `choices[0].message.content` is a one-line error.
"""

from __future__ import annotations

import copy
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from faithcase.model.lm import cache_keyword
from faithcase.model.prompt import render_chat
from faithcase.model.window_prompt import MARKER
from faithcase.run.errors import FaithcaseError

Chat = list[dict[str, str]]
Progress = Callable[[str, int, int], None]


# ---------------------------------------------------------------- local


def newline_stops(tokenizer, eos: int) -> torch.Tensor:
    """EOS and every token whose text holds a newline."""
    ids = [i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])]
    return torch.tensor(sorted(set(ids + [eos])))


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every row shares."""
    if not rows:
        return 0
    n = min(map(len, rows))
    for i in range(n):
        if any(row[i] != rows[0][i] for row in rows):
            return i
    return n


class LocalExplainer:
    """Greedy replies of a plain HF causal LM (not the hooked bridge: no hook acts on the
    explainer, and the plain model decodes several times faster on CPU) to chats."""

    def __init__(self, hf_model, tokenizer, name: str, max_new_tokens: int, batch_size: int = 16,
                 prefill: bool = True):
        if not getattr(tokenizer, "chat_template", None):
            raise FaithcaseError(f"the window explainer {name} has no chat template; use an "
                                 "instruction-tuned model or an endpoint (describe.url)")
        self.model, self.tokenizer = hf_model, tokenizer
        self.device = next(hf_model.parameters()).device
        self.max_new_tokens, self.batch_size, self.prefill = max_new_tokens, batch_size, prefill
        eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        self.stops = newline_stops(tokenizer, eos).to(self.device)
        self.cache_keyword = cache_keyword(hf_model)

    def render(self, chat: Chat) -> str:
        return render_chat(self.tokenizer, chat) + (MARKER if self.prefill else "")

    def tokens(self, chat: Chat) -> list[int]:
        return self.tokenizer(self.render(chat), add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def replies(self, chats: Sequence[Chat], anchor: Sequence[Chat] = (),
                progress: Progress | None = None) -> list[str]:
        """One reply per chat. The shared prefix is that of `anchor` (chats that differ only in
        their last turn), so it does not depend on which features are asked."""
        rows = [self.tokens(chat) for chat in chats]
        if not rows:
            return []
        shared = common_prefix(rows)
        if anchor:  # never past the anchors' prefix: the same cache whichever features are asked
            shared = min(shared, common_prefix([self.tokens(c) for c in anchor]))
        shared = min(shared, min(map(len, rows)) - 1)  # every row keeps one token of its own
        prefix_ids = torch.tensor([rows[0][:shared]], device=self.device)
        prefix = self._forward(prefix_ids, None, None, None)[1] if shared else None
        out: list[str] = []
        for begin in range(0, len(rows), self.batch_size):
            out += self._batch(rows[begin:begin + self.batch_size], shared, prefix)
            if progress:
                progress("describe", min(begin + self.batch_size, len(rows)), len(rows))
        return out

    def _forward(self, ids, mask, positions, cache):
        extra = {} if cache is None else {self.cache_keyword: cache}
        if mask is not None:
            extra.update(attention_mask=mask, position_ids=positions)
        out = self.model.model(input_ids=ids, use_cache=True, **extra)
        cache = getattr(out, "past_key_values", None) or getattr(out, "cache", None)
        return out.last_hidden_state, cache

    def _batch(self, rows: list[list[int]], shared: int, prefix) -> list[str]:
        device, n = self.device, len(rows)
        own = [row[shared:] for row in rows]
        width = max(map(len, own))
        pad = self.pad
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in own], device=device)
        real = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in own], device=device)
        mask = torch.cat([torch.ones(n, shared, dtype=torch.long, device=device), real], 1)
        positions = (shared + real.cumsum(1) - 1).clamp_min(shared)
        cache = None
        if prefix is not None:
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(n)
        hidden, cache = self._forward(ids, mask, positions, cache)
        written: list[list[int]] = [[] for _ in range(n)]
        done = torch.zeros(n, dtype=torch.bool, device=device)
        last = positions[:, -1]
        for _ in range(self.max_new_tokens):
            token = self.model.lm_head(hidden[:, -1]).argmax(-1)
            for r in (~done).nonzero().flatten().tolist():
                written[r].append(int(token[r]))
            done |= torch.isin(token, self.stops)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones(n, 1, dtype=torch.long, device=device)], 1)
            last = last + 1
            hidden, cache = self._forward(token[:, None], mask, last[:, None], cache)
        return [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in written]


# ---------------------------------------------------------------- HTTP


class HttpExplainer:
    """Greedy replies of an OpenAI-compatible chat endpoint (`{url}/chat/completions`)."""

    def __init__(self, url: str, model: str, max_new_tokens: int, timeout_s: float = 60.0,
                 concurrency: int = 4, api_key_env: str | None = "OPENAI_API_KEY"):
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model, self.max_new_tokens = model, max_new_tokens
        self.timeout_s, self.concurrency = timeout_s, concurrency
        self.api_key = os.environ.get(api_key_env) if api_key_env else None

    def _post(self, chat: Chat) -> str:
        body = json.dumps({"model": self.model, "messages": chat, "temperature": 0,
                           "max_tokens": self.max_new_tokens, "seed": 0}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers,
                                         method="POST")
        where = f"window explainer endpoint {self.endpoint}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode("utf-8", "replace").replace("\n", " ")
            raise FaithcaseError(f"{where} answered HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise FaithcaseError(f"{where} is unreachable: {reason}") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise FaithcaseError(f"{where} sent a malformed reply (no "
                                 "choices[0].message.content): "
                                 f"{raw[:120].decode('utf-8', 'replace')!r}") from None
        if not isinstance(content, str):
            raise FaithcaseError(f"{where} sent a reply whose content is not text")
        return content

    def replies(self, chats: Sequence[Chat], anchor: Sequence[Chat] = (),
                progress: Progress | None = None) -> list[str]:
        out: list[str] = []
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            for reply in pool.map(self._post, chats):
                out.append(reply)
                if progress:
                    progress("describe", len(out), len(chats))
        return out
