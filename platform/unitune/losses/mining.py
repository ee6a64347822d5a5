"""Negative-mining modes of the unified loss and a warm-up schedule over epochs."""

from unitune.choices import MINING_MODES, WARMUP_MODES  # the job file's modes (see unitune.choices)


def check_mining(mining):
    """Raise ValueError naming `mining` unless it is one of MINING_MODES."""
    if mining not in MINING_MODES:
        raise ValueError(f"mining must be one of {MINING_MODES}, got {mining!r}")


class MiningSchedule:
    """Mode per epoch: `warmup_mining` during warm-up, then `mining` (as VSE∞ warms up).

    Epochs are 1-based, as the training loop counts them: with `warmup_epochs=2`,
    `at(1)` and `at(2)` return `warmup_mining` and `at(3)` returns `mining`. The modes are
    those of `scheduled_loss`: MINING_MODES (the unified loss) and "hinge_mean".

    Raises ValueError naming `mining` (not in MINING_MODES), `warmup_epochs` (not an
    int >= 0) or `warmup_mining` (not in WARMUP_MODES).
    """

    def __init__(self, mining, warmup_epochs=0, warmup_mining="all"):
        check_mining(mining)
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
        if warmup_mining not in WARMUP_MODES:
            raise ValueError(f"warmup_mining must be one of {WARMUP_MODES}, got {warmup_mining!r}")
        self.mining = mining
        self.warmup_epochs = warmup_epochs
        self.warmup_mining = warmup_mining

    def at(self, epoch):
        """Mode for the 1-based `epoch`; ValueError naming `epoch` if it is not an int >= 1."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ValueError(f"epoch is 1-based and must be an int >= 1, got {epoch!r}")
        return self.warmup_mining if epoch <= self.warmup_epochs else self.mining

    def __repr__(self):
        return (
            f"MiningSchedule({self.mining!r}, warmup_epochs={self.warmup_epochs}, warmup_mining={self.warmup_mining!r})"
        )
