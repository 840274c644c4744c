"""The stage computations: plain functions over tensors and pydantic artifacts, one module per
stage."""
