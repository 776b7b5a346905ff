"""humpback_lite: instruction backtranslation (Humpback) self-alignment on one workstation."""

__version__ = "0.1.0"
