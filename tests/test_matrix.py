"""faithcase matrix: many SAEs in one config, every pair matched (against FaithfulSAE's
feat_match.py computation with scipy) and compared on one corpus pass (against brute force from
the encoded activations); bad input is one line and exit 2."""

from __future__ import annotations

import itertools
import json
import shutil

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

from conftest import TINY_CONFIG, faithcase_cli
from test_scan import D_IN, D_SAE, K, batches, corpus

BUNDLE = "pkg:faithcase/demo/bundle"


def related_sae(base: torch.Tensor, noise: float, seed: int, hook: str = "blocks.3.hook_resid_pre"):
    """A TopK SAE whose decoder is `base` permuted and perturbed: matched cosines spread over
    [0, 1] as noise grows."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(D_SAE, generator=g)
    W_dec = torch.nn.functional.normalize(base[perm] + noise * torch.randn(D_SAE, D_IN, generator=g), dim=-1)
    return SAE(W_enc=W_dec.T.contiguous(), b_enc=torch.zeros(D_SAE), W_dec=W_dec, b_dec=torch.zeros(D_IN),
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
    shared = []
    for a, b in itertools.combinations(result.order, 2):
        pair = result.pair(a, b)
        rows, cols, ratio, top1_ab, top1_ba = feat_match(saes[a].W_dec.double().numpy(),
                                                         saes[b].W_dec.double().numpy(), 0.7)
        assert pair.shared_ratio == pytest.approx(ratio, abs=1e-12)
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
    assert len(set(shared)) > 1 and max(shared) > 0  # the decoders spread over the threshold
    assert all(result.tables["shared_ratio"][i][i] is None for i in range(4))
    groups = {g.group: g for g in result.groups}
    assert list(groups) == ["within faithful", "within web", "cross-dataset"]
    assert groups["within faithful"].n_pairs == 1 and groups["cross-dataset"].n_pairs == 4
    cross = [p for p in result.pairs if p.group == "cross-dataset"]
    assert groups["cross-dataset"].shared_ratio == pytest.approx(np.mean([p.shared_ratio for p in cross]))
    assert groups["within faithful"].shared_ratio > groups["within web"].shared_ratio


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


@pytest.mark.timeout(900)
def test_faithcase_matrix_on_the_demos_four_saes(tmp_path):
    """The command prints and saves the 4 x 4 tables; every shared and top-1 ratio is feat_match.py's
    (scipy) on the same decoders."""
    from faithcase.saes import load_sae

    _tiny_many(tmp_path, DEMO_FOUR, run_name="four")
    done = faithcase_cli("matrix", "--config", "many.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / "outputs" / "four"
    result = MatrixArtifact.model_validate_json((folder / MATRIX_FILE).read_text())
    assert result.order == ["external_42", "external_49", "faithful_42", "faithful_49"]
    for name in ("shared_ratio", "top1_ratio", "mean_similarity", "mean_pearson", "mean_jaccard", "share_pearson"):
        assert (folder / f"matrix_{name}.png").read_bytes()[:4] == b"\x89PNG"
        table = result.tables[name]
        assert len(table) == 4 and all(len(row) == 4 and row[i] is None for i, row in enumerate(table))
    printed = " ".join(done.stdout.split())
    assert "shared_ratio:" in printed and "seed stability by dataset" in printed and "cross-dataset" in printed
    decoders = {name: load_sae(resolve_path(entry["path"])).W_dec.float().numpy()
                for name, entry in DEMO_FOUR.items()}
    for pair in result.pairs:
        _, _, ratio, top1_ab, top1_ba = feat_match(decoders[pair.a], decoders[pair.b], 0.7)
        assert (pair.shared_ratio, pair.top1_ratio_ab, pair.top1_ratio_ba) == pytest.approx(
            (ratio, top1_ab, top1_ba), abs=1e-12), (pair.a, pair.b)
        assert pair.certified and pair.n_matched == 4608
        assert f"{pair.shared_ratio:.3f}" in printed
