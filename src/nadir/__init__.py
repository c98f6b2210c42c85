"""nadir: overhead imagery to a leaderboard of trained object detectors."""

__version__ = "0.1.0"
