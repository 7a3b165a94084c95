"""Provenance for results files (torch-free): the repository commit a result was produced from and the machine."""

from __future__ import annotations

import os
import platform
import subprocess

from scoter.paths import REPO_ROOT

__all__ = ["git_commit", "machine"]


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


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows: speeds differ by CPU family (e.g.
    bfloat16 is native on some and emulated on others), so results name it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str | None = None) -> str:
    """`SCOTER_MACHINE` when set, else the CPU and its core count; `device` (e.g. a GPU's name) is appended."""
    label = os.environ.get("SCOTER_MACHINE") or f"{cpu_model()}, {os.cpu_count()} CPUs"
    return f"{label}; {device}" if device else label
