"""The report stage: the leaderboard across runs, the cost of every job, the figures, each
dataset's statistics and warnings, and the summary a run prints last."""

from nadir.report.costs import cost_of_files
from nadir.report.dataset_stats import write_dataset_stats
from nadir.report.figures import (
    plot_class_heatmap_of_files,
    plot_detections_of_files,
    plot_loss_curve,
    plot_pr_curves_of_files,
)
from nadir.report.leaderboard import leaderboard_of_files
from nadir.report.summary import write_summary

__all__ = ["cost_of_files", "leaderboard_of_files", "plot_class_heatmap_of_files",
           "plot_detections_of_files", "plot_loss_curve", "plot_pr_curves_of_files",
           "write_dataset_stats", "write_summary"]
