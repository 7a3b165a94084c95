"""Rehearse the image build without Docker: run the Dockerfile builder stage's own RUN lines in a scratch
directory laid out like the build context, then start the result the way the runtime stage does.

Why: Docker is not available everywhere (CI here has none), but the install commands, the torch-free closure and
the entry point can still be exercised for real. It measures install time, venv size, time to /healthz and
/readyz, and the serving process's memory, and writes them as JSON.

    python deploy/docker/rehearse_build.py --out benchmarks/results/deploy_rehearse_build.json

Needs network access to PyPI (pip) and the dev venv for building a small test bundle (onnx).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("rehearse_build")


def builder_stage() -> tuple[list[list[str]], list[str], dict[str, str]]:
    """(COPY src/dest pairs, RUN lines, ARG defaults) of the Dockerfile's builder stage."""
    parser = DockerfileParser(str(REPO / "Dockerfile"))
    stage, copies, runs, args = None, [], [], {}
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            stage = ins["value"].split()[-1]
        elif stage == "builder" and ins["instruction"] == "COPY":
            copies.append(shlex.split(ins["value"]))
        elif stage == "builder" and ins["instruction"] == "RUN":
            runs.append(ins["value"])
        elif stage == "builder" and ins["instruction"] == "ARG" and "=" in ins["value"]:
            key, value = ins["value"].split("=", 1)
            args[key] = value
    return copies, runs, args


def run_builder(work: Path, ort_package: str) -> dict:
    """COPY the context files into `work/src`, then each RUN with /opt paths mapped into `work`."""
    copies, runs, args = builder_stage()
    src, venv = work / "src", work / "opt" / "venv"
    src.mkdir(parents=True)
    for parts in copies:
        *sources, dest = parts
        for s in sources:
            target = Path(dest.replace("/opt/", f"{work}/opt/")) if dest.startswith("/opt/") else src / dest
            if dest.endswith("/"):
                target = target / Path(s).name
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (REPO / s).is_dir() else shutil.copy2)(REPO / s, target)
    env = {**os.environ, **args, "ORT_PACKAGE": ort_package, "PATH": f"{venv}/bin:{os.environ['PATH']}",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("VIRTUAL_ENV", None)
    steps = []
    for line in runs:
        cmd = line.replace("/opt/", f"{work}/opt/")
        t0 = time.perf_counter()
        log.info("RUN %s", cmd)
        proc = subprocess.run(["bash", "-c", cmd], cwd=src, env=env, capture_output=True, text=True)
        steps.append({"run": line, "seconds": round(time.perf_counter() - t0, 2), "rc": proc.returncode})
        if proc.returncode != 0:
            raise RuntimeError(f"RUN {line!r} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file())
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, check=True).stdout
    return {"steps": steps, "venv_mb": round(size / 2**20, 1), "venv": str(venv),
            "distributions": sorted(d["name"].lower() for d in json.loads(freeze))}


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except OSError:
        return 0


def start_like_runtime(venv: Path, work: Path, port: int) -> dict:
    """`scoter serve --bundle` from the rehearsed venv (a tiny real bundle built with this interpreter)."""
    sys.path.insert(0, str(REPO))
    from model_export.testing import build_bundle

    bundle = work / "bundles" / "tiny"
    build_bundle(bundle)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env.update(SCOTER_HOST="127.0.0.1", SCOTER_PORT=str(port), OMP_NUM_THREADS="1",
               PATH=f"{venv}/bin:{os.environ['PATH']}")
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(venv / "bin" / "scoter"), "serve", "--bundle", str(bundle)], env=env,
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    times: dict[str, float] = {}
    try:
        while time.perf_counter() - t0 < 120 and len(times) < 2:
            if proc.poll() is not None:
                raise RuntimeError(f"scoter serve exited {proc.returncode}: {proc.stdout.read()[-3000:]}")
            for path in ("healthz", "readyz"):
                if path not in times and _get(f"http://127.0.0.1:{port}/{path}") == 200:
                    times[path] = round(time.perf_counter() - t0, 2)
            time.sleep(0.05)
        rss = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{proc.pid}/status").read_text())
        torch_loaded = "torch" in Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    return {"seconds_to_healthz": times.get("healthz"), "seconds_to_readyz": times.get("readyz"),
            "rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None, "torch_mapped": torch_loaded}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/deploy_rehearse_build.json")
    parser.add_argument("--ort-package", default="onnxruntime", choices=["onnxruntime", "onnxruntime-gpu"])
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(tempfile.mkdtemp(prefix="scoter-rehearse-"))
    try:
        t0 = time.perf_counter()
        build = run_builder(work, args.ort_package)
        build["install_seconds_total"] = round(time.perf_counter() - t0, 1)
        serve = start_like_runtime(Path(build["venv"]), work, args.port)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "what": "Dockerfile builder RUN lines rehearsed without Docker, then `scoter serve --bundle` from that venv",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": "2-core CPU sandbox", "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "ort_package": args.ort_package,
        "forbidden_present": sorted({"torch", "transformers", "sentence-transformers"} & set(build["distributions"])),
        **build, **serve,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    log.info("wrote %s", args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "distributions"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
