"""A classification model of any family used as the feature extractor of a segmentor.

The family builds the model from the segmentation config (its own keys and
builder), then everything the segmentor never runs is removed: the classifier
head(s) (`CLASSIFIER`) and the final norm (the official segmentation backbone
has none: `final_norm=False`).  Unused parameters would get no gradient,
which DataParallel refuses and the parameter count would misstate.  Features
come from `forward_intermediates` (engine/features.py) at `SEG.OUT_INDICES`.

Initialisation from a classification checkpoint (`MODEL.PRETRAINED`): strict on
the backbone's keys (every one must be there with its shape, after the family's
`adapt_state_dict` resized the position embedding to the crop's grid); only the
removed layers' keys may be left over, and they are named in the log.
"""
import paddle.nn as nn

from engine.families import load_family
from engine.weights import load_weights

# what a classifier has beyond its feature extractor (besides its `CLASSIFIER` heads)
FINAL_NORM = 'norm'


class Backbone(nn.Layer):
    """`model.forward_intermediates(x, indices, intermediates_only=True)` as a layer."""

    def __init__(self, model, out_indices):
        super().__init__()
        self.model = model
        self.out_indices = list(out_indices)
        info = model.feature_info
        if any(not -len(info) <= i < len(info) for i in self.out_indices):
            raise ValueError(f'SEG.OUT_INDICES {self.out_indices}: this backbone has {len(info)} features')
        self.channels = [info[i]['num_chs'] for i in self.out_indices]
        self.reductions = [info[i]['reduction'] for i in self.out_indices]

    def forward(self, x):
        return self.model.forward_intermediates(x, indices=self.out_indices, intermediates_only=True)


def strip_classifier(model):
    """Remove the heads and the final norm from `model`; returns their parameter-name prefixes."""
    removed = []
    for name in tuple(getattr(model, 'CLASSIFIER', ('head',))) + (FINAL_NORM,):
        owner_name, _, attr = name.rpartition('.')
        owner = model
        for part in filter(None, owner_name.split('.')):
            owner = getattr(owner, part)
        if attr in owner._sub_layers:
            del owner._sub_layers[attr]
            removed.append(name)
    return removed


def build_backbone(config):
    """(Backbone, removed prefixes) for the config's MODEL.TYPE, built at DATA.IMAGE_SIZE."""
    model = load_family(config.MODEL.TYPE).build_model(config)
    removed = strip_classifier(model)
    return Backbone(model, config.SEG.OUT_INDICES), removed


def load_backbone_weights(backbone, state, removed, name, log=print):
    """A classification state dict (read from `name`) into `backbone.model`, strictly on its keys
    (module doc), through `engine.weights.load_weights` with the position embedding resized."""
    state = dict(state)
    unused = sorted(k for k in state if any(k == p or k.startswith(p + '.') for p in removed))
    for key in unused:
        del state[key]
    if unused:
        log(f'backbone: not used by the segmentor: {", ".join(unused)}')
    load_weights(backbone.model, state, what='backbone', name=name, resize=True, log=log)
