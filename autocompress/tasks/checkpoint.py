"""Loading user checkpoints safely (``weights_only=True``) with one-line errors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from autocompress.errors import CheckpointError


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict (or ``{"state_dict": ...}`` / ``{"model": ...}``) into ``model``.

    >>> import tempfile, os
    >>> m = nn.Linear(2, 2); p = os.path.join(tempfile.mkdtemp(), "w.pt")
    >>> torch.save(m.state_dict(), p)
    >>> load_checkpoint(nn.Linear(2, 2), p).weight.shape
    torch.Size([2, 2])
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint {str(p)!r} does not exist; expected a .pt file saved with "
            "torch.save(model.state_dict(), path)"
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {str(p)!r} with torch.load(weights_only=True): {first}; "
            "save it with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {str(p)!r} holds a {type(obj).__name__}, expected a state dict "
            "(name -> tensor); save it with torch.save(model.state_dict(), path)"
        )
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(obj))
    unexpected = sorted(set(obj) - set(own))
    bad_shape = sorted(k for k in set(own) & set(obj) if own[k].shape != obj[k].shape)
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]!r})")
        if bad_shape:
            k = bad_shape[0]
            parts.append(
                f"shape mismatch at {k!r}: model {tuple(own[k].shape)}, "
                f"checkpoint {tuple(obj[k].shape)}"
            )
        raise CheckpointError(
            f"checkpoint {str(p)!r} does not fit the {type(model).__name__} model: "
            + "; ".join(parts)
            + "; pass a checkpoint trained for this architecture"
        )
    model.load_state_dict(obj)
    return model
