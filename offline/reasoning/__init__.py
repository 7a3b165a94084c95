"""Reasoning pipeline (paper sections 3.2-3.3.1): LLM backends, Generate-Validate-Mine, structured
distillation into students, K x D step embeddings, and publishing them to the reasoning store."""
