"""SAEs from the Hugging Face hub: a hub cache built in tmp_path (the layout huggingface_hub
reads), real SAEs written into it by each format's writer, and every failure as one line."""

import hashlib
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # sparsify's eager decoder on CPU

import orjson
import pytest
import torch
from huggingface_hub import constants

from faithcase.run.errors import FaithcaseError
from sae_writers import D_IN, D_SAE, WRITERS, write_batchtopk, write_saelens

from faithcase.saes import hub_sae_folder, load_sae

REPO = "owner/name"


def random_decoder(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(D_SAE, D_IN, generator=g), dim=-1)



# Two SAE ids per repo, in each format's naming (nested ids as in SAELens releases).
SAE_IDS = {
    "saelens": ("blocks.3.hook_resid_pre/width_64", "blocks.5.hook_resid_pre/width_64"),
    "sparsify": ("layers.2", "layers.4"),
    "batchtopk": ("faithful_layer3", "faithful_layer5"),
}


def commit_of(repo: str, revision: str) -> str:
    return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()


def snapshot_of(cache: Path, repo: str, revision: str = "main") -> Path:
    return cache / f"models--{repo.replace('/', '--')}" / "snapshots" / commit_of(repo, revision)


def cache_repo(cache: Path, repo: str, folders: dict[str, Path], revision: str = "main") -> Path:
    """Put local folders into the hub cache as `repo` at `revision`, as huggingface_hub stores
    downloads: content-addressed blobs, snapshot symlinks, refs/<revision> = the commit hash."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = snapshot_of(cache, repo, revision)
    for sae_id, source in folders.items():
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            data = file.read_bytes()
            blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / sae_id / file.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    snapshot.mkdir(parents=True, exist_ok=True)
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / revision).write_text(commit_of(repo, revision))  # no newline, as the hub writes it
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache in tmp_path, offline; no token and no reachable endpoint."""
    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    return cache


def go_online(monkeypatch, endpoint: str) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_inputs(n=32, seed=0):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def assert_one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message.strip() == message
    return message


# --- loading from the cache ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_each_format_loads_from_the_cache_like_the_local_folder(tmp_path, hub_cache, fmt):
    ids = SAE_IDS[fmt]
    local = {sae_id: WRITERS[fmt](tmp_path / "local" / f"sae{i}", random_decoder(i)) for i, sae_id in enumerate(ids)}
    snapshot = cache_repo(hub_cache, REPO, local)
    x = random_inputs()
    codes = []
    for sae_id in ids:
        folder = hub_sae_folder(REPO, sae_id)
        assert folder == snapshot / sae_id
        sae, reference = load_sae(folder), load_sae(local[sae_id])
        assert sae.format == reference.format == fmt
        assert torch.equal(sae.encode(x), reference.encode(x))
        codes.append(sae.encode(x))
    assert not torch.equal(codes[0], codes[1])  # each id reaches its own SAE


def test_no_id_gives_the_snapshot_root_and_a_revision_its_own_snapshot(tmp_path, hub_cache):
    main = write_batchtopk(tmp_path / "main", random_decoder(0))
    tagged = write_batchtopk(tmp_path / "tagged", random_decoder(1))
    cache_repo(hub_cache, REPO, {".": main})
    cache_repo(hub_cache, REPO, {".": tagged}, revision="v2")
    x = random_inputs()
    for revision, local in ((None, main), ("v2", tagged)):
        folder = hub_sae_folder(REPO, revision=revision)
        assert folder == snapshot_of(hub_cache, REPO, revision or "main")
        assert torch.equal(load_sae(folder).encode(x), load_sae(local).encode(x))


def test_offline_from_the_environment_even_when_huggingface_hub_was_imported_online(tmp_path, hub_cache, monkeypatch):
    local = write_batchtopk(tmp_path / "local", random_decoder(0))
    snapshot = cache_repo(hub_cache, REPO, {"a": local})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # env HF_HUB_OFFLINE=1 stays set
    assert hub_sae_folder(REPO, "a") == snapshot / "a"
    with pytest.raises(FaithcaseError, match="HF_HUB_OFFLINE=1 is set"):
        hub_sae_folder("owner/other", "a")


# --- failures ------------------------------------------------------------------------------


def test_offline_with_an_empty_cache_says_how_to_download(hub_cache):
    with pytest.raises(FaithcaseError) as err:
        hub_sae_folder(REPO, "blocks.3.hook_resid_pre")
    message = assert_one_line(err)
    assert f"'{REPO}'" in message and "HF_HUB_OFFLINE=1 is set" in message
    assert f"hf download {REPO} --include 'blocks.3.hook_resid_pre/*'" in message


def test_offline_with_an_uncached_revision_names_it(tmp_path, hub_cache):
    cache_repo(hub_cache, REPO, {"a": write_batchtopk(tmp_path / "a", random_decoder(0))})
    with pytest.raises(FaithcaseError) as err:
        hub_sae_folder(REPO, "a", revision="v9")
    message = assert_one_line(err)
    assert "revision 'v9'" in message and f"hf download {REPO} --revision v9 --include 'a/*'" in message


def test_an_unknown_id_lists_the_sae_folders_present(tmp_path, hub_cache):
    local = write_batchtopk(tmp_path / "local", random_decoder(0))
    cache_repo(hub_cache, REPO, {"alpha": local, "beta/gamma": local})
    with pytest.raises(FaithcaseError) as err:
        hub_sae_folder(REPO, "delta")
    message = assert_one_line(err)
    assert "'delta'" in message and f"'{REPO}'" in message
    assert "folders present: alpha, beta/gamma;" in message


