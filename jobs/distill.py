"""`python -m jobs.distill --config configs/distill.yaml` (standalone or under `ray job submit`)."""
import json

from jobs._common import run_job


def main(args) -> int:
    from synth.distill import DistillConfig, distill
    from synth.io.storage import read_yaml

    cfg = DistillConfig.parse(read_yaml(args.config), source=args.config)
    result = distill(cfg, report=lambda m, _o: print(json.dumps({k: round(v, 5) if isinstance(v, float) else v
                                                                for k, v in m.items()}), flush=True))
    print(json.dumps({"artifact": result.artifact_uri, "artifact_id": result.artifact_id,
                      "evaluation": result.evaluation}), flush=True)
    return 0


if __name__ == "__main__":
    run_job(main, __doc__)
