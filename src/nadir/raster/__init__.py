"""Rasters as nadir reads them: the one opener for rasters from data, georeferencing sidecars,
the chip parameters, radiometry, and the one window generator chipping and inference share."""
