"""Build-time guard for the serving image: fail the build if torch slipped in or if both ONNX Runtime packages
are installed (they share the `onnxruntime` module and overwrite each other's files).

Run inside the image's venv: `python check_image.py --ort-package onnxruntime`. Standard library only, so it
runs before anything else is trusted. `--path DIR` inspects another site-packages directory instead.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys

FORBIDDEN = ("torch", "transformers", "sentence-transformers", "peft", "accelerate")
ORT_PACKAGES = ("onnxruntime", "onnxruntime-gpu")


def _canonical(name: str) -> str:
    """PEP 503 normalisation, so `Sentence_Transformers` and `sentence-transformers` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(path: list[str] | None = None) -> set[str]:
    """Canonical names of every distribution visible on `path` (default: sys.path)."""
    dists = md.distributions(path=path) if path is not None else md.distributions()
    return {_canonical(d.metadata["Name"]) for d in dists if d.metadata["Name"]}


def problems(names: set[str], ort_package: str) -> list[str]:
    """Why this set of distributions is not a valid serving image (empty list: it is)."""
    found: list[str] = []
    for bad in FORBIDDEN:
        if _canonical(bad) in names:
            found.append(f"{bad} is installed; the serving image must not carry the offline stack")
    ort = sorted(p for p in ORT_PACKAGES if p in names)
    if ort != [ort_package]:
        found.append(f"ONNX Runtime packages installed: {ort or 'none'}; expected exactly [{ort_package!r}]")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ort-package", choices=ORT_PACKAGES, required=True)
    parser.add_argument("--path", action="append", help="site-packages dir to inspect (repeatable)")
    args = parser.parse_args(argv)
    issues = problems(installed(args.path), args.ort_package)
    for issue in issues:
        print(f"check_image: {issue}", file=sys.stderr)
    if not issues:
        print(f"check_image: ok ({args.ort_package}, no torch)")
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
