"""The ephys modality (in progress)."""
