"""faithcase matrix: many SAEs in one config, every pair matched (against FaithfulSAE's
feat_match.py computation with scipy, and Paulo & Belrose's encoder + decoder one) and compared on
one corpus pass (against brute force from the encoded activations); in how many of the others
each latent has a shared partner (against a brute-force count); bad input is one line, exit 2."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from scipy.optimize import linear_sum_assignment

from typer.testing import CliRunner

from faithcase.cli import app
from faithcase.config import MatchConfig, MatrixConfig, load_config
from faithcase.matrix_artifacts import MATRIX_FILE, MatrixArtifact
from faithcase.numerics.outliers import counted_positions
from faithcase.run.errors import FaithcaseError
from faithcase.run.paths import resolve_path
from faithcase.saes import SAE
from faithcase.stages.matrix import matrix, matrix_order

from conftest import TINY_CONFIG
from overlap_reference import sae_overlap
from toy_saes import D_IN, D_SAE, K, batches, corpus

BUNDLE = "pkg:faithcase/demo/bundle"


def related_sae(base: torch.Tensor, noise: float, seed: int, hook: str = "blocks.3.hook_resid_pre"):
    """A TopK SAE whose decoder is `base` permuted and perturbed: matched cosines spread over
    [0, 1] as noise grows; its encoder likewise, with its own (larger) noise."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(D_SAE, generator=g)
    W_dec = torch.nn.functional.normalize(base[perm] + noise * torch.randn(D_SAE, D_IN, generator=g), dim=-1)
    W_enc = base[perm] + 1.3 * noise * torch.randn(D_SAE, D_IN, generator=g)
    return SAE(W_enc=W_enc.T.contiguous(), b_enc=torch.zeros(D_SAE), W_dec=W_dec, b_dec=torch.zeros(D_IN),
               activation="topk", k=K, hook_name=hook)


@pytest.fixture(scope="module")
def four_saes():
    base = torch.randn(D_SAE, D_IN, generator=torch.Generator().manual_seed(0))
    saes = {"web_49": related_sae(base, 0.9, 4), "faithful_42": related_sae(base, 0.3, 1),
            "faithful_49": related_sae(base, 0.35, 2), "web_42": related_sae(base, 0.8, 3)}
    metadata = {"web_49": (49, "web"), "faithful_42": (42, "faithful"), "faithful_49": (49, "faithful"),
                "web_42": (42, "web")}
    return saes, metadata


def feat_match(W1: np.ndarray, W2: np.ndarray, threshold: float):
    """FaithfulSAE's scripts/feat_match.py: normalized rows, Hungarian on -cos, shared ratio, top-1."""
    A = W1 / np.linalg.norm(W1, axis=1, keepdims=True)
    B = W2 / np.linalg.norm(W2, axis=1, keepdims=True)
    cos = A @ B.T
    rows, cols = linear_sum_assignment(-cos)
    return rows, cols, float((cos[rows, cols] > threshold).mean()), float((cos.max(0) > threshold).mean()), \
        float((cos.max(1) > threshold).mean())


