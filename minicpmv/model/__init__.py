"""The native MiniCPM-V model: vision encoder, resampler and LLM (no tokenizers, sampling or HTTP)."""
