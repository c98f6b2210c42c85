"""The compare stage: is one setting better than another on a dataset, or is the gap noise? A
paired bootstrap over the val scenes (`compare_files`); the leaderboard aggregates repeats with
the same statistics (`summarise_repeats`, `group_settings`)."""

from nadir.compare.bootstrap import compare_files, group_settings, summarise_repeats

__all__ = ["compare_files", "group_settings", "summarise_repeats"]
