"""The language modality (in progress)."""
