"""`python -m jobs.synthesize --config configs/synthesize.yaml`: bulk synthetic Parquet shards."""
import json
import sys

from jobs._common import run_job


def main(args) -> int:
    from synth.errors import validated
    from synth.io.storage import read_yaml
    from synth.pipelines.synthesize import SynthesizeConfig, synthesize

    cfg = validated(SynthesizeConfig, read_yaml(args.config), args.config)
    m = synthesize(cfg, progress=lambda done, total: print(f"{done}/{total} rows", file=sys.stderr, flush=True))
    print(json.dumps({"output": cfg.output, "rows": m["rows"], "shards": len(m["shards"]),
                      "rows_per_s": m["rows_per_s"], "wall_s": m["wall_s"]}), flush=True)
    return 0


if __name__ == "__main__":
    run_job(main, __doc__)
