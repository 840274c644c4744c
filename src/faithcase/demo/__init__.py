"""The embedded demo bundle (a corpus sampled from the demo model and two TopK SAEs on it) and
the code that rebuilds it: `sampling` (corpus from BOS), `train` (TopK SAE trainer),
`build` (the staged, resumable bundle build; `faithcase demo build`)."""

from pathlib import Path

BUNDLE_DIR = Path(__file__).resolve().parent / "bundle"
MANIFEST_FILE = "manifest.json"
