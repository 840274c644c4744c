"""The Llama 3 tokenizer (Llama-3.2-1B's 128,256 tokens), built offline for the rehearsal.

The PyPI package `llama-models` ships Meta's tiktoken BPE file (`llama3/tokenizer.model`: one
`base64(token bytes) rank` per line, 128,000 ranks). Here it becomes a Hugging Face fast tokenizer:
byte-level BPE whose merges are recovered from the ranks, Llama 3's pre-tokenizer split, the 256
special tokens after the ranks, a BOS added in front, and a Llama 3.2 chat template. The package is
located with importlib, never imported (a test/rehearsal dependency, not a runtime one).
"""

from __future__ import annotations

import base64
import importlib.util
from functools import lru_cache
from pathlib import Path

from faithcase.run.errors import FaithcaseError

PACKAGE, BPE_FILE = "llama_models", "llama3/tokenizer.model"
# Llama 3's pre-tokenizer: contractions, letters, up to 3 digits, punctuation, newlines, spaces
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
N_SPECIAL = 256
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
START_HEADER, END_HEADER, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
# the named special tokens from id 128,000 on, as Llama-3.2-1B's tokenizer names them; the
# others are <|reserved_special_token_N|>
NAMED_SPECIAL = {0: BOS, 1: EOS, 4: "<|finetune_right_pad_id|>", 6: START_HEADER, 7: END_HEADER,
                 8: "<|eom_id|>", 9: EOT, 10: "<|python_tag|>"}
MAX_LENGTH = 131072

# The Llama 3.2 chat template (system header with the knowledge and today's date, then one header
# per message). `date_string` wins over the clock; without either the date is 26 Jul 2024.
CHAT_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages and messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message + "<|eot_id|>" }}
{%- for message in messages %}
    {{- "<|start_header_id|>" + message['role'] + "<|end_header_id|>\\n\\n" }}
    {{- message['content'] | trim }}
    {{- "<|eot_id|>" }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- "<|start_header_id|>assistant<|end_header_id|>\\n\\n" }}
{%- endif %}
"""


def bpe_file() -> Path:
    """Meta's Llama 3 BPE file inside the installed llama-models package."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / BPE_FILE if folders else None
    if path is None or not path.is_file():
        raise FaithcaseError("the Llama 3 tokenizer needs the PyPI package llama-models: "
                             "pip install llama-models==0.3.0 (make install does it)")
    return path


def read_ranks(path: Path) -> dict[bytes, int]:
    """{token bytes: rank} of a tiktoken BPE file."""
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def special_tokens(n_ranks: int) -> list[str]:
    """The 256 special tokens, in id order from n_ranks on."""
    names, reserved = [], 0
    for i in range(N_SPECIAL):
        if i in NAMED_SPECIAL:
            names.append(NAMED_SPECIAL[i])
        else:
            names.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return names


def last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    """The two parts whose merge makes `token`: byte-pair merging of its bytes (lowest-rank pair
    first, as tiktoken does) with only the ranks below the token's own, which stops at two parts."""
    limit = ranks[token]
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_rank = -1, limit
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], limit)
            if rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            return None
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return (parts[0], parts[1]) if len(parts) == 2 else None


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet (the ByteLevel pre-tokenizer's): printable Latin-1 bytes stand
    for themselves, the other bytes, in order, for the characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in mapping]
    mapping.update({b: chr(0x100 + i) for i, b in enumerate(others)})
    return mapping


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The byte-level BPE vocabulary and merges (in rank order) equivalent to tiktoken's ranks."""
    alphabet = _byte_to_unicode()

    def text(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = []
    for token in sorted(ranks, key=ranks.get):
        if len(token) > 1 and (pair := last_merge(token, ranks)) is not None:
            merges.append((text(pair[0]), text(pair[1])))
    return vocab, merges


@lru_cache(maxsize=1)
def llama3_tokenizer():
    """Llama-3.2-1B's tokenizer as a transformers fast tokenizer (shared: do not modify it)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    ranks = read_ranks(bpe_file())
    vocab, merges = vocab_and_merges(ranks)
    backend = Tokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    specials = special_tokens(len(ranks))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                      special_tokens=[(BOS, len(ranks))])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, model_max_length=MAX_LENGTH,
        clean_up_tokenization_spaces=False)  # decode gives back the exact text, as tiktoken's
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
