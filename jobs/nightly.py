"""`python -m jobs.nightly --config configs/nightly.yaml`: retrain (optional), synthesize,
check the release contract, report; exits 1 when a threshold of the contract is violated."""
import json
import sys

from jobs._common import load_yaml, run_job


def main(args) -> int:
    from pydantic import ValidationError

    from synth.config import format_validation_error
    from synth.errors import ConfigError
    from synth.nightly import NightlyConfig, run_nightly

    try:
        cfg = NightlyConfig.model_validate(load_yaml(args.config))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, args.config)) from None
    report = run_nightly(cfg)
    print(json.dumps({"report": cfg.report, "passed": report["passed"], "metrics": report["metrics"]},
                     default=str), flush=True)
    for v in report["violations"]:
        print(f"threshold violated: {v}", file=sys.stderr)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    run_job(main, __doc__)
