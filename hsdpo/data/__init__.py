"""Problem sources (GSM8K, MATH, MetaMathQA, synthetic) and the `data` stage (hsdpo.data.stage)."""