def test_matrix_against_feat_match_and_brute_force_agreement(four_saes):
    saes, metadata = four_saes
    resid, tokens, excluded = corpus(n_seq=10, length=9)
    result = matrix(saes, batches(resid, tokens, excluded, [3, 3, 4]), metadata,
                    MatrixConfig(pearson_cutoff=0.5), MatchConfig(threshold=0.7))
    assert result.order == ["faithful_42", "faithful_49", "web_42", "web_49"]  # dataset, then seed
    kept = resid[counted_positions(excluded, tokens.shape)].float()
    acts = {name: sae.encode(kept).double().numpy() for name, sae in saes.items()}
    shared, both = [], []
    for a, b in itertools.combinations(result.order, 2):
        pair = result.pair(a, b)
        rows, cols, ratio, top1_ab, top1_ba = feat_match(saes[a].W_dec.double().numpy(),
                                                         saes[b].W_dec.double().numpy(), 0.7)
        assert pair.shared_ratio == pytest.approx(ratio, abs=1e-12)
        second = sae_overlap(*(saes[n].W_enc.T.double().numpy() for n in (a, b)),
                             *(saes[n].W_dec.double().numpy() for n in (a, b)))
        assert (pair.paulo_belrose, pair.agreement) == pytest.approx(
            (second["paulo_belrose"], second["agreement"]), abs=1e-12)
        assert pair.encoder_certified and pair.encoder_reason is None
        both.append(pair.paulo_belrose)
        assert (pair.top1_ratio_ab, pair.top1_ratio_ba) == pytest.approx((top1_ab, top1_ba), abs=1e-12)
        shared.append(ratio)
        pearsons, jaccards = [], []
        for f1, f2 in zip(rows, cols):
            x, y = acts[a][:, f1], acts[b][:, f2]
            if x.std() > 0 and y.std() > 0:
                pearsons.append(np.corrcoef(x, y)[0, 1])
            if ((x > 0) | (y > 0)).any():
                jaccards.append(((x > 0) & (y > 0)).sum() / ((x > 0) | (y > 0)).sum())
        assert pair.n_pearson == len(pearsons) and pair.n_jaccard == len(jaccards)
        assert pair.mean_pearson == pytest.approx(np.mean(pearsons), abs=1e-9)
        assert pair.mean_jaccard == pytest.approx(np.mean(jaccards), abs=1e-12)
        assert pair.share_pearson == pytest.approx(np.mean(np.array(pearsons) > 0.5), abs=1e-12)
        i, j = result.order.index(a), result.order.index(b)
        assert result.tables["shared_ratio"][i][j] == result.tables["shared_ratio"][j][i] == pair.shared_ratio
        assert result.tables["top1_ratio"][i][j] == pair.top1_ratio_ab  # column b's features
        assert result.tables["top1_ratio"][j][i] == pair.top1_ratio_ba
        assert result.tables["paulo_belrose"][j][i] == pair.paulo_belrose
        assert result.tables["agreement"][i][j] == pair.agreement
    assert len(set(shared)) > 1 and max(shared) > 0  # the decoders spread over the threshold
    assert all(p <= s for p, s in zip(both, shared)) and 0 < sum(both) < sum(shared)
    assert all(result.tables["shared_ratio"][i][i] is None for i in range(4))
    groups = {g.group: g for g in result.groups}
    assert list(groups) == ["within faithful", "within web", "cross-dataset"]
    assert groups["within faithful"].n_pairs == 1 and groups["cross-dataset"].n_pairs == 4
    cross = [p for p in result.pairs if p.group == "cross-dataset"]
    assert groups["cross-dataset"].shared_ratio == pytest.approx(np.mean([p.shared_ratio for p in cross]))
    assert groups["within faithful"].shared_ratio > groups["within web"].shared_ratio
    assert groups["cross-dataset"].paulo_belrose == pytest.approx(np.mean([p.paulo_belrose for p in cross]))


def brute_force_overlap(saes: dict, threshold: float = 0.7) -> dict[str, dict[str, list[int]]]:
    """Per SAE and definition: its latents by the number of other SAEs where scipy's assignments
    (decoder; encoder and decoder) give it a shared partner, counted one latent at a time."""
    found = {d: {} for d in ("faithfulsae", "paulo_belrose")}
    for s in saes:
        counts = {d: [0] * D_SAE for d in found}
        for t in saes:
            if t == s:
                continue
            _, dec_cols, *_ = feat_match(saes[s].W_dec.double().numpy(), saes[t].W_dec.double().numpy(), threshold)
            _, enc_cols, *_ = feat_match(saes[s].W_enc.T.double().numpy(), saes[t].W_enc.T.double().numpy(),
                                         threshold)
            dec = torch.nn.functional.normalize(saes[s].W_dec.double(), dim=-1) @ \
                torch.nn.functional.normalize(saes[t].W_dec.double(), dim=-1).T
            enc = torch.nn.functional.normalize(saes[s].W_enc.T.double(), dim=-1) @ \
                torch.nn.functional.normalize(saes[t].W_enc.T.double(), dim=-1).T
            for i in range(D_SAE):
                j, e = dec_cols[i], enc_cols[i]
                counts["faithfulsae"][i] += bool(dec[i, j] > threshold)
                counts["paulo_belrose"][i] += bool(e == j and dec[i, j] > threshold and enc[i, e] > threshold)
        for d in found:
            found[d][s] = [counts[d].count(k) for k in range(len(saes))]
    return found


