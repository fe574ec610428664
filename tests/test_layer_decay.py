"""Layer-wise LR decay (TRAIN.LAYER_DECAY, engine/optim.py): after one optimizer step, the
update of chosen parameters of every family shows the learning rate
base x decay ** (num_layers + 1 - layer id), with the layer ids written out here by hand from
each family's block order, and weight decay still skips biases, norms and embeddings."""
import os

import numpy as np
import paddle
import pytest

from conftest import FIXTURES, REPO
from engine.config import ConfigError
from engine.families import build_from_config
from engine.optim import build_optimizer, build_scheduler, no_decay_names

CONFIGS = os.path.join(REPO, 'image_classification')
TINY_PIT = ['DATA.IMAGE_SIZE', '64', 'MODEL.BASE_DIMS', '[8, 8, 8]', 'MODEL.DEPTH', '[2, 1, 1]',
            'MODEL.NUM_HEADS', '[2, 2, 4]']
# name: (config, opts, num_layers, {parameter: its layer id, by hand})
CASES = {
    'vit_r50': (os.path.join(FIXTURES, 'vit_r50_mini', 'vit_r50_mini.yaml'), [], 2, {
        'cls_token': 0, 'pos_embed': 0, 'patch_embed.backbone.root.conv.weight': 0,
        'blocks.0.attn.qkv.weight': 1, 'blocks.1.mlp.fc2.bias': 2, 'norm.weight': 3, 'head.weight': 3}),
    'pit_distilled': ('PiT/configs/pit_ti_distilled_224.yaml', TINY_PIT, 4, {
        'cls_token': 0, 'patch_embed.conv.weight': 0, 'transformers.0.blocks.0.attn.qkv.weight': 1,
        'transformers.0.blocks.1.mlp.fc1.weight': 2, 'pools.0.conv.weight': 3, 'pools.0.fc.weight': 3,
        'transformers.1.blocks.0.attn.proj.weight': 3, 'pools.1.fc.bias': 4,
        'transformers.2.blocks.0.norm1.weight': 4, 'head.weight': 5, 'head_dist.weight': 5}),
    'pervit': (os.path.join(FIXTURES, 'pervit_mini', 'pervit_mini.yaml'),
               ['DATA.IMAGE_SIZE', '64', 'MODEL.DEPTHS', '[1, 1, 1, 1]'], 4, {
        'stem.convs.0.conv.weight': 0, 'rpe_proj.weight': 0, 'blocks.0.attn.qkv.weight': 1,
        'blocks.1.res_path.weight': 2, 'blocks.3.mlp.fc2.weight': 4, 'head.weight': 5}),
    'spvit': ('SPViT/configs/spvit_s_224.yaml',
              ['DATA.IMAGE_SIZE', '64', 'MODEL.EMBED_DIM', '48', 'MODEL.DEPTH', '3', 'MODEL.NUM_HEADS', '2',
               'MODEL.LOCAL_UP_TO_LAYER', '2'], 3, {
        'cls_token': 0, 'patch_embed.conv1.weight': 0, 'blocks.0.attn.qk.weight': 1, 'blocks.1.attn.w2': 2,
        'blocks.2.mlp.fc1.weight': 3, 'head.weight': 4, 'aux_head.weight': 4}),
    'vvt': (os.path.join(FIXTURES, 'vvt_mini', 'vvt_mini.yaml'), [], None, None),
}
DECAY, LR, WD = 0.5, 1e-3, 0.05


def _vvt_expected(model):
    """VVT's layer ids by hand: stage s's blocks after those of earlier stages; its downsampling
    patch embedding with its first block (the first one is the embedding, 0); its norm with the
    next stage's first block, the last norm and the head after the last block."""
    first, ids = 1, {}
    depths = [len(stage.blocks) for stage in model.stages]
    for s, depth in enumerate(depths):
        ids[f'stages.{s}.patch_embed.proj.weight'] = 0 if s == 0 else first
        ids[f'stages.{s}.blocks.0.attn.qkv.weight'] = first
        ids[f'stages.{s}.blocks.{depth - 1}.mlp.fc2.weight'] = first + depth - 1
        first += depth
        ids[f'stages.{s}.norm.weight'] = first
    ids['head.weight'] = first
    return sum(depths), ids


