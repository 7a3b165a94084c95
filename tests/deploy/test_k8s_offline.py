"""The offline Jobs (deploy/k8s/offline): strict Kubernetes schemas, and what a schema cannot see: the shard and
node counts agree with each other, every command parses with the real `scoter` and `torchrun` argument parsers
(with Kubernetes' $(VAR) expansion applied), the shard folders the encode step writes are the ones publish reads,
and the training pods find their rendezvous through the headless Service."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
import yaml

from offline.reasoning.encode import SHARD_BLOCK
from scoter.cli import build_parser
from tests.deploy.conftest import DEPLOY
from tests.deploy.test_k8s import K8S_VERSION

OFFLINE = DEPLOY / "k8s" / "offline"


def docs() -> list[dict]:
    return [d for p in sorted(OFFLINE.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in yaml.safe_load_all(p.read_text()) if d]


def named(kind: str, name: str) -> dict:
    return next(d for d in docs() if d["kind"] == kind and d["metadata"]["name"] == name)


def expand(args: list[str], env: list[dict], index: int) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args, JOB_COMPLETION_INDEX included (an unknown var is an error
    here: Kubernetes would pass it through literally)."""
    values = {e["name"]: e["value"] for e in env if "value" in e} | {"JOB_COMPLETION_INDEX": str(index)}

    def one(arg: str) -> str:
        def sub(m: re.Match) -> str:
            assert m.group(1) in values, f"$({m.group(1)}) is not set in the container's env"
            return values[m.group(1)]
        return re.sub(r"\$\((\w+)\)", sub, arg)

    return [one(a) for a in args]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
def test_offline_manifests_match_kubernetes_schemas(version):
    for doc in docs():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_kustomization_lists_every_offline_manifest():
    kust = yaml.safe_load((OFFLINE / "kustomization.yaml").read_text())
    assert set(kust["resources"]) == {p.name for p in OFFLINE.glob("*.yaml")} - {"kustomization.yaml"}
    images = {c["image"].split(":")[0] for d in docs() if d["kind"] == "Job"
              for c in d["spec"]["template"]["spec"].get("initContainers", []) + d["spec"]["template"]["spec"][
                  "containers"]}
    assert images == {i["name"] for i in kust["images"]}


def test_reasoning_shards_job_wiring(tmp_path):
    job = named("Job", "scoter-reasoning-shards")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    n = spec["completions"]
    encode_c, publish_c = pod["initContainers"][0], pod["containers"][0]
    parser = build_parser()
    for i in (0, n - 1):
        enc = expand(encode_c["args"], encode_c["env"], i)
        pub = expand(publish_c["args"], publish_c["env"], i)
        assert [encode_c["command"][0], *enc[:2]] == ["scoter", "reason", "encode"]
        assert [publish_c["command"][0], *pub[:2]] == ["scoter", "reason", "publish"]
        ea, pa = parser.parse_args(enc), parser.parse_args(pub)
        assert ea.shard == pa.shard == str(n)  # the index comes from JOB_COMPLETION_INDEX
        assert ea.out == pa.h  # publish reads the folder encode wrote its shards into
        assert pa.created_at is not None and SHARD_BLOCK % pa.batch_size == 0
        assert ea.shard_block == pa.shard_block == SHARD_BLOCK
    volumes = {v["name"] for v in pod["volumes"]}
    for c in (encode_c, publish_c):
        assert {m["name"] for m in c["volumeMounts"]} <= volumes
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert "ReadWriteMany" in named("PersistentVolumeClaim", claim)["spec"]["accessModes"]


def test_train_job_runs_torchrun_across_its_pods():
    from torch.distributed.run import get_args_parser

    job, svc = named("Job", "scoter-train"), named("Service", "scoter-train")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    c = pod["containers"][0]
    assert c["command"] == ["torchrun"]
    for i in range(spec["completions"]):
        args = expand(c["args"], c["env"], i)
        tr = get_args_parser().parse_args(args)
        assert int(tr.nnodes) == spec["completions"] and int(tr.node_rank) == i
        assert tr.module and tr.training_script == "scoter.cli"
        scoter_args = build_parser().parse_args(tr.training_script_args)
        assert scoter_args.func.__name__ == "_train_sasrec" and scoter_args.out
    # pod 0's stable name resolves through the headless Service that selects these pods
    assert tr.master_addr == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    assert svc["metadata"]["name"] == pod["subdomain"] and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert int(tr.master_port) == svc["spec"]["ports"][0]["port"] == c["ports"][0]["containerPort"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"]
