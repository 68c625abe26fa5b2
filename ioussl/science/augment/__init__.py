"""The thesis' augmentations: batched on the device, and as MONAI transforms (the reference)."""
