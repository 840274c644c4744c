"""The window explainer: delphi's prompt, the separation of its windows from the scoring contexts,
per-feature caching, the HTTP endpoint (a fake one on 127.0.0.1), and the paired comparison."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest

from faithcase.config import DescribeConfig, WindowsConfig
from faithcase.model.window_explainer import HttpExplainer, common_prefix
from faithcase.model.window_prompt import (
    FEW_SHOT,
    SYSTEM,
    examples_block,
    highlight,
    messages,
    parse_explanation,
    shown_windows,
)
from faithcase.numerics.statistics import paired_comparison
from faithcase.run.errors import FaithcaseError
from faithcase.stages.describe import describe
from faithcase.stages.windows import WindowCollector
from toy_saes import IdentitySAE, batches_of, quantized_corpus, tagged


# ---------------------------------------------------------------- the prompt


def test_highlight_marks_runs_above_threshold_of_the_peak():
    texts = ["a", " b", " c", " d", " e"]
    assert highlight(texts, [0, 1.0, 0.2, 0.5, 0.31]) == "a<< b>> c<< d e>>"
    assert highlight(texts, [1, 1, 0, 0, 0]) == "<<a b>> c d e"
    assert highlight(texts, [0, 0, 0, 0, 0]) == "a b c d e"  # a silent window marks nothing
    assert highlight(["x", "y"], [1.0, 0.3], threshold=0.3) == "<<x>>y"  # strictly above


def test_messages_are_delphis_system_few_shot_then_the_examples():
    block = examples_block([(["a", " b"], [0.0, 2.0]), (["c"], [1.0])])
    assert block == "\nExample 1: a<< b>>\nExample 2: <<c>>\n"
    chat = messages(block)
    assert chat[0] == {"role": "system", "content": SYSTEM}
    assert [m["role"] for m in chat[1:]] == ["user", "assistant"] * len(FEW_SHOT) + ["user"]
    assert chat[-1]["content"] == block
    assert "[EXPLANATION]:" in SYSTEM and "<<this>>" in SYSTEM


def test_parse_explanation():
    assert parse_explanation("thinking\n[EXPLANATION]: Names of rivers.\nmore") == "Names of rivers."
    assert parse_explanation("no marker at all") is None
    assert parse_explanation("[EXPLANATION]:   \n") is None
    assert parse_explanation(" Dates in letters\nExample", prefilled=True) == "Dates in letters"


def _window(seq, start, n=4):
    return SimpleNamespace(seq_id=seq, start=start, tokens=[0] * n, texts=["t"] * n, acts=[1.0] * n)


def test_shown_windows_alternate_max_and_mean_and_skip_overlaps():
    windows = {"max": [_window(0, 1), _window(1, 1), _window(2, 1)],
               "mean": [_window(0, 3), _window(5, 1), _window(6, 1)]}
    shown = shown_windows(windows, 4)
    assert [(w.seq_id, w.start) for w in shown] == [(0, 1), (1, 1), (5, 1), (2, 1)]


def test_common_prefix():
    assert common_prefix([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix([[5], [6]]) == 0 and common_prefix([]) == 0


# ---------------------------------------------------------------- separation and caching


def _collected(n_seq=16, d=3, seed=21):
    resid, tokens, excluded = quantized_corpus(n_seq=n_seq, length=41, d=d, density=0.08, seed=seed)
    collector = WindowCollector(IdentitySAE(d), list(range(d)),
                                WindowsConfig(window=5, top=3, n_negative=6, reservoir=1000,
                                              n_quantiles=2, per_quantile=50))
    for batch in batches_of(resid, tokens, excluded, [7, n_seq - 7]):
        collector.update(*batch)
    return collector.finish(tagged), resid


def _spans_meet(a_seq, a_start, a_len, b_seq, b_start, b_len):
    return a_seq == b_seq and max(a_start, b_start) < min(a_start + a_len, b_start + b_len)


def test_scoring_contexts_never_overlap_a_window_the_explainer_may_see():
    found, resid = _collected()
    window = 5
    for f, fw in found.items():
        top = [w for c in ("max", "mean") for w in fw.windows[c]]
        assert top, "every planted feature fires"
        contexts = fw.activating + fw.non_activating
        for c in contexts:
            for w in top:
                assert not _spans_meet(c.seq_id, c.start, window, w.seq_id, w.start, len(w.tokens))
        # brute force: every aligned activating chunk that overlaps no top window is in the sample
        # (the reservoir holds them all and per_quantile takes every one)
        expected = set()
        for seq in range(resid.shape[0]):
            for start in range(1, 41 - window + 1, window):
                if resid[seq, start:start + window, f].max() > 0 and not any(
                        _spans_meet(seq, start, window, w.seq_id, w.start, len(w.tokens))
                        for w in top):
                    expected.add((seq, start))
        assert {(c.seq_id, c.start) for c in fw.activating} == expected
        assert len(fw.non_activating) == 6


class RecordingExplainer:
    """Replies from a rule, recording every chat it was asked."""

    def __init__(self):
        self.asked = []

    def replies(self, chats, anchor=(), progress=None):
        self.asked += chats
        return [f"[EXPLANATION]: pattern {len(c[-1]['content'])}\nignored" for c in chats]


def _describe(found, features, explainer, previous=None, **settings):
    cfg = DescribeConfig(url="http://127.0.0.1:9/v1", model="fake", **settings)
    return describe({"sae1": features}, {"sae1": {str(f): w for f, w in found.items()}}, cfg,
                    explainer, "fake", {"url": "fake"}, (0.5, 2), previous)


def test_the_prompt_holds_the_shown_windows_and_no_scoring_context():
    found, _ = _collected()
    explainer = RecordingExplainer()
    artifact = _describe(found, [0, 1, 2], explainer, n_windows=4)
    assert len(explainer.asked) == 3
    for f in (0, 1, 2):
        entry = artifact.features["sae1"][str(f)]
        fw = found[f]
        chosen = shown_windows(fw.windows, 4)
        assert entry.prompt == examples_block([(w.texts, w.acts) for w in chosen], 0.3)
        assert [(s.seq_id, s.start) for s in entry.shown] == [(w.seq_id, w.start) for w in chosen]
        assert entry.explanation == f"pattern {len(entry.prompt)}"
        for c in fw.activating + fw.non_activating:
            for s in entry.shown:
                assert not _spans_meet(c.seq_id, c.start, 5, s.seq_id, s.start, s.length)


def test_explanations_are_cached_per_feature():
    found, _ = _collected()
    first = RecordingExplainer()
    before = _describe(found, [0], first)
    again = RecordingExplainer()
    after = _describe(found, [0, 2], again, previous=before)
    assert len(first.asked) == 1 and len(again.asked) == 1  # only feature 2 is new
    assert again.asked[0][-1]["content"] == after.features["sae1"]["2"].prompt
    assert after.features["sae1"]["0"] == before.features["sae1"]["0"]
    changed = RecordingExplainer()
    _describe(found, [0, 2], changed, previous=after, n_windows=2)  # another prompt: asked again
    assert len(changed.asked) == 2


def test_stock_window_explanations_are_uninformative():
    found, _ = _collected(d=4)

    class Same:
        def replies(self, chats, anchor=(), progress=None):
            return ["[EXPLANATION]: Common idioms."] * len(chats)

    artifact = _describe(found, [0, 1, 2, 3], Same())
    flags = [e.uninformative for e in artifact.features["sae1"].values()]
    assert all(flag and flag.startswith("stock text: given by 4 of 4") for flag in flags)


# ---------------------------------------------------------------- the HTTP endpoint


class FakeEndpoint:
    """An OpenAI-compatible chat endpoint on 127.0.0.1, answering as `mode` says."""

    def __init__(self, mode="ok"):
        self.mode, self.requests = mode, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, body))
                if outer.mode == "500":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"internal error")
                    return
                last = body["messages"][-1]["content"]
                reply = ({"choices": [{"message": {"content": f"[EXPLANATION]: {len(last)} chars"}}]}
                         if outer.mode == "ok" else {"unexpected": True})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(reply).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint(request):
    server = FakeEndpoint(getattr(request, "param", "ok"))
    yield server
    server.close()


def test_http_explainer_posts_chats_and_parses_replies(endpoint):
    client = HttpExplainer(endpoint.url, "fake-model", 20, timeout_s=5, concurrency=2)
    chats = [messages("\nExample 1: <<a>>\n"), messages("\nExample 1: <<bb>>\n")]
    assert client.replies(chats) == [f"[EXPLANATION]: {len(c[-1]['content'])} chars" for c in chats]
    path, body = endpoint.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "fake-model" and body["temperature"] == 0 and body["max_tokens"] == 20


@pytest.mark.parametrize("endpoint, needle", [("500", "HTTP 500"), ("malformed", "malformed reply")],
                         indirect=["endpoint"])
def test_http_errors_are_one_line(endpoint, needle):
    with pytest.raises(FaithcaseError) as err:
        HttpExplainer(endpoint.url, "m", 8, timeout_s=5).replies([messages("x")])
    assert needle in str(err.value) and "\n" not in str(err.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_is_one_line():
    with pytest.raises(FaithcaseError, match="unreachable"):
        HttpExplainer(f"http://127.0.0.1:{_closed_port()}/v1", "m", 8, timeout_s=5).replies(
            [messages("x")])


# ---------------------------------------------------------------- the paired comparison


def test_paired_comparison_against_numpy():
    rng = np.random.default_rng(3)
    a, b = list(rng.random(25)), list(rng.random(25))
    a[3], b[7] = None, None  # features scored by one explainer only are left out
    b[10] = a[10]  # a tie counts half
    result = paired_comparison(a, b, "own", n_bootstrap=500, seed=1)
    keep = [i for i in range(25) if a[i] is not None and b[i] is not None]
    diff = np.array([a[i] - b[i] for i in keep])
    assert result.n == 23
    assert result.mean_difference == pytest.approx(diff.mean())
    assert result.self_wins == pytest.approx(((diff > 0).sum() + 0.5) / 23)
    draws = np.random.default_rng(1).integers(0, 23, size=(500, 23))
    low, high = np.percentile(diff[draws].mean(axis=1), [2.5, 97.5])
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high))
    assert paired_comparison([None], [0.5], "own").n == 0


# ---------------------------------------------------------------- the stage, from the command line


def _describe_cli(folder, url):
    from conftest import faithcase_cli

    return faithcase_cli("describe", "--config", "tiny.yaml", "--set", f"describe.url={url}",
                         "--set", "describe.model=fake", cwd=folder, timeout=600)


@pytest.mark.parametrize("endpoint", ["500"], indirect=True)  # malformed: the unit test above
def test_endpoint_failure_exits_2_and_leaves_describe_json_alone(copy_of_tiny_run, endpoint):
    folder, out = copy_of_tiny_run
    before = (out / "describe.json").read_bytes()
    done = _describe_cli(folder, endpoint.url)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).strip().splitlines()
             if "is up to date" not in line]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert (out / "describe.json").read_bytes() == before
    assert not list(out.glob("*.tmp*"))


def test_run_with_an_endpoint_explains_from_it(copy_of_tiny_run, endpoint):
    folder, out = copy_of_tiny_run
    done = _describe_cli(folder, endpoint.url)
    assert done.returncode == 0, done.stdout + done.stderr
    artifact = json.loads((out / "describe.json").read_text())
    entries = [e for group in artifact["features"].values() for e in group.values() if e["shown"]]
    assert entries and len(endpoint.requests) == len(entries)
    for e in entries:
        assert e["explanation"] == f"{len(e['prompt'])} chars"
    assert artifact["prefill"] is None and "127.0.0.1" in artifact["explainer"]


def test_a_copied_few_shot_answer_is_uninformative():
    found, _ = _collected(d=3)

    class Copies:
        def replies(self, chats, anchor=(), progress=None):
            return ['[EXPLANATION]: The token "x" at the end of a comparative adjective describing '
                    "size.", "[EXPLANATION]: Common idioms.", "[EXPLANATION]: Dates in letters."]

    artifact = _describe(found, [0, 1, 2], Copies())
    flags = [artifact.features["sae1"][str(f)].uninformative for f in (0, 1, 2)]
    assert flags == ["copies few-shot example 2", None, None]  # two words only: not a copy
