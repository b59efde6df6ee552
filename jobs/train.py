"""`python -m jobs.train --config configs/adult.yaml` (standalone or under `ray job submit`)."""
import json

from jobs._common import run_job


def main(args) -> int:
    from synth.config import RunConfig
    from synth.train.fit import fit

    cfg = RunConfig.from_yaml(args.config)
    result = fit(cfg, report=lambda m, _o: print(json.dumps({k: round(v, 5) if isinstance(v, float) else v
                                                             for k, v in m.items()}), flush=True))
    print(json.dumps({"artifact": result.artifact_uri, "artifact_id": result.artifact_id}), flush=True)
    return 0


if __name__ == "__main__":
    run_job(main, __doc__)