@pytest.mark.parametrize('optimizer', ['AdamW', 'SGD'])
@pytest.mark.parametrize('name', sorted(CASES))
def test_effective_lr_of_each_layer(name, optimizer):
    cfg, opts, num_layers, expected = CASES[name]
    paddle.seed(0)
    config, model = build_from_config(
        cfg if os.path.isabs(cfg) else os.path.join(CONFIGS, cfg),
        opts + ['TRAIN.LAYER_DECAY', str(DECAY), 'TRAIN.OPTIMIZER.NAME', optimizer, 'TRAIN.BASE_LR', str(LR),
                'TRAIN.WEIGHT_DECAY', str(WD), 'TRAIN.LINEAR_SCALED_LR', 'None',
                'TRAIN.LR_SCHEDULER.NAME', 'constant', 'MODEL.DROPPATH', '0', 'TRAIN.GRAD_CLIP', 'None'])
    if expected is None:
        num_layers, expected = _vvt_expected(model)
    assert model.num_layers() == num_layers
    params = dict(model.named_parameters())
    assert set(expected) <= set(params), set(expected) - set(params)
    opt = build_optimizer(config, model, build_scheduler(config, 10, 1))

    model.train()
    size = config.DATA.IMAGE_SIZE
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((2, 3, size, size)).astype('float32'))
    out = model(x)
    outputs = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (tuple, list)) else [out]
    sum((t * paddle.arange(t.size, dtype='float32').reshape(t.shape).sin()).sum()
        for t in outputs if isinstance(t, paddle.Tensor)).backward()
    before = {n: p.numpy().copy() for n, p in params.items()}
    grads = {n: p.grad.numpy().copy() for n, p in params.items() if p.grad is not None}
    opt.step()

    skip = no_decay_names(model)
    for key in ['cls_token', 'norm.weight', 'head.bias'] + list(expected):
        if key not in params:
            continue
        layer = expected.get(key, model.layer_id(key))
        lr = LR * DECAY ** (num_layers + 1 - layer)
        p, g = before[key], grads[key]
        wd = 0.0 if key in skip else WD
        if optimizer == 'SGD':             # first momentum step: p - lr (g + wd p)
            want = p - lr * (g + wd * p)
        else:                              # first AdamW step: p (1 - lr wd) - lr g / (|g| + eps)
            want = p * (1 - lr * wd) - lr * g / (np.abs(g) + 1e-8)
        # compare the update itself; its tolerance (float32 rounding of p, 0.1% of the update)
        # must leave a wrong layer (a factor of DECAY = 0.5 on the update) far outside it
        delta = want - p
        tol = 1e-3 * np.abs(delta).max() + 4 * np.finfo(np.float32).eps * np.abs(p).max()
        assert np.abs(delta).max() > 3 * tol, key
        np.testing.assert_allclose(params[key].numpy() - p, delta, rtol=0, atol=tol, err_msg=key)
    assert 'cls_token' not in params or 'cls_token' in skip


def test_layer_decay_needs_a_layer_order():
    """RegNet defines none: TRAIN.LAYER_DECAY is refused with a message, not ignored."""
    config, model = build_from_config(
        os.path.join(CONFIGS, 'RegNet/configs/regnety_400mf.yaml'),
        ['DATA.IMAGE_SIZE', '64', 'MODEL.STEM_WIDTH', '8', 'MODEL.W0', '16', 'MODEL.WA', '12.0',
         'MODEL.WM', '1.5', 'MODEL.DEPTH', '5', 'MODEL.GROUP_W', '12', 'TRAIN.LAYER_DECAY', '0.75'])
    with pytest.raises(ConfigError, match='TRAIN.LAYER_DECAY = 0.75: RegNet models define no layer order'):
        build_optimizer(config, model, build_scheduler(config, 10, 1))


def test_layer_decay_one_or_none_keeps_a_single_rate():
    config, model = build_from_config(os.path.join(FIXTURES, 'vit_r50_mini', 'vit_r50_mini.yaml'),
                                      ['TRAIN.LAYER_DECAY', '1.0'])
    opt = build_optimizer(config, model, build_scheduler(config, 10, 1))
    assert all(p.optimize_attr['learning_rate'] == 1.0 for p in model.parameters())
    with pytest.raises(ConfigError, match=r'TRAIN.LAYER_DECAY = 1.5 is not allowed: must be in \(0, 1\]'):
        build_from_config(os.path.join(FIXTURES, 'vit_r50_mini', 'vit_r50_mini.yaml'), ['TRAIN.LAYER_DECAY', '1.5'])
    del opt
