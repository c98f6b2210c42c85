"""The chip stage: scenes cut into fixed-size chips with GDAL windowed reads, packed in shards.

One job per shard of scenes (`cut_shard`), then the chip manifest of all shards
(`write_chip_manifest`), whose parameters training reads and carries on in the model.
"""

from nadir.chip.manifest import write_chip_manifest
from nadir.chip.shard import cut_shard

__all__ = ["cut_shard", "write_chip_manifest"]
