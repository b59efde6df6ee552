"""`python -m jobs.train --config configs/adult.yaml` (standalone or under `ray job submit`)."""
import json

from jobs._common import run_job


def main(args) -> int:
    from synth.config import RunConfig
    from synth.train.fit import fit

    cfg = RunConfig.from_yaml(args.config)
    result = fit(cfg, report=lambda m, _o: print(json.dumps({k: round(v, 5) if isinstance(v, float) else v
                                                             for k, v in m.items()}), flush=True))
    from synth.evaluate.fit_check import FAILED_EXIT, summary

    print(json.dumps({"artifact": result.artifact_uri, "artifact_id": result.artifact_id,
                      "fit_check": result.check}), flush=True)
    print(summary(result.check), flush=True)
    refused = result.check.get("verdict") == "failed" and result.check.get("on_failure") == "refuse"
    return FAILED_EXIT if refused else 0


if __name__ == "__main__":
    run_job(main, __doc__)
