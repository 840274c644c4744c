"""A second device without a GPU, for tests: tensors on `meta` stand for tensors on an accelerator.

Under `OtherDevice()`, an op whose tensor arguments mix `meta` and CPU tensors raises, as CUDA
does (0-dim CPU tensors may mix, as on CUDA); explicit copies (`.to`, `.cpu`, `.tolist`, `int()`)
are allowed and read zeros, since a meta tensor holds no data. Ops meta cannot run (data-dependent
shapes: boolean masks, nonzero) run on CPU zeros and come back on meta.
"""

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

OTHER = torch.device("meta")
COPIES = {torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.copy_,
          torch.Tensor.new_tensor, torch.tensor, torch.as_tensor, torch.Tensor.tolist,
          torch.Tensor.item, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__bool__,
          torch.Tensor.__index__, torch.Tensor.numpy}


def _stand_in(value):
    if isinstance(value, torch.Tensor) and value.device == OTHER:
        return torch.zeros(value.shape, dtype=value.dtype)
    return value


def _back(value):
    return value.to(OTHER) if isinstance(value, torch.Tensor) else value


class OtherDevice(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_other = any(t.device == OTHER for t in tensors)
        if not on_other:
            return func(*args, **kwargs)
        if func in COPIES:
            try:
                return func(*args, **kwargs)
            except (NotImplementedError, RuntimeError):  # its data is not here
                return func(*tree_map(_stand_in, args), **tree_map(_stand_in, kwargs))
        mixed = [t for t in tensors if t.device != OTHER and t.dim() > 0]
        if mixed:
            devices = sorted({str(t.device) for t in tensors})
            raise RuntimeError(f"{getattr(func, '__name__', func)}: tensors on {devices} meet")
        try:
            return func(*args, **kwargs)
        except NotImplementedError:  # a data-dependent op: run it on stand-ins
            out = func(*tree_map(_stand_in, args), **tree_map(_stand_in, kwargs))
            return tree_map(_back, out)
