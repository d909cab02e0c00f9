"""The timeseries modality (in progress)."""
