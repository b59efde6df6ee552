"""Arrow schema (de)serialisation for JSON state: the exact types come back on decode."""
import base64

import pyarrow as pa


def schema_to_b64(schema: pa.Schema) -> str:
    return base64.b64encode(schema.remove_metadata().serialize().to_pybytes()).decode("ascii")


def schema_from_b64(s: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(s)))
