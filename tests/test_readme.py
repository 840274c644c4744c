"""The README's notebook example runs as it is written, and gives the CLI's numbers."""

import re
from pathlib import Path

import faithcase as fc
from faithcase.config import load_config
from faithcase.run.store import read_artifact

README = Path(__file__).resolve().parents[1] / "README.md"


def notebook_example() -> str:
    section = README.read_text().split("## From a notebook", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_notebook_example_gives_the_clis_numbers(tiny_run, capsys, monkeypatch):
    """The example, run on the tiny config of a `faithcase run` (so that both see the same corpus),
    prints a real explanation, AUROC and window text: those of the CLI's artifacts."""
    from faithcase.artifacts import EmbedArtifact, ExplainArtifact, WindowsArtifact

    root, out = tiny_run
    code = notebook_example()
    assert len([line for line in code.strip().splitlines() if line.strip()]) <= 12
    monkeypatch.setattr(fc, "load_config", lambda *a, **k: load_config(str(root / "tiny.yaml")))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    best, w, rt = namespace["best"], namespace["w"], namespace["rt"]
    feature = str(best.index1)
    assert best.similarity == max(namespace["m"].assignment.similarity)

    windows = w.features[feature]
    assert windows.stats.n_active == namespace["s"].firing["sae1"][best.index1]
    sequences = rt.sequences
    for window in windows.windows["max"] + windows.activating:  # texts are the decoded corpus
        ids = sequences[window.seq_id, window.start:window.start + len(window.tokens)].tolist()
        assert window.tokens == ids
        assert window.texts == [rt.lm.tokenizer.decode([i]) for i in ids]
    cli_windows = read_artifact(out / "windows_sae1.json", WindowsArtifact).features[feature]
    assert [x.texts for x in cli_windows.windows["max"]] == [x.texts for x in windows.windows["max"]]

    cli_explain = read_artifact(out / "explain.json", ExplainArtifact).features["sae1"][feature]
    cli_embed = read_artifact(out / "embed.json", EmbedArtifact).features["sae1"][feature]
    assert namespace["text"] == cli_explain.explanations[0]
    assert namespace["score"].auroc == cli_embed.eleuther["sae1"]["self"].auroc is not None
    top = "".join(windows.windows["max"][0].texts)
    assert printed.strip() == (f"{best.index1}: {namespace['text']!r}, AUROC "
                               f"{namespace['score'].auroc:.3f}, top window {top!r}")
