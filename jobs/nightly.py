"""`python -m jobs.nightly --config configs/nightly.yaml`: retrain (optional), synthesize and check
the release contract under the run's own prefix, report, and move ROOT/latest.json to the run when
it passed; exits 1 (the run stays staged, latest unchanged) when a threshold is violated."""
import json
import sys

from jobs._common import run_job


def main(args) -> int:
    from synth.errors import validated
    from synth.pipelines.nightly import NightlyConfig, run_nightly
    from synth.io.storage import read_yaml

    cfg = validated(NightlyConfig, read_yaml(args.config), args.config)
    report = run_nightly(cfg)
    print(json.dumps({"run": report["run"], "report": report["report"], "passed": report["passed"],
                      "released": report["passed"], "metrics": report["metrics"]}, default=str), flush=True)
    for v in report["violations"]:
        print(f"threshold violated: {v}", file=sys.stderr)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    run_job(main, __doc__)
