"""Run a recipe module with fp16 overflows forced: a test double of the loss scaler for CPU machines.

``accelerate launch tests/loss_scaler_double.py 2,3 scripts.bert.pretrain ARGS...`` runs the module as
``python -m`` would, with accelerate's optimizer wrapper treating the given optimizer-step attempts
(counted from 1, per process, over the whole run) as a ``torch.amp.GradScaler`` treats steps whose
gradients hold inf/NaN: the wrapped optimizer does not step and ``step_was_skipped`` is true.
"""

from __future__ import annotations

import runpy
import sys

from accelerate.optimizer import AcceleratedOptimizer


def force_overflows(attempts: set[int]) -> None:
    """Skip the optimizer-step attempts in ``attempts`` as the loss scaler skips an overflowed step."""
    original_step = AcceleratedOptimizer.step
    counter = {"attempt": 0}

    def step(self: AcceleratedOptimizer, closure=None):  # type: ignore[no-untyped-def]
        if self.gradient_state.sync_gradients:
            counter["attempt"] += 1
            self._is_overflow = counter["attempt"] in attempts
            if self._is_overflow:
                return None
        return original_step(self, closure)

    AcceleratedOptimizer.step = step  # type: ignore[method-assign]


if __name__ == "__main__":
    overflows, module, *arguments = sys.argv[1:]
    force_overflows({int(attempt) for attempt in overflows.split(",")})
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
