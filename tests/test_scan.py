"""The scan: load check (FVU, L0) and activation agreement of every matched pair, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faithcase.artifacts import Assignment
from faithcase.config import ScanConfig
from faithcase.run.errors import FaithcaseError
from faithcase.numerics.outliers import counted_positions
from faithcase.model.hooks import same_site
from faithcase.stages.scan import load_warnings, scan

from toy_saes import D_IN, D_SAE, K, batches, corpus, topk_sae  # noqa: F401 - test_matrix imports these from here


@pytest.fixture
def case():
    saes = {"sae1": topk_sae(1), "sae2": topk_sae(2)}
    perm = torch.randperm(D_SAE, generator=torch.Generator().manual_seed(3))
    assignment = Assignment(index1=list(range(D_SAE)), index2=perm.tolist(), similarity=[0.5] * D_SAE)
    return saes, assignment, corpus()


def test_agreement_and_quality_equal_a_brute_force_computation(case):
    saes, assignment, (resid, tokens, excluded) = case
    result = scan(saes, assignment, batches(resid, tokens, excluded, [2, 3, 1]))
    kept = resid[counted_positions(excluded, tokens.shape)].double()
    assert result.n_tokens == len(kept) == 6 * 8 - 2 and result.n_sequences == 6
    acts = {key: sae.encode(kept.float()).double().numpy() for key, sae in saes.items()}
    x = kept.numpy()
    for key, sae in saes.items():
        recon = sae.decode(torch.from_numpy(acts[key]).float(), kept.float()).double().numpy()
        fvu = ((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert result.quality[key].fvu == pytest.approx(fvu, rel=1e-6)
        assert result.quality[key].l0 == pytest.approx((acts[key] > 0).sum(1).mean()) and result.quality[key].k == K
        assert result.firing[key] == (acts[key] > 0).sum(0).tolist()
        assert result.quality[key].n_silent == int(((acts[key] > 0).sum(0) == 0).sum())
    table = result.agreement
    for i, (f1, f2) in enumerate(zip(assignment.index1, assignment.index2)):
        a, b = acts["sae1"][:, f1], acts["sae2"][:, f2]
        fires_a, fires_b = a > 0, b > 0
        if a.std() > 0 and b.std() > 0:
            assert table.pearson[i] == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-9)
        else:
            assert table.pearson[i] is None
        either = (fires_a | fires_b).sum()
        assert table.jaccard[i] == (pytest.approx((fires_a & fires_b).sum() / either) if either else None)
        assert table.p2_given_1[i] == (pytest.approx((fires_a & fires_b).sum() / fires_a.sum()) if fires_a.any() else None)
        assert table.p1_given_2[i] == (pytest.approx((fires_a & fires_b).sum() / fires_b.sum()) if fires_b.any() else None)
        assert (table.n1[i], table.n2[i], table.n_both[i]) == (fires_a.sum(), fires_b.sum(), (fires_a & fires_b).sum())
    one_batch = scan(saes, assignment, batches(resid, tokens, excluded, [6]))
    assert one_batch.agreement.n_both == table.n_both
    assert one_batch.agreement.pearson == pytest.approx(table.pearson, abs=1e-9)


def test_identical_features_agree_perfectly_and_a_silent_one_is_undefined():
    sae = topk_sae(1)
    resid, tokens, excluded = corpus()
    silent = sae.W_dec.shape[0] - 1
    assignment = Assignment(index1=[0, 1, silent], index2=[0, 1, silent], similarity=[1.0, 1.0, 1.0])
    sae.b_enc[silent] = -1e4  # never among the top k
    result = scan({"sae1": sae, "sae2": sae}, assignment, batches(resid, tokens, excluded, [6]))
    for i in (0, 1):
        if result.agreement.n1[i]:
            assert result.agreement.pearson[i] == pytest.approx(1.0) and result.agreement.jaccard[i] == 1.0
    assert result.agreement.n1[2] == 0 and result.agreement.pearson[2] is None and result.agreement.jaccard[2] is None
    assert result.firing["sae1"][silent] == 0 and result.quality["sae1"].n_silent >= 1


def test_load_check_flags_a_mis_normalised_sae_and_a_topk_sae_loaded_as_relu():
    resid, tokens, excluded = corpus()
    trained = topk_sae(1)
    good = scan({"sae1": trained, "sae2": trained}, Assignment(index1=[0], index2=[0], similarity=[1.0]),
                batches(resid, tokens, excluded, [6]), ScanConfig(max_fvu=10.0), "blocks.3.hook_resid_pre")
    assert good.quality["sae1"].warnings == []
    mis_normalised = topk_sae(1, input_unit_norm=True)
    mis_normalised.W_dec = mis_normalised.W_dec * 50  # reconstructs in standardized units: far off the raw inputs
    as_relu = topk_sae(1)
    as_relu.activation = "relu"
    settings = ScanConfig(max_fvu=0.5)
    result = scan({"sae1": mis_normalised, "sae2": as_relu}, Assignment(index1=[0], index2=[0], similarity=[1.0]),
                  batches(resid, tokens, excluded, [6]), settings, "blocks.5.hook_resid_pre")
    assert any("FVU" in w for w in result.quality["sae1"].warnings)
    relu = result.quality["sae2"]
    assert relu.k is None and relu.l0 > 0.1 * D_SAE and any("L0" in w for w in relu.warnings)
    assert all("input normalisation" in w and "\n" not in w for q in result.quality.values() for w in q.warnings)
    assert any("trained at blocks.3.hook_resid_pre" in w for w in relu.warnings)  # the hook differs too
    off_k = load_warnings("sae1", topk_sae(1), fvu=0.1, l0=1.0, settings=settings, hook=None)
    assert len(off_k) == 1 and "far from the SAE's k=3" in off_k[0]


def test_same_site_and_empty_corpus():
    assert same_site("blocks.3.hook_resid_post", "blocks.4.hook_resid_pre")
    assert not same_site("blocks.3.hook_resid_pre", "blocks.4.hook_resid_pre")
    sae = topk_sae(1)
    with pytest.raises(FaithcaseError, match="no kept tokens"):
        scan({"sae1": sae, "sae2": sae}, Assignment(index1=[0], index2=[0], similarity=[1.0]), [])
