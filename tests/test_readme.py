"""The README's notebook example runs as it is written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def notebook_example() -> str:
    section = README.read_text().split("## From a notebook", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_notebook_example_runs(capsys):
    code = notebook_example()
    assert len([line for line in code.strip().splitlines() if line.strip()]) <= 12
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    best = namespace["best"]
    assert out.startswith(f"{best.index1}: ") and "AUROC 0." in out
    assert best.similarity == max(namespace["m"].assignment.similarity)
    windows = namespace["w"].features[str(best.index1)]
    assert len(windows.windows["max"]) == 10 and windows.stats.n_active == namespace["s"].firing["sae1"][best.index1]
    assert namespace["e"].null is not None and namespace["score"].auroc is not None
