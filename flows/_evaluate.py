"""The trusted model-gate evaluator: ``python -P -m flows._evaluate REQUEST.json OUT.json``.

It never imports or runs the team's code. Each model is built in a sandboxed oracle (:mod:`airlock.oracle`): one
for the candidate's commit export (which also serves the golden stand-ins its trainer makes), one for production's
training commit, so two versions of the team's package never share a process. Here, in Airlock's own process, the
gates judge the oracles' answers: accuracy, robustness (ART), backdoor (Neural Cleanse), golden regression and the
advisories. Model code that patches ``gates.*`` or ``sys.modules`` patches only its oracle.

This process holds no secret either (it is started with the sandbox's allowlisted environment); it runs outside
the sandbox only because it starts sandboxes. Results come back as JSON: a list of GateResults and plot paths.
"""

from __future__ import annotations

import contextlib
import json
import queue
import sys
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Airlock's own code, from the installed package; ART before anything configures logging.
import art  # noqa: F401

import gates.advisory as advisory
import gates.artifact as artifact
import gates.backdoor as backdoor
import gates.evaluation as evaluation
import gates.golden_regression as golden_regression
import gates.robustness as robustness
from airlock import modeldir
from airlock.datasets import load_split
from airlock.errors import AirlockError
from airlock.oracle import Oracle, RemoteModel
from airlock.sandbox import Sandbox
from gates import model_gates
from gates._result import GateResult, Verdict


def _params(section: str, req: dict) -> Any:
    """The gate's parameters from its policy section (a key the gate does not have is refused) and the run."""
    return model_gates.gate(section).build(req["params"][section], seed=int(req["seed"]), threads=int(req["threads"]))


def _meta(model_dir: Path) -> dict:
    """training.json of a trainer output, re-checked by the artifact gate (the trainer wrote it: untrusted)."""
    verdict = artifact.check(model_dir)
    if not verdict.passed:
        raise AirlockError(verdict.reason)
    return json.loads((model_dir / "training.json").read_text())


def _progress(prefix: str):
    return lambda line: print(f"         {prefix} | {line}", flush=True)


def _oracle(sb: Sandbox, req: dict, what: str, ro: dict[str, Path], stack: contextlib.ExitStack) -> Oracle:
    job = sb.job(what, ro=ro, threads=int(req["threads"]), timeout=float(req["timeout"]))
    return stack.enter_context(Oracle(job, timeout=float(req["timeout"]), on_line=_progress(what)))


# The order results are reported in (the flow, the reports and the ledger), whatever order they finish in.
ORDER = (
    "evaluation",
    "robustness",
    "backdoor",
    "golden_regression",
    "membership_inference",
    "extraction_effort",
    "spectral_signatures",
)


def run(req: dict) -> dict:
    import numpy as np
    import torch

    threads, seed = int(req["threads"]), int(req["seed"])
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    sb = Sandbox(**req["sandbox"])
    work = Path(req["workdir"])
    wanted = tuple(req.get("gates") or model_gates.SECTIONS)
    out: dict = {"results": [], "plots": {}}
    p = req["params"]
    src, model_dir = Path(req["src"]), Path(req["model"])
    standin = work / "stand-in"
    standin.mkdir(parents=True, exist_ok=True)

    def add(result: GateResult) -> GateResult:
        out["results"].append(result.to_dict())
        print(f"{result.gate} done ({result.verdict.value})", flush=True)  # progress; verdicts come from the flow
        return result

    failed = threading.Event()
    # The stack closes first (oracles, then ``failed`` set), then the background thread is waited for.
    with ThreadPoolExecutor(max_workers=1) as background, contextlib.ExitStack() as stack:
        stack.callback(failed.set)  # on the way out (an error included), abandon the stand-in between models
        meta = _meta(model_dir)
        cand_oracle = _oracle(sb, req, "candidate model", {"src": src, "model": model_dir}, stack)
        cand = cand_oracle.load("candidate", cand_oracle.job.path("model"), meta)
        prod = prod_meta = None
        if req.get("prod_model"):
            prod_meta = _meta(Path(req["prod_model"]))
            prod_oracle = _oracle(
                sb, req, "production model", {"src": Path(req["prod_src"]), "model": Path(req["prod_model"])}, stack
            )
            prod = prod_oracle.load("production", prod_oracle.job.path("model"), prod_meta)
        x_tr, y_tr = load_split(Path(req["train_dir"]), "train")
        x_te, y_te = load_split(Path(req["train_dir"]), "test")
        x_go, y_go = load_split(Path(req["golden_dir"]), "golden")

        # Nothing in production: the backdoor gate's reference is a golden-set stand-in (models trained by the same
        # trainer on the known-clean golden set). It needs nothing of the candidate, so it is made in the background
        # from the start, with its own sandboxed oracle, while the gates below judge the candidate.
        stand_in: Future | None = None
        if "backdoor" in wanted and prod is None:
            oracles: queue.SimpleQueue[Oracle] = queue.SimpleQueue()
            for i in range(max(1, int(req.get("parallel", 1)))):  # one per stand-in worker: a pipe serves one thread
                oracles.put(_oracle(sb, req, f"stand-in models {i + 1}", {"src": src, "standin": standin}, stack))
            stand_in = background.submit(_stand_in, req, sb, x_go, y_go, oracles, standin, stop=failed.is_set)

        # Accuracy on the test split and the golden set.
        if "evaluation" in wanted:
            add(evaluation.check(cand, meta, (x_te, y_te), (x_go, y_go), _params("evaluation", req)))

        # Evasion robustness, decided on the Wilson lower bound, and its regression against production.
        if "robustness" in wanted:
            rp = _params("robustness", req)
            r = add(robustness.check(cand, meta, x_te, y_te, rp, reference=prod, reference_meta=prod_meta))
            if r.evidence.get("curve"):  # none when the gate refused before attacking (gradient masking)
                out["plots"]["robustness"] = str(robustness.write_curve(r, work / "robustness-curve.png"))

        # Golden-set regression against production (paired McNemar).
        if "golden_regression" in wanted:
            gp = _params("golden_regression", req)
            add(golden_regression.check(cand, meta, x_go, y_go, gp, reference=prod))

        # Advisory: reported and recorded in the bill of materials, never blocking.
        advise = "advisory" in wanted and p["advisory"].get("enabled", True)
        if advise:
            ap = _params("advisory", req)
            add(advisory.membership_inference(cand, meta, x_tr, y_tr, x_te, y_te, ap))
            add(advisory.extraction_effort(cand, meta, x_tr, x_te, ap))

        # Backdoor: per-class minimal triggers against production's (cached in its signed evidence), production
        # itself, or the stand-in.
        b = None
        if "backdoor" in wanted:
            b = add(_backdoor(req, cand, meta, prod, prod_meta, x_go, y_go, stand_in))

        # Spectral signatures look first at the class the backdoor gate found most suspicious.
        if advise and "penultimate" in cand.layers:
            flagged = b.metrics.get("min_trigger_ratio_class") if b is not None else None
            add(
                advisory.spectral_signatures(
                    cand, meta, x_tr, y_tr, ap, classes=None if flagged is None else [int(flagged)]
                )
            )
        out["oracle_calls"] = cand_oracle.calls
    out["results"].sort(key=lambda r: ORDER.index(r["gate"]) if r["gate"] in ORDER else len(ORDER))
    return out


