"""The AI bill of materials of a trained model, produced by the training run itself (CycloneDX 1.6).

Records what a reviewer needs to trace a model's behaviour back to its inputs: the model (weights sha256,
hyperparameters, preprocessing steps, metrics), every dataset it used (root digest and per-file sha256), the
training code (git commit, signer) and the Python packages of the run. Built with cyclonedx-python-lib; the
``modelCard`` and component ``data`` fields, which the library does not model yet, are added as plain JSON and the
result is validated against the CycloneDX 1.6 schema shipped inside the library (offline).
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from airlock.errors import BomError

PACKAGES = (
    "torch",
    "numpy",
    "safetensors",
    "adversarial-robustness-toolbox",
    "scikit-learn",
    "prefect",
    "model-signing",
    "airlock",
)
TRAINER_PACKAGES = ("torch", "numpy", "safetensors")


def build(
    training: dict, provenance: dict, datasets: dict[str, dict], weights_sha256: str, metrics: dict[str, float]
) -> str:
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Commit, Component, ComponentType, Pedigree
    from cyclonedx.output.json import JsonV1Dot6
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from packageurl import PackageURL

    commit = provenance.get("commit", {})
    hp = training.get("hyperparameters", {})
    model = Component(
        name="model",
        type=ComponentType.MACHINE_LEARNING_MODEL,
        bom_ref="model",
        version=provenance["run_id"],
        description=training.get("trainer", "trained model"),
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=weights_sha256)],
        properties=[Property(name=f"airlock:hyperparameter:{k}", value=json.dumps(v)) for k, v in sorted(hp.items())]
        + [
            Property(name=f"airlock:preprocessing:{i}", value=s)
            for i, s in enumerate(training.get("preprocessing", []))
        ]
        + [
            Property(name="airlock:seed", value=str(training.get("seed"))),
            Property(name="airlock:run_id", value=provenance["run_id"]),
        ],
    )
    code = Component(
        name="training-code",
        type=ComponentType.APPLICATION,
        bom_ref="training-code",
        version=commit.get("commit"),
        pedigree=Pedigree(commits=[Commit(uid=commit.get("commit"), message=commit.get("subject"))]),
        properties=[
            Property(name="airlock:commit:signer", value=str(commit.get("signer"))),
            Property(name="airlock:commit:key_fingerprint", value=str(commit.get("key_fingerprint"))),
        ],
    )
    data_components = []
    for name, ds in sorted(datasets.items()):
        data_components.append(
            Component(
                name=f"dataset-{name}",
                type=ComponentType.DATA,
                bom_ref=f"dataset-{name}",
                version=ds["root_digest"],
                hashes=[HashType(alg=HashAlgorithm.SHA_256, content=ds["root_digest"].removeprefix("sha256:"))],
                components=[
                    Component(
                        name=f,
                        type=ComponentType.FILE,
                        bom_ref=f"dataset-{name}/{f}",
                        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=e["sha256"])],
                    )
                    for f, e in sorted(ds["files"].items())
                ],
            )
        )
    # The trainer's packages: from its lock, each with the sha256 of the wheel installed (gates/environment.py); without
    # a lock, the versions in Airlock's own environment, marked unpinned. Airlock's gate toolchain is listed apart.
    env = (provenance.get("trainer") or {}).get("environment") or {}
    locked = {p["name"]: p for p in env.get("packages") or [] if isinstance(p, dict) and p.get("name")}
    libs = []
    for name, p in sorted(locked.items()):
        libs.append(
            Component(
                name=name,
                version=str(p.get("version")),
                type=ComponentType.LIBRARY,
                bom_ref=f"pkg-{name}",
                purl=PackageURL(type="pypi", name=name, version=str(p.get("version"))),
                hashes=[HashType(alg=HashAlgorithm.SHA_256, content=p["sha256"])] if p.get("sha256") else [],
                properties=[
                    Property(name="airlock:role", value="trainer"),
                    Property(name="airlock:pinned", value="lock"),
                ],
            )
        )
    for pkg in PACKAGES:
        if pkg in locked:
            continue
        try:
            v = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
        role = "trainer-unpinned" if pkg in TRAINER_PACKAGES else "airlock-toolchain"
        libs.append(
            Component(
                name=pkg,
                version=v,
                type=ComponentType.LIBRARY,
                bom_ref=f"pkg-{pkg}",
                purl=PackageURL(type="pypi", name=pkg, version=v),
                properties=[Property(name="airlock:role", value=role)],
            )
        )
    if env.get("lock"):
        libs.append(
            Component(
                name=str(env["lock"]),
                type=ComponentType.FILE,
                bom_ref="training-environment-lock",
                description="the trainer's lock file with hashes (pip --require-hashes)",
                hashes=[
                    HashType(alg=HashAlgorithm.SHA_256, content=str(env.get("lock_digest", "")).removeprefix("sha256:"))
                ],
                properties=[
                    Property(name="airlock:environment:tree_digest", value=str(env.get("tree_digest"))),
                    Property(name="airlock:environment:python", value=str(env.get("python"))),
                ],
            )
        )
    bom = Bom(components=[model, code, *data_components, *libs])
    # Where the team's code ran (airlock/sandbox.py): "environment" means without Airlock's sandbox.
    box = provenance.get("sandbox") or {}
    root = Component(
        name="airlock-training-run",
        type=ComponentType.APPLICATION,
        bom_ref="run",
        version=provenance["run_id"],
        properties=[
            Property(name="airlock:sandbox:mode", value=str(box.get("mode", "unknown"))),
            Property(name="airlock:sandbox:isolated", value=str(bool(box.get("isolated"))).lower()),
            Property(name="airlock:environment:lock_digest", value=str(env.get("lock_digest") or "unpinned")),
        ]
        + ([Property(name="airlock:sandbox:warning", value=box["warning"])] if box.get("warning") else []),
    )
    bom.metadata.component = root
    bom.register_dependency(root, [model])
    bom.register_dependency(model, [code, *data_components, *libs])
    doc = json.loads(JsonV1Dot6(bom).output_as_string())
    for comp in doc["components"]:
        if comp.get("bom-ref") == "model":
            comp["modelCard"] = {
                "modelParameters": {
                    "task": "classification",
                    "architectureFamily": "convolutional neural network",
                    "modelArchitecture": training.get("architecture", ""),
                    "datasets": [{"ref": f"dataset-{n}"} for n in sorted(datasets)],
                    "inputs": [{"format": f"float32 tensor {training.get('input_shape')}"}],
                    "outputs": [{"format": f"logits over {training.get('nb_classes')} classes"}],
                },
                # The schema wants metric values as strings.
                "quantitativeAnalysis": {
                    "performanceMetrics": [{"type": k, "value": f"{v:.6g}"} for k, v in sorted(metrics.items())]
                },
            }
        if comp.get("type") == "data":
            comp["data"] = [
                {
                    "type": "dataset",
                    "name": comp["name"],
                    "contents": {"properties": [{"name": "airlock:root_digest", "value": comp["version"]}]},
                }
            ]
    # The schema does not check that a dataset ref resolves: check it here.
    refs = {c.get("bom-ref") for c in doc["components"]}
    card = next(c["modelCard"] for c in doc["components"] if c.get("bom-ref") == "model")
    missing = [d["ref"] for d in card["modelParameters"]["datasets"] if d["ref"] not in refs]
    if missing:
        raise BomError(f"AIBOM dataset refs do not resolve: {missing}", "report this as a bug")
    text = json.dumps(doc, indent=2, sort_keys=True)
    err = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if err is not None:
        raise BomError(f"AIBOM does not validate against CycloneDX 1.6: {err}", "report this as a bug")
    return text + "\n"


def write(model_dir: Path, provenance: dict, datasets: dict[str, dict], metrics: dict[str, float]) -> Path:
    from airlock.hashing import sha256_file

    training = json.loads((model_dir / "training.json").read_text())
    text = build(training, provenance, datasets, sha256_file(model_dir / "model.safetensors")[0], metrics)
    path = model_dir / "aibom.cdx.json"
    path.write_text(text)
    return path