def test_in_how_many_others_a_latent_is_shared_against_brute_force(four_saes, capsys):
    from faithcase.render.plots import overlap_histogram
    from faithcase.stages.matrix import print_matrix

    saes, metadata = four_saes
    resid, tokens, excluded = corpus()
    result = matrix(saes, batches(resid, tokens, excluded, [6]), metadata)
    expected = brute_force_overlap(saes)
    overlap = result.overlap
    assert overlap.n_others == 3 and [e.name for e in overlap.saes] == result.order
    for entry in overlap.saes:
        assert entry.n_latents == D_SAE
        assert entry.faithfulsae == expected["faithfulsae"][entry.name]
        assert entry.paulo_belrose == expected["paulo_belrose"][entry.name]
    for d in ("faithfulsae", "paulo_belrose"):
        assert overlap.total[d] == [sum(expected[d][n][k] for n in saes) for k in range(4)]
        assert sum(1 for k in range(4) if overlap.total[d][k]) >= 3  # spread over the bins
    assert overlap.total["faithfulsae"][0] < overlap.total["paulo_belrose"][0]
    print_matrix(result)
    printed = " ".join(capsys.readouterr().out.split())
    assert "in how many of the other 3 SAEs a latent has a shared partner" in printed
    assert overlap_histogram(overlap)[:4] == b"\x89PNG"


def test_an_sae_without_encoder_directions_gives_the_decoder_definition_only(four_saes, capsys):
    from dataclasses import replace

    from faithcase.render.plots import overlap_histogram
    from faithcase.stages.matrix import print_matrix

    saes, metadata = four_saes
    blank = replace(saes["web_42"], W_enc=torch.zeros(D_IN, D_SAE))
    resid, tokens, excluded = corpus()
    result = matrix({"a": saes["faithful_42"], "b": saes["faithful_49"], "blank": blank},
                    batches(resid, tokens, excluded, [6]))
    assert result.pair("a", "b").paulo_belrose is not None
    for other in ("a", "b"):
        pair = result.pair(other, "blank")
        assert (pair.paulo_belrose, pair.agreement) == (None, None) and pair.shared_ratio > 0
        assert pair.encoder_reason == "blank: every encoder direction is zero or non-finite"
    assert result.overlap.total["paulo_belrose"] is None and result.overlap.saes[0].paulo_belrose is None
    assert "blank: every encoder direction" in result.overlap.encoder_reason
    print_matrix(result)
    assert "decoder definition only: blank: every encoder direction" in " ".join(capsys.readouterr().out.split())
    assert overlap_histogram(result.overlap)[:4] == b"\x89PNG"


def test_matrix_errors(four_saes):
    saes, _ = four_saes
    resid, tokens, excluded = corpus()
    with pytest.raises(FaithcaseError, match="at least two SAEs"):
        matrix({"one": saes["web_42"]}, batches(resid, tokens, excluded, [6]))
    base = torch.randn(D_SAE, D_IN, generator=torch.Generator().manual_seed(9))
    other = {"a": saes["web_42"], "b": related_sae(base, 0.1, 0, hook="blocks.5.hook_resid_pre")}
    with pytest.raises(FaithcaseError, match="different hooks: a reads blocks.3.hook_resid_pre, b reads blocks.5"):
        matrix(other, batches(resid, tokens, excluded, [6]))


def test_matrix_order_puts_unlabelled_saes_last():
    assert matrix_order({"z": (None, None), "b": (49, "x"), "a": (7, "x"), "c": (1, "w")}) == ["c", "a", "b", "z"]