def _stand_in(req, sb: Sandbox, x_go, y_go, oracles: queue.SimpleQueue[Oracle], standin: Path, stop) -> dict:
    """The golden stand-in's reference (:func:`gates.backdoor.stand_in_reference`), in the sandbox throughout."""
    bp = _params("backdoor", req)
    print(
        f"         {'backdoor':18} no production model: training {bp.stand_in_models} stand-in model(s) "
        "on the golden set (sandboxed, beside the other gates)",
        flush=True,
    )
    src = Path(req["src"])
    # The stand-in is trained by the verified commit's own trainer, in the sandbox like any training.
    train = backdoor.sandboxed_trainer(
        list(req["training_command"]), src, sb, float(req["timeout"]), int(req["threads"])
    )

    mine = threading.local()

    def load(d: Path) -> tuple[RemoteModel, dict]:
        # Like the candidate's: a new directory with the trainer's two files alone, judged by the artifact gate.
        model = modeldir.assemble(d, d.with_name(f"{d.name}.model"))
        m = _meta(model)
        if not hasattr(mine, "oracle"):
            mine.oracle = oracles.get_nowait()  # each worker thread keeps one oracle for all its models
        oracle: Oracle = mine.oracle
        return oracle.load(f"stand-in-{d.name}", f"{oracle.job.path('standin')}/{model.name}", m), m

    return backdoor.stand_in_reference(
        x_go,
        y_go,
        standin,
        bp,
        config=src / "training" / "config.toml",
        loader=load,
        trainer=train,
        parallel=int(req.get("parallel", 1)),
        stop=stop,
    )


def _backdoor(req, cand: RemoteModel, meta, prod, prod_meta, x_go, y_go, stand_in: Future | None) -> GateResult:
    bp = _params("backdoor", req)
    cand_norms = backdoor.reverse_engineer(cand, meta, x_go, y_go, bp)
    reference, kind = req.get("prod_backdoor"), "production"
    if reference is not None and not _compatible(reference, cand_norms):
        reference = None  # cached with other images or params: recompute on production
    if reference is None and prod is not None:
        reference = backdoor.reverse_engineer(prod, prod_meta, x_go, y_go, bp)
    if reference is None:
        assert stand_in is not None, "no production model and no stand-in started"
        kind = "golden-stand-in"
        reference = stand_in.result()
    return backdoor.check(cand_norms, reference, bp, reference_kind=kind)


def _compatible(cached: dict, fresh: dict) -> bool:
    return cached.get("images_sha256") == fresh.get("images_sha256") and cached.get("params") == fresh.get("params")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    req = json.loads(Path(argv[0]).read_text())
    try:
        out = run(req)
    except Exception as e:  # noqa: BLE001 - the team's model can fail any way: that is a refusal, not a crash
        if not isinstance(e, AirlockError):
            traceback.print_exc()  # a bug of Airlock's own: the run's log keeps where it happened
        what = e.one_line() if isinstance(e, AirlockError) else f"{type(e).__name__}: {str(e)[:200]}"
        out = {
            "results": [
                GateResult(
                    evaluation.GATE,
                    Verdict.FAIL,
                    f"cannot evaluate the model: {what} — check that training/model.py builds "
                    "the architecture the trainer saved",
                    code="evaluation.cannot_evaluate",
                ).to_dict()
            ],
            "plots": {},
        }
    Path(argv[1]).write_text(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
