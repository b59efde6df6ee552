"""Tables: column kinds, streaming statistics and the codec between rows and features."""
from synth.table.codec import CodecConfig, TableCodec
from synth.table.stats import TableStats

__all__ = ["CodecConfig", "TableCodec", "TableStats"]
