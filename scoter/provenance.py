"""Provenance for results files (torch-free): the repository commit a result was produced from."""

from __future__ import annotations

import subprocess

from scoter.paths import REPO_ROOT

__all__ = ["git_commit"]


def git_commit() -> str:
    """HEAD commit of the repository, suffixed '-dirty' when the working tree has changes; 'unknown' without git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
