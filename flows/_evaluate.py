"""The trusted model-gate evaluator: ``python -P -m flows._evaluate REQUEST.json OUT.json``.

It never imports or runs the team's code. Each model is built in a sandboxed oracle (:mod:`airlock.oracle`): one
for the candidate's commit export, one per stand-in worker for the golden stand-ins its trainer makes, one for
production's training commit, so two versions of the team's package never share a process. Here, in Airlock's own
process, the gates judge the oracles' answers: accuracy, robustness (ART), backdoor (Neural Cleanse), golden
regression and the advisories. Model code that patches ``gates.*`` or ``sys.modules`` patches only its oracle.

The flow starts it beside the training (``"candidate": "stdin"`` in the request): it imports, starts the candidate's
and production's oracles and, with nothing in production, trains the golden stand-in meanwhile, then reads one line
from its standard input, ``{"model": DIR}``, once the candidate is built, through the artifact gate and its data re-checked. No line
(the run failed first) and it ends at once, having judged nothing.

This process holds no secret either (it is started with the sandbox's allowlisted environment); it runs outside
the sandbox only because it starts sandboxes. Results come back as JSON: a list of GateResults and plot paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Airlock's own code, from the installed package. Only what the golden stand-in's trainings need is imported here:
# they start first, and ART and torch (seconds to import) are imported while they run (see run()).
import gates.artifact as artifact
import gates.backdoor as backdoor
import gates.evaluation as evaluation
from airlock import modeldir
from airlock.datasets import load_split
from airlock.errors import AirlockError
from airlock.sandbox import Sandbox
from gates import model_gates
from gates._result import GateResult, Verdict

if TYPE_CHECKING:
    from airlock.oracle import Oracle, RemoteModel


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
    from airlock.oracle import Oracle

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


def run(req: dict, candidate: Callable[[], dict] | None = None) -> dict:
    """Judge the candidate ``req["model"]``. With ``candidate`` (the flow's evaluator, started beside the training),
    everything that needs nothing of the candidate starts first - Airlock's imports, the candidate's and production's
    oracles, and with nothing in production the golden stand-in - and ``candidate()`` then blocks until the flow hands over the built
    candidate (``{"model": DIR}``, after the artifact gate and the data re-check)."""
    sb = Sandbox(**req["sandbox"])
    work = Path(req["workdir"])
    wanted = tuple(req.get("gates") or model_gates.SECTIONS)
    out: dict = {"results": [], "plots": {}}
    p = req["params"]
    src = Path(req["src"])
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
        # The golden snapshot, read once the data gate has verified it: no sandbox is ever given it to write.
        x_go, y_go = load_split(Path(req["golden_dir"]), "golden")

        # Nothing in production: the backdoor gate's reference is a golden-set stand-in (models trained by the same
        # trainer on the known-clean golden set). It needs nothing of the candidate, so it is made in the background
        # from the start, with sandboxed oracles of its own, while the candidate trains and the gates below judge it.
        stand_in: Future | None = None
        if "backdoor" in wanted and not req.get("prod_model"):
            stand_in = background.submit(_stand_in, req, sb, x_go, y_go, standin, stop=failed.is_set)

        # The candidate's oracle starts now too, so that its start-up (torch) is not waited for later. It reads the
        # candidate from a directory of its own, into which Airlock copies the trainer's two files once handed them.
        cand_dir = work / "candidate"
        cand_dir.mkdir(exist_ok=True)
        cand_oracle = _oracle(sb, req, "candidate model", {"src": src, "candidate": cand_dir}, stack)

        # Then torch, seeded for the gates below (the stand-in's Neural Cleanse draws from its own generators), and
        # ART (`import art` runs logging.config.dictConfig) before the gates that use it.
        import numpy as np
        import torch

        threads, seed = int(req["threads"]), int(req["seed"])
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        np.random.seed(seed)
        import art  # noqa: F401

        import gates.advisory as advisory
        import gates.golden_regression as golden_regression
        import gates.robustness as robustness

        prod = prod_meta = None
        if req.get("prod_model"):
            prod_meta = _meta(Path(req["prod_model"]))
            prod_oracle = _oracle(
                sb, req, "production model", {"src": Path(req["prod_src"]), "model": Path(req["prod_model"])}, stack
            )
            prod = prod_oracle.load("production", prod_oracle.job.path("model"), prod_meta)

        # The candidate: built, through the artifact gate, its data re-checked (the flow says when).
        model_dir = Path(candidate()["model"] if candidate is not None else req["model"])
        meta = _meta(modeldir.assemble(model_dir, cand_dir / "model"))  # judged again, as copied
        cand = cand_oracle.load("candidate", f"{cand_oracle.job.path('candidate')}/model", meta)
        x_tr, y_tr = load_split(Path(req["train_dir"]), "train")
        x_te, y_te = load_split(Path(req["train_dir"]), "test")

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


def _stand_in(req, sb: Sandbox, x_go, y_go, standin: Path, stop) -> dict:
    """The golden stand-in's reference (:func:`gates.backdoor.stand_in_reference`), in the sandbox throughout."""
    bp = _params("backdoor", req)
    print(
        f"         {'backdoor':18} no production model: training {bp.stand_in_models} stand-in model(s) "
        "on the golden set (sandboxed, beside the other gates)",
        flush=True,
    )
    src = Path(req["src"])
    # The stand-in is trained by the verified commit's own trainer, in the sandbox like any training.
    # With a `{python} -m MODULE` command, its trainings are forks of one sandboxed process (training.fork).
    train = backdoor.SandboxedTrainer(
        list(req["training_command"]), src, sb, float(req["timeout"]), int(req["threads"]), fork=bool(req["fork"])
    )

    mine = threading.local()
    lock = threading.Lock()
    started = 0

    with contextlib.ExitStack() as oracles:  # closed as soon as the stand-in is made (or abandoned)
        oracles.enter_context(train)

        def load(d: Path) -> tuple[RemoteModel, dict]:
            nonlocal started
            # Like the candidate's: a new directory with the trainer's two files alone, judged by the artifact gate,
            # outside what the stand-in's trainings may write (stand-in/trained/).
            model = modeldir.assemble(d, standin / "models" / d.name)
            m = _meta(model)
            if not hasattr(mine, "oracle"):  # each worker thread keeps one oracle (a pipe serves one thread)
                with lock:
                    started += 1
                    what = f"stand-in models {started}"
                    mine.oracle = _oracle(sb, req, what, {"src": src, "standin": standin}, oracles)
            oracle: Oracle = mine.oracle
            return oracle.load(f"stand-in-{d.name}", f"{oracle.job.path('standin')}/models/{model.name}", m), m

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


def _candidate_from_stdin() -> dict:
    """The flow's one line, ``{"model": DIR}``, once the candidate is ready. No line (the flow failed or gave up
    first): nothing will be judged, so end at once - the stand-in's and production's sandboxes die with this
    process (``--die-with-parent``), and no result file is written."""
    line = sys.stdin.readline()
    if not line.strip():
        print("no candidate came (the run stopped before the model gates): nothing judged", flush=True)
        sys.stderr.flush()
        os._exit(0)
    got = json.loads(line)
    if not isinstance(got, dict) or not isinstance(got.get("model"), str):
        raise AirlockError('the flow sent the evaluator something other than {"model": DIR}')
    return got


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    req = json.loads(Path(argv[0]).read_text())
    try:
        out = run(req, _candidate_from_stdin if req.get("candidate") == "stdin" else None)
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
    code = main()
    # The results are written: end without the interpreter's shutdown, which takes seconds with torch and ART
    # loaded and decides nothing.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
