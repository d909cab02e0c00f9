"""The fmri modality (in progress)."""
