"""Write the JSON schemas kubeconform validates deploy/k8s against (tests/deploy/schemas/).

Not a test: run it by hand when a manifest starts using a new kind, or to move to another
Kubernetes or KEDA version. It needs two PyPI packages, in a throwaway venv:

    python3 -m uv venv /tmp/schemas-venv
    python3 -m uv pip install --python /tmp/schemas-venv/bin/python \\
        kubernetes-validate==1.37.0 cloudcoil-models-keda==2.20.2.1
    /tmp/schemas-venv/bin/python tests/deploy/vendor_schemas.py

Kubernetes: kubernetes-validate ships the API's schemas (one file per kind, with refs into a
1.4 MB _definitions.json); each kind here is made standalone with only the definitions it
reaches, and without descriptions, so the vendored files stay small. KEDA: the pydantic
models of cloudcoil-models-keda are generated from KEDA's CRDs; their JSON schema is made
strict (no property outside the CRD's), as kubeconform's -strict expects. File names follow
kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

KUBERNETES_VERSION = "1.33.0"
# (kind, apiVersion) of every object deploy/k8s renders.
KUBERNETES_KINDS = [
    ("ConfigMap", "v1"),
    ("Namespace", "v1"),
    ("PersistentVolumeClaim", "v1"),
    ("Service", "v1"),
    ("ServiceAccount", "v1"),
    ("Deployment", "apps/v1"),
    ("Job", "batch/v1"),
    ("HorizontalPodAutoscaler", "autoscaling/v2"),
    ("Ingress", "networking.k8s.io/v1"),
    ("PodDisruptionBudget", "policy/v1"),
]
KEDA_KINDS = ["ScaledObject", "TriggerAuthentication"]
KEDA_API = "keda.sh/v1alpha1"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
OUT = Path(__file__).with_name("schemas")


def file_name(kind: str, api_version: str) -> str:
    """kubeconform's `{{ .ResourceKind }}{{ .KindSuffix }}.json`."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def strip_descriptions(node: Any) -> Any:
    """Drop description texts (not properties that happen to be named `description`)."""
    if isinstance(node, dict):
        return {
            k: strip_descriptions(v)
            for k, v in node.items()
            if not (k in ("description", "title") and isinstance(v, str))
        }
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref.rsplit("/", 1)[-1])
        for value in node.values():
            found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


def local_refs(node: Any) -> Any:
    """'/api/_definitions.json#/$defs/X' -> '#/$defs/X'."""
    if isinstance(node, dict):
        return {
            k: ("#/$defs/" + v.rsplit("/", 1)[-1] if k == "$ref" else local_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [local_refs(v) for v in node]
    return node


def kubernetes_schema(directory: Path, kind: str, api_version: str) -> dict[str, Any]:
    definitions = json.loads((directory / "_definitions.json").read_text())["$defs"]
    root = json.loads((directory / file_name(kind, api_version)).read_text())
    root.pop("$id", None)
    needed: dict[str, Any] = {}
    todo = refs(root)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed[name] = definitions[name]
            todo |= refs(definitions[name]) - needed.keys()
    schema = {**local_refs(root), "$schema": DRAFT, "$defs": local_refs(needed)}
    return strip_descriptions(schema)


def strict(node: Any) -> Any:
    """additionalProperties: false wherever an object lists its properties, and no
    pydantic defaults (they are not constraints)."""
    if isinstance(node, dict):
        out = {k: strict(v) for k, v in node.items() if k != "default"}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


def keda_schema(kind: str) -> dict[str, Any]:
    from cloudcoil.models.keda import v1alpha1

    model = getattr(v1alpha1, kind)
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return strip_descriptions({"$schema": DRAFT, **strict(schema)})


def main() -> int:
    import kubernetes_validate

    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    directory = base / f"v{KUBERNETES_VERSION}-local-strict"
    OUT.mkdir(exist_ok=True)
    written = {}
    for kind, api_version in KUBERNETES_KINDS:
        written[file_name(kind, api_version)] = kubernetes_schema(directory, kind, api_version)
    for kind in KEDA_KINDS:
        written[file_name(kind, KEDA_API)] = keda_schema(kind)
    for name, schema in sorted(written.items()):
        (OUT / name).write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")
        print(f"{name}: {(OUT / name).stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
