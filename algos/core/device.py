"""Where tensors live: cuda when present, else cpu; always overridable."""
import torch


def pick_device(request: str = "auto") -> torch.device:
    """`auto` picks cuda if available, else cpu; `cpu`, `cuda`, `cuda:1` are taken as given."""
    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(request)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={request!r} was requested but CUDA is not available; use device=auto or cpu")
    return device
