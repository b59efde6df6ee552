"""`python -m jobs.nightly --config configs/nightly.yaml`: retrain (optional), synthesize,
check the release contract, report; exits 1 when a threshold of the contract is violated."""
import json
import sys

from jobs._common import run_job


def main(args) -> int:
    from synth.errors import validated
    from synth.pipelines.nightly import NightlyConfig, run_nightly
    from synth.io.storage import read_yaml

    cfg = validated(NightlyConfig, read_yaml(args.config), args.config)
    report = run_nightly(cfg)
    print(json.dumps({"report": cfg.report, "passed": report["passed"], "metrics": report["metrics"]},
                     default=str), flush=True)
    for v in report["violations"]:
        print(f"threshold violated: {v}", file=sys.stderr)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    run_job(main, __doc__)