def test_the_listing_stops_at_ten_folders(tmp_path, hub_cache):
    local = write_batchtopk(tmp_path / "local", random_decoder(0))
    names = [f"sae{i:02d}" for i in range(12)]
    cache_repo(hub_cache, REPO, {name: local for name in names})
    with pytest.raises(FaithcaseError) as err:
        hub_sae_folder(REPO, "sae99")
    assert f"folders present: {', '.join(names[:10])} (and 2 more)" in assert_one_line(err)


@pytest.mark.parametrize("sae_id", ["../outside", "a/../../b", "layers.*"])
def test_an_id_outside_the_repo_or_a_pattern_is_refused(hub_cache, sae_id):
    with pytest.raises(FaithcaseError, match="plain folder path"):
        hub_sae_folder(REPO, sae_id)


def test_an_invalid_repo_id(hub_cache):
    with pytest.raises(FaithcaseError) as err:
        hub_sae_folder("a/b/c", "x")
    assert assert_one_line(err).startswith("invalid hub repo id 'a/b/c': Repo id must be in the form")


def test_an_unreachable_hub_with_an_empty_cache(hub_cache, monkeypatch):
    go_online(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(FaithcaseError) as err:
        hub_sae_folder(REPO, "a")
    message = assert_one_line(err)
    assert "cannot reach the Hugging Face hub" in message and "ConnectError" in message


def test_an_unreachable_hub_falls_back_to_the_cache(tmp_path, hub_cache, monkeypatch):
    local = write_batchtopk(tmp_path / "local", random_decoder(0))
    snapshot = cache_repo(hub_cache, REPO, {"a": local})
    go_online(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    assert hub_sae_folder(REPO, "a") == snapshot / "a"


# --- a fake hub on localhost: answers the API calls snapshot_download makes -------------------


class FakeHub:
    """Routes: path → (status, headers, JSON body); anything else is a 404 RepoNotFound."""

    def __init__(self):
        self.routes: dict[str, tuple[int, dict, object]] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                status, headers, body = routes.get(path, (404, {"X-Error-Code": "RepoNotFound"}, {"error": "nope"}))
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake_hub(hub_cache, monkeypatch):
    hub = FakeHub()
    go_online(monkeypatch, hub.url)
    yield hub
    hub.server.shutdown()
    hub.server.server_close()


def test_an_unknown_repo_online(fake_hub):
    with pytest.raises(FaithcaseError) as err:
        hub_sae_folder("owner/missing", "a")
    message = assert_one_line(err)
    assert "'owner/missing' not found on the Hugging Face hub" in message


def test_an_unknown_revision_online(fake_hub):
    fake_hub.routes[f"/api/models/{REPO}/revision/v9"] = (404, {"X-Error-Code": "RevisionNotFound"}, {"error": "x"})
    with pytest.raises(FaithcaseError) as err:
        hub_sae_folder(REPO, "a", revision="v9")
    assert "revision 'v9' not found in hub repo 'owner/name'" in assert_one_line(err)


def test_a_gated_repo_online(fake_hub):
    fake_hub.routes[f"/api/models/{REPO}/revision/main"] = (403, {"X-Error-Code": "GatedRepo"}, {"error": "x"})
    with pytest.raises(FaithcaseError) as err:
        hub_sae_folder(REPO, "a")
    assert "is gated" in assert_one_line(err)


def test_an_unknown_id_online_lists_the_repo_folders_from_the_hub(fake_hub, hub_cache):
    commit = commit_of(REPO, "main")
    files = ["README.md", "layers.0/cfg.json", "layers.0/sae.safetensors", "layers.1/cfg.json",
             "layers.1/sae.safetensors"]
    fake_hub.routes[f"/api/models/{REPO}/revision/main"] = (200, {}, {"id": REPO, "sha": commit})
    fake_hub.routes[f"/api/models/{REPO}/tree/{commit}"] = (
        200, {}, [{"type": "file", "path": f, "size": 1, "oid": "0" * 40} for f in files])
    with pytest.raises(FaithcaseError) as err:
        hub_sae_folder(REPO, "layers.7")
    message = assert_one_line(err)
    assert "no SAE folder 'layers.7' in hub repo 'owner/name'; folders present: layers.0, layers.1" in message
    assert not snapshot_of(hub_cache, REPO).exists()  # nothing downloaded: the listing came from the hub


# ---------------------------------------------------------------- through the config and the CLI


def test_config_hub_entries_run_the_match_stage_offline(tmp_path, hub_cache):
    from typer.testing import CliRunner

    from faithcase.cli import app

    W1, W2 = random_decoder(1), random_decoder(2)
    cache_repo(hub_cache, "owner/saes", {"seed42": write_batchtopk(tmp_path / "a", W1),
                                         "seed49": write_saelens(tmp_path / "b", W2)})
    config = tmp_path / "hub.yaml"
    config.write_text("run_name: t\nhook: blocks.3.hook_resid_pre\nsae1: {hf: owner/saes, id: seed42}\n"
                      "sae2: {hf: owner/saes, id: seed49}\ncorpus: {source: corpus.txt}\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["match", "-c", str(config), "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    match = orjson.loads((out / "match.json").read_bytes())
    assert (match["sae1"]["format"], match["sae2"]["format"]) == ("batchtopk", "saelens")
    assert match["sae1"]["path"] == str(snapshot_of(hub_cache, "owner/saes") / "seed42")
    missing = tmp_path / "missing.yaml"
    missing.write_text(config.read_text().replace("id: seed49", "id: seed77"))
    result = CliRunner().invoke(app, ["match", "-c", str(missing), "--out-dir", str(out)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "seed77" in result.output
    assert "seed42" in result.output  # the ids the cached repo holds
