"""Telling torch tensors from numpy arrays without importing torch (it costs ~1 s)."""


def is_torch(x) -> bool:
    """True when ``x`` is a torch tensor (the core's functions take numpy or torch)."""
    return type(x).__module__.startswith("torch")
