"""How a family extends the shared launcher without copying it.

A family's `main_*.py` may pass an instance of a `FamilyHooks` subclass to
`engine.launcher.main`.  Each method's default is what the engine does for a
plain classifier, so a family overrides only what differs (PerViT adds
`-visualize`, SP-ViT trains on token labels, ...).
"""


class FamilyHooks:
    def add_arguments(self, parser):
        """Add family-specific command-line flags to the shared parser."""

    def build_dataset(self, config, mode):
        """A dataset for `mode` ('train' | 'val'), or None for the engine's list dataset."""
        return None

    def build_batch_mix(self, config):
        """A `(images, targets) -> (images, targets)` batch transform for training,
        or None for the engine's mixup/cutmix from the TRAIN.* config."""
        return None

    def build_criterion(self, config):
        """A training loss `(outputs, targets) -> scalar`, or None for the engine's
        (soft-target CE under mixup, label-smoothed CE otherwise)."""
        return None

    def after_eval(self, model, config, args, logger):
        """Called once after `-eval` finished (e.g. to save visualisations)."""
