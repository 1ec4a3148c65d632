"""unlearnlm: make a language model forget specific texts, and measure both sides."""

__version__ = "0.1.0"

__all__ = ["unlearn", "UnlearnConfig", "UnlearnError"]


def __getattr__(name: str):
    """Import the heavy parts (torch, transformers) only when used."""
    if name == "unlearn":  # the run, then its quick check (``audit.check``) unless switched off
        from unlearnlm.audit.check import unlearn_and_check

        return unlearn_and_check
    if name == "UnlearnConfig":
        from unlearnlm.settings import UnlearnConfig

        return UnlearnConfig
    if name == "UnlearnError":
        from unlearnlm.errors import UnlearnError

        return UnlearnError
    raise AttributeError(name)
