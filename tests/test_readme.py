"""The README's notebook example runs as it is written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def notebook_example() -> str:
    section = README.read_text().split("## From a notebook", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_notebook_example_runs(capsys):
    code = notebook_example()
    assert len(code.strip().splitlines()) <= 12
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert out.startswith(f"feature {namespace['feature']}: ") and "AUROC 0." in out
    windows = namespace["w"].features[str(namespace["feature"])]
    assert len(windows.windows["max"]) == 10 and namespace["score"].n_activating > 0
