"""The serving image, checked without Docker: the Dockerfile's instructions, the [serve] extra's dependency
closure (no torch), the build-time guard script, and .dockerignore keeping the context to what the image copies."""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.conftest import DEPLOY, REPO

FORBIDDEN = {"torch", "transformers", "sentence-transformers", "peft", "accelerate"}


def instructions() -> list[tuple[str, str]]:
    parser = DockerfileParser(str(REPO / "Dockerfile"))
    return [(i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"]


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions grouped by `FROM ... AS name` stage."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for ins, value in instructions():
        if ins == "FROM":
            current = value.split()[-1]
            out[current] = []
        elif current is not None:
            out[current].append((ins, value))
    return out


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_multi_stage_slim_base_with_cuda_argument():
    ins = instructions()
    args = dict(v.split("=", 1) for i, v in ins if i == "ARG" and "=" in v)
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    assert args["ORT_PACKAGE"] == "onnxruntime"
    froms = [v for i, v in ins if i == "FROM"]
    assert froms[0] == "${BASE_IMAGE} AS base", "every stage must derive from the one BASE_IMAGE (CPU or CUDA)"
    assert set(stages()) == {"base", "builder", "runtime"}
    runtime = stages()["runtime"]
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    # the runtime stage gets no compiler, no pip install: only the builder's venv
    assert not any(i == "RUN" and "pip install" in v for i, v in runtime)


def test_install_line_asks_for_the_serve_extra_only():
    runs = [v for i, v in stages()["builder"] if i == "RUN"]
    project_installs = [r for r in runs if re.search(r"pip install\s+[\"']?\.", r)]  # installs of "." itself
    assert project_installs == ['pip install ".[serve]"'], runs
    # the only other install is the ONNX Runtime swap, after uninstalling the CPU package
    swap = next(r for r in runs if "uninstall" in r)
    assert swap.index("pip uninstall -y onnxruntime") < swap.index('pip install "$ORT_PACKAGE"')
    assert any("check_image.py" in r and '--ort-package "$ORT_PACKAGE"' in r for r in runs)


def test_non_root_volumes_healthcheck_and_entrypoint():
    runtime = stages()["runtime"]
    user = [v for i, v in runtime if i == "USER"]
    assert user and user[-1].split(":")[0] not in {"0", "root"}
    volumes = json.loads(next(v for i, v in runtime if i == "VOLUME"))
    assert {"/bundles", "/config"} <= set(volumes)
    assert json.loads(next(v for i, v in runtime if i == "ENTRYPOINT")) == ["scoter", "serve"]
    health = next(v for i, v in runtime if i == "HEALTHCHECK")
    assert "/healthz" in health and "urllib.request" in health and "curl" not in health
    # the console script the entry point runs is the CLI's main()
    assert pyproject()["project"]["scripts"]["scoter"] == "scoter.cli:main"


def test_copied_sources_exist_and_pass_dockerignore():
    sources: list[str] = []
    for ins, value in instructions():
        if ins == "COPY" and not value.startswith("--from"):
            sources += shlex.split(value)[:-1]
    assert sources
    ignore = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "**", ".dockerignore must be an allow-list"
    allowed = [p[1:].rstrip("/") for p in ignore if p.startswith("!")]
    for src in sources:
        assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the repo"
        assert any(src == a or src.startswith(a + "/") for a in allowed), f"{src} is excluded by .dockerignore"


def closure(extra: str) -> dict[str, str]:
    """Distributions the extra pulls in (name -> who required it), walking installed metadata with markers."""
    seen: dict[str, str] = {}
    todo = [(Requirement(r), "scoter[" + extra + "]")
            for r in pyproject()["project"]["dependencies"] + pyproject()["project"]["optional-dependencies"][extra]]
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen[name] = parent
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            pytest.fail(f"{name} (required by {parent}) is not installed here, so its closure cannot be checked")
        for spec in requires:
            sub = Requirement(spec)
            envs = [{"extra": e} for e in (req.extras or {""})]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append((sub, name))
    return seen


def test_serve_closure_has_no_torch():
    deps = closure("serve")
    assert {"fastapi", "onnxruntime", "redis", "uvicorn", "numpy"} <= set(deps)
    assert not FORBIDDEN & set(deps), {n: deps[n] for n in FORBIDDEN & set(deps)}
    assert "onnxruntime-gpu" not in deps


def test_offline_closure_does_have_torch():
    """The walk above can see torch when it is there (guards against a walk that finds nothing)."""
    assert "torch" in closure("offline")


def _fake_site(tmp_path: Path, names: list[str]) -> Path:
    """A site-packages directory holding only .dist-info metadata for `names` (real files, read by importlib)."""
    site = tmp_path / "site"
    for name in names:
        info = site / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    return site


@pytest.mark.parametrize(
    ("names", "ort", "ok", "message"),
    [
        (["fastapi", "onnxruntime"], "onnxruntime", True, "ok"),
        (["fastapi", "onnxruntime-gpu"], "onnxruntime-gpu", True, "ok"),
        (["fastapi", "onnxruntime", "onnxruntime-gpu"], "onnxruntime-gpu", False, "expected exactly"),
        (["fastapi", "onnxruntime", "torch"], "onnxruntime", False, "torch is installed"),
        (["fastapi", "Sentence_Transformers", "onnxruntime"], "onnxruntime", False, "sentence-transformers"),
        (["fastapi"], "onnxruntime", False, "none"),
    ],
)
def test_check_image_guard(tmp_path, names, ort, ok, message):
    site = _fake_site(tmp_path, names)
    proc = subprocess.run(
        [sys.executable, str(DEPLOY / "docker" / "check_image.py"), "--ort-package", ort, "--path", str(site)],
        capture_output=True, text=True, timeout=30,
    )
    assert (proc.returncode == 0) == ok, proc.stderr
    assert message in (proc.stdout + proc.stderr)
