"""Where training is when an objective is called: the engine makes a Step per batch, a method's
objective may read it (delays, warm-ups)."""
from typing import NamedTuple


class Step(NamedTuple):
    epoch: int                       # 0-based
    step: int                        # 0-based batch of the epoch
    steps: int                       # batches per epoch

    @property
    def global_step(self):
        return self.epoch * self.steps + self.step
