"""The embedded demo bundle: a corpus sampled from the demo model and two TopK SAEs trained on it.
The code that rebuilds it is `faithcase.tools.demo` (`faithcase demo build`)."""

from pathlib import Path

BUNDLE_DIR = Path(__file__).resolve().parent / "bundle"
MANIFEST_FILE = "manifest.json"
