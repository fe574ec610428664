"""Exponential moving average of model weights (timm's ModelEmaV2 / ModelEmaV3 semantics).

ema = d * ema + (1 - d) * value after every optimizer step, for every
floating-point entry of the state dict (BatchNorm statistics included, as in
timm); integer entries are copied.  The EMA copy is evaluated and saved beside
the model and restored on resume.

d is TRAIN.MODEL_EMA_DECAY, or with TRAIN.MODEL_EMA_WARMUP (timm's
`--model-ema-warmup`, ModelEmaV3.get_decay with its defaults) the smaller of it
and (1 + t) / (10 + t) at update t = 0, 1, 2, ...: the first updates follow the
model closely (0.1, 0.18, 0.25, ...) instead of averaging it with the random
initialisation for thousands of steps.  The update count t is saved in the
checkpoint's `.pdopt` (`ema_updates`), so a resumed run continues the same
sequence of decays.
"""
import copy

import paddle


class ModelEMA:
    def __init__(self, model, decay, warmup=False):
        self.decay = decay
        self.warmup = warmup
        self.updates = 0                 # updates done so far: t of the next update
        self.module = copy.deepcopy(model)
        self.module.eval()
        for param in self.module.parameters():
            param.stop_gradient = True

    def current_decay(self):
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        t = self.updates
        return min(self.decay, (1 + t) / (10 + t))

    @paddle.no_grad()
    def update(self, model):
        decay = self.current_decay()
        ema_state = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if paddle.is_floating_point(value):
                target.set_value(target * decay + value.astype(target.dtype) * (1 - decay))
            else:
                target.set_value(value)
        self.updates += 1

    def state_dict(self):
        return self.module.state_dict()
