"""The COCO stage: the chip lists of a dataset's shards as one COCO file per split; and, for runs
that score a selection split while they train, that split held out of train by scene."""

from nadir.coco.files import write_coco, write_selection_split

__all__ = ["write_coco", "write_selection_split"]
