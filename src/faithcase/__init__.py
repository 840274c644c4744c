"""faithcase: do matched features of two SAEs mean the same thing?

The stage computations are public functions that take in-memory objects and return the pydantic
artifacts; the CLI stages wrap the same functions with caching and files:

    import faithcase as fc
    cfg = fc.load_config()                       # the embedded demo, or a YAML path
    rt = fc.Runtime(cfg)                         # model, SAEs, corpus and embedder, loaded lazily
    m = fc.match(rt.sae("sae1"), rt.sae("sae2"), cfg.match)
    ...                                          # the README's "From a notebook" has the rest
"""

__version__ = "0.1.0"

_API = {
    "load_config": "faithcase.config",
    "Runtime": "faithcase.run.runtime",
    "match": "faithcase.stages.match",
    "scan": "faithcase.stages.scan",
    "select_pairs": "faithcase.stages.pairs",
    "explain": "faithcase.stages.explain",
    "describe": "faithcase.stages.describe",
    "top_activated_windows": "faithcase.stages.windows",
    "eleuther": "faithcase.stages.embed",
    "assemble": "faithcase.stages.assemble",
    "matrix": "faithcase.stages.matrix",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    """Import the public functions on first use: `import faithcase` stays fast."""
    if name not in _API:
        raise AttributeError(f"module 'faithcase' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value
