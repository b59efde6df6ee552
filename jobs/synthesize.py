"""`python -m jobs.synthesize --config configs/synthesize.yaml`: bulk synthetic Parquet shards."""
import json
import sys

from jobs._common import load_yaml, run_job


def main(args) -> int:
    from synth.config import format_validation_error
    from synth.errors import ConfigError
    from synth.synthesize import SynthesizeConfig, synthesize
    from pydantic import ValidationError

    try:
        cfg = SynthesizeConfig.model_validate(load_yaml(args.config))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, args.config)) from None
    m = synthesize(cfg, progress=lambda done, total: print(f"{done}/{total} rows", file=sys.stderr, flush=True))
    print(json.dumps({"output": cfg.output, "rows": m["rows"], "shards": len(m["shards"]),
                      "rows_per_s": m["rows_per_s"], "wall_s": m["wall_s"]}), flush=True)
    return 0


if __name__ == "__main__":
    run_job(main, __doc__)
