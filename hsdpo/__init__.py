"""hsdpo: verifier-guided, hard-negative DPO post-training for small math models on Ray."""

__version__ = "0.1.0"
