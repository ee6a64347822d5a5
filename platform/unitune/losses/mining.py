"""Negative-mining modes of the unified loss and a warm-up schedule over epochs."""

MINING_MODES = ("all", "hardest", "topk")


def check_mining(mining):
    """Raise ValueError naming `mining` unless it is one of MINING_MODES."""
    if mining not in MINING_MODES:
        raise ValueError(f"mining must be one of {MINING_MODES}, got {mining!r}")


class MiningSchedule:
    """Mining mode per epoch: "all" during warm-up, then `mining` (as VSE∞ warms up).

    Epochs are 1-based, as the training loop counts them: with `warmup_epochs=2`,
    `at(1)` and `at(2)` return "all" and `at(3)` returns `mining`.

    Raises ValueError naming `mining` (not in MINING_MODES) or `warmup_epochs`
    (not an int >= 0).
    """

    def __init__(self, mining, warmup_epochs=0):
        check_mining(mining)
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
        self.mining = mining
        self.warmup_epochs = warmup_epochs

    def at(self, epoch):
        """Mining mode for the 1-based `epoch`; ValueError naming `epoch` if it is not an int >= 1."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ValueError(f"epoch is 1-based and must be an int >= 1, got {epoch!r}")
        return "all" if epoch <= self.warmup_epochs else self.mining

    def __repr__(self):
        return f"MiningSchedule({self.mining!r}, warmup_epochs={self.warmup_epochs})"