# ---------------------------------------------------------------- config


def _config(tmp_path, **data):
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


SAES = {"s42": {"path": f"{BUNDLE}/sae_seed42", "seed": 42, "dataset": "faithful"},
        "s49": {"path": f"{BUNDLE}/sae_seed49", "seed": 49, "dataset": "faithful"}}


def test_saes_mapping_names_the_pair_and_the_studies(tmp_path):
    corpus_section = {"source": "x.txt"}
    cfg = load_config(_config(tmp_path, saes=SAES, corpus=corpus_section))
    assert cfg.sae1.path.endswith("sae_seed42") and cfg.sae2.path.endswith("sae_seed49")  # two: the pair
    three = {**SAES, "e42": {"path": "e42", "seed": 42, "dataset": "external"}}
    cfg = load_config(_config(tmp_path, saes=three, sae1="e42", sae2="s49", corpus=corpus_section,
                              studies=[["s42", "s49"], ["e42", "s49"]]))
    assert cfg.sae1.path == "e42" and cfg.matrix_names() == ["s42", "s49", "e42"]
    study = cfg.for_study("e42", "s49")
    assert study.sae1.path == "e42" and study.saes is None and study.output_dir().name == "e42__s49"
    with pytest.raises(FaithcaseError, match="studies: the pair \\[s42, nope\\] names 'nope', which is not in saes"):
        load_config(_config(tmp_path, saes=three, corpus=corpus_section, studies=[["s42", "nope"]]))
    with pytest.raises(FaithcaseError, match="sae1 names 'nope'"):
        load_config(_config(tmp_path, saes=three, sae1="nope", corpus=corpus_section))
    with pytest.raises(FaithcaseError, match="names one SAE twice"):
        load_config(_config(tmp_path, saes=three, corpus=corpus_section, studies=[["s42", "s42"]]))
    with pytest.raises(FaithcaseError, match="this config has 3 saes: name the pair"):
        load_config(_config(tmp_path, saes=three, corpus=corpus_section)).sae_config("sae1")


# ---------------------------------------------------------------- the command


def _tiny_many(tmp_path, saes: dict, **extra) -> None:
    data = yaml.safe_load(TINY_CONFIG)
    del data["sae1"], data["sae2"]
    data["corpus"]["max_tokens"] = 3000
    (tmp_path / "many.yaml").write_text(yaml.safe_dump({**data, "saes": saes, **extra}))


def _nothing_written(folder) -> bool:
    return not folder.exists() or not any(p.suffix in (".json", ".png") for p in folder.rglob("*"))


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    shifted = tmp_path / "sae_layer6"
    shutil.copytree(resolve_path(f"{BUNDLE}/sae_seed49"), shifted)
    cfg = json.loads((shifted / "cfg.json").read_text())
    cfg["metadata"] |= {"hook_name": "blocks.6.hook_resid_pre", "hook_layer": 6}
    (shifted / "cfg.json").write_text(json.dumps(cfg))
    # `run` on one SAE: "the config gives no sae1; this config has 1 SAE in saes: a case study needs two"
    cases = {"hooks": ({"s42": SAES["s42"], "shifted": {"path": str(shifted)}}, {},
                       "the SAEs read different hooks"),
             "one": ({"s42": SAES["s42"]}, {}, "the config gives 1"),
             "unknown": (SAES, {"studies": [["s42", "s50"]]}, "names 's50', which is not in saes")}
    for name, (saes, extra, message) in cases.items():
        _tiny_many(tmp_path, saes, run_name=name, **extra)
        for command in ("matrix", "run"):
            out = tmp_path / "outputs" / name
            done = CliRunner().invoke(app, [command, "--config", str(tmp_path / "many.yaml"), "--out-dir", str(out)])
            assert done.exit_code == 2, (name, command, done.output[-2000:])
            lines = [line for line in done.output.splitlines() if line.strip()]
            said = " ".join(done.output.split())
            assert (message in said or (name == "one" and "has 1 SAE in saes" in said)) \
                and lines[-1].startswith("error:"), done.output
            assert "Traceback" not in done.output and (name != "hooks" or "reads blocks.6.hook_resid_pre" in said)
            assert _nothing_written(out)


