"""The robotics modality (in progress)."""
