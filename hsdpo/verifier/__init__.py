"""The MathVerifier: pure Python (no ray, torch or deepspeed)."""
