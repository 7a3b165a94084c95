"""Orchestration across stages: the end-to-end demo and re-evaluating any saved checkpoint."""
