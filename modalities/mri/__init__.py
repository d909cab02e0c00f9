"""The mri modality (in progress)."""
