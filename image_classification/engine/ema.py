"""Exponential moving average of model weights (timm's ModelEmaV2 semantics).

ema = decay * ema + (1 - decay) * value after every optimizer step, for every
floating-point entry of the state dict (BatchNorm statistics included, as in
timm); integer entries are copied.  The EMA copy is evaluated and saved beside
the model and restored on resume.
"""
import copy

import paddle


class ModelEMA:
    def __init__(self, model, decay):
        self.decay = decay
        self.module = copy.deepcopy(model)
        self.module.eval()
        for param in self.module.parameters():
            param.stop_gradient = True

    @paddle.no_grad()
    def update(self, model):
        ema_state = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if paddle.is_floating_point(value):
                target.set_value(target * self.decay + value.astype(target.dtype) * (1 - self.decay))
            else:
                target.set_value(value)

    def state_dict(self):
        return self.module.state_dict()

    def set_state_dict(self, state):
        self.module.set_state_dict(state)