DEMO_FOUR = {"faithful_42": {"path": f"{BUNDLE}/sae_seed42", "seed": 42, "dataset": "faithful"},
             "faithful_49": {"path": f"{BUNDLE}/sae_seed49", "seed": 49, "dataset": "faithful"},
             "external_42": {"path": f"{BUNDLE}/sae_external_seed42", "seed": 42, "dataset": "external"},
             "external_49": {"path": f"{BUNDLE}/sae_external_seed49", "seed": 49, "dataset": "external"}}


def start_cli(*args, cwd) -> subprocess.Popen:
    """`faithcase ARGS` started in a subprocess (offline), left to run while the test computes."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "faithcase.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(900)
def test_faithcase_matrix_on_the_demos_four_saes(tmp_path):
    """The command prints and saves the 4 x 4 tables; every shared and top-1 ratio is feat_match.py's
    (scipy) on the same decoders, and the faithful pair's encoder + decoder numbers sae_overlap's.
    The references are computed while the command runs."""
    from faithcase.saes import load_sae

    _tiny_many(tmp_path, DEMO_FOUR, run_name="four", match={"encoder": True})
    command = start_cli("matrix", "--config", "many.yaml", cwd=tmp_path)
    try:
        order = ["external_42", "external_49", "faithful_42", "faithful_49"]
        saes = {name: load_sae(resolve_path(DEMO_FOUR[name]["path"])) for name in order}
        decoders = {name: sae.W_dec.float().numpy() for name, sae in saes.items()}
        expected = {(a, b): feat_match(decoders[a], decoders[b], 0.7)[2:]
                    for a, b in itertools.combinations(order, 2)}
        faithful = ("faithful_42", "faithful_49")
        second = sae_overlap(*(saes[n].W_enc.T.double().numpy() for n in faithful),
                             *(saes[n].W_dec.double().numpy() for n in faithful))  # the second paper's
        stdout, stderr = command.communicate(timeout=900)
    finally:
        command.kill()
    assert command.returncode == 0, stderr[-3000:]
    folder = tmp_path / "outputs" / "four"
    result = MatrixArtifact.model_validate_json((folder / MATRIX_FILE).read_text())
    assert result.order == order
    for name in ("shared_ratio", "paulo_belrose", "agreement", "top1_ratio", "mean_similarity", "mean_pearson",
                 "mean_jaccard", "share_pearson", "overlap"):
        assert (folder / f"matrix_{name}.png").read_bytes()[:4] == b"\x89PNG"
        if name == "overlap":
            continue
        table = result.tables[name]
        assert len(table) == 4 and all(len(row) == 4 and row[i] is None for i, row in enumerate(table))
    printed = " ".join(stdout.split())
    assert "shared_ratio:" in printed and "seed stability by dataset" in printed and "cross-dataset" in printed
    assert "paulo_belrose:" in printed and "in how many of the other 3 SAEs" in printed
    for pair in result.pairs:
        assert (pair.shared_ratio, pair.top1_ratio_ab, pair.top1_ratio_ba) == pytest.approx(
            expected[(pair.a, pair.b)], abs=1e-12), (pair.a, pair.b)
        assert pair.certified and pair.n_matched == 4608 and pair.encoder_certified
        assert f"{pair.shared_ratio:.3f}" in printed and f"{pair.paulo_belrose:.3f}" in printed
        assert pair.paulo_belrose <= pair.shared_ratio and 0 < pair.agreement <= 1
    pair = result.pair(*faithful)
    assert (pair.paulo_belrose, pair.agreement) == pytest.approx((second["paulo_belrose"], second["agreement"]),
                                                                 abs=1e-12)
    overlap = {e.name: e for e in result.overlap.saes}
    assert all(sum(e.faithfulsae) == sum(e.paulo_belrose) == e.n_latents == 4608 for e in overlap.values())
