"""The index stage: a fetched dataset's manifest and labels as the normalised tables.

One path for every format (`nadir.index.normalise.index_dataset`): the sample is a DOTA source
like any other.
"""

from nadir.index.normalise import index, index_dataset

__all__ = ["index", "index_dataset"]
