"""SP-ViT: parity with the official PyTorch model, parameter counts, 224 -> 384 adaptation.

Fixtures (tests/fixtures/spvit_mini, spvit_sp_mini) were made by running the
official `SP_ViT` (ZhouYuxuanYX/SP-ViT, tlt/models/spvit.py) on random weights:
  model.pth / input.npy / logits.npy   eval output, 64 px, local_up_to_layer 0 and 1 (one SP block)
  finetune96_*.npy                     the official fine-tuning load (`tlt/utils.load_state_dict`,
                                       bicubic pos_embed resize) into the model at 96 px, and its logits
  train_mixtoken.npz (sp_mini)         the official training forward (MixToken, np.random.seed(3)),
                                       its token-label targets (`mixup_target`) and loss
                                       (`TokenLabelCrossEntropy`, dense 0.7, cls 1.3)
"""
import json
import os

import numpy as np
import paddle
import pytest

from engine.families import build_from_config, load_family
from engine.token_labeling import DenseOutput, TokenLabelCrossEntropy, token_label_targets
from port_weights.keymap import check_state
from port_weights.port import max_abs_diff, port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures')
CONFIGS = os.path.join(REPO, 'image_classification', 'SPViT', 'configs')
S224 = os.path.join(CONFIGS, 'spvit_s_224.yaml')

# the official models' parameter counts (golden README for 224; the official code run at 384)
OFFICIAL_PARAMS = {
    ('s', 224): 26_234_468, ('m', 224): 55_952_992, ('l', 224): 150_205_520,
    ('s', 384): 26_380_388, ('m', 384): 56_147_552, ('l', 384): 150_497_360,
}


def mini_opts(name, image_size=None):
    args = json.load(open(os.path.join(FIXTURES, name, 'meta.json')))['official_class_args']
    opts = {'DATA.IMAGE_SIZE': image_size or args['img_size'], 'MODEL.EMBED_DIM': args['embed_dim'],
            'MODEL.DEPTH': args['depth'], 'MODEL.NUM_HEADS': args['num_heads'],
            'MODEL.MLP_RATIO': args['mlp_ratio'], 'MODEL.SKIP_LAM': args['skip_lam'],
            'MODEL.NUM_CLASSES': args['num_classes'], 'MODEL.PATCH_SIZE': args['patch_size'],
            'MODEL.LOCAL_UP_TO_LAYER': args.get('local_up_to_layer', 0), 'MODEL.DROPPATH': 0.0}
    assert args['p_emb'] == '4_2'
    return [str(v) for kv in opts.items() for v in kv]


def trainable(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)


@pytest.mark.parametrize('name', ['spvit_mini', 'spvit_sp_mini'])
def test_parity_with_official(name):
    d = os.path.join(FIXTURES, name)
    _, model, _ = port(os.path.join(d, 'model.pth'), S224, mini_opts(name), log=lambda m: None)
    meta = json.load(open(os.path.join(d, 'meta.json')))
    assert trainable(model) == meta['params']
    diff = max_abs_diff(model, np.load(os.path.join(d, 'input.npy')), np.load(os.path.join(d, 'logits.npy')))
    assert diff <= 1e-4, diff


def test_sp_block_is_spatial_prior_attention():
    _, model, _ = port(os.path.join(FIXTURES, 'spvit_sp_mini', 'model.pth'), S224, mini_opts('spvit_sp_mini'),
                       log=lambda m: None)
    assert type(model.blocks[0].attn).__name__ == 'SpatialPriorAttention'
    assert type(model.blocks[1].attn).__name__ == 'Attention'


@pytest.mark.parametrize('name', ['spvit_mini', 'spvit_sp_mini'])
def test_finetune_resize_matches_official(name):
    """A 64 px checkpoint loaded into a 96 px model: pos_embed resized as the official fine-tuning
    does (bicubic, class token kept apart when present), spatial priors evaluated on the 6x6 grid."""
    d = os.path.join(FIXTURES, name)
    messages = []
    _, model, state = port(os.path.join(d, 'model.pth'), S224, mini_opts(name, image_size=96), log=messages.append)
    assert any('pos_embed resized' in m for m in messages)
    assert np.abs(state['pos_embed'] - np.load(os.path.join(d, 'finetune96_pos_embed.npy'))).max() < 1e-6
    diff = max_abs_diff(model, np.load(os.path.join(d, 'finetune96_input.npy')),
                        np.load(os.path.join(d, 'finetune96_logits.npy')))
    assert diff <= 1e-4, diff


def test_training_forward_targets_and_loss_match_official():
    """MixToken forward (same np.random draws), token-label targets from top-k maps, and the loss."""
    d = os.path.join(FIXTURES, 'spvit_sp_mini')
    _, model, _ = port(os.path.join(d, 'model.pth'), S224, mini_opts('spvit_sp_mini'), log=lambda m: None)
    ref = np.load(os.path.join(d, 'train_mixtoken.npz'))
    model.train()
    np.random.seed(int(ref['np_seed']))
    out = model(paddle.to_tensor(np.load(os.path.join(d, 'input.npy'))))
    assert isinstance(out, DenseOutput)
    assert tuple(out.box) == tuple(ref['box'].tolist())       # (rows, cols) top-left, bottom-right
    assert np.abs(out.cls_logits.numpy() - ref['cls_logits']).max() < 1e-5
    assert np.abs(out.aux_logits.numpy() - ref['aux_logits']).max() < 1e-5
    # the official passes the crop (top, left, h, w) to RoIAlign as (x1, y1, ...): feed the same numbers
    c = ref['coords']
    boxes = np.stack([c[:, 0], c[:, 1], c[:, 0] + c[:, 2], c[:, 1] + c[:, 3]], axis=1)
    targets = token_label_targets(paddle.to_tensor(ref['scores']), paddle.to_tensor(ref['indices']),
                                  paddle.to_tensor(boxes), 10, 4, float(ref['smoothing']))
    assert np.abs(targets.cls.numpy() - ref['target'][:, :, 1]).max() < 1e-6
    assert np.abs(targets.dense.numpy() - ref['target'][:, :, 2:].transpose(0, 2, 1)).max() < 1e-6
    loss = TokenLabelCrossEntropy(float(ref['dense_weight']), float(ref['cls_weight']))(out, targets)
    assert abs(loss.item() - float(ref['loss'])) < 1e-5


def test_eval_output_is_cls_plus_half_max_of_aux():
    _, model, _ = port(os.path.join(FIXTURES, 'spvit_sp_mini', 'model.pth'), S224, mini_opts('spvit_sp_mini'),
                       log=lambda m: None)
    model.eval()
    x = paddle.to_tensor(np.load(os.path.join(FIXTURES, 'spvit_sp_mini', 'input.npy')))
    with paddle.no_grad():
        cls, aux = model.forward_dense(x)
        logits = model(x)
    assert aux.shape == [2, 16, 10]
    np.testing.assert_allclose(logits.numpy(), (cls + 0.5 * aux.max(axis=1)).numpy(), atol=1e-6)
    assert np.abs(logits.numpy() - cls.numpy()).max() > 1e-3     # the aux term is really there


def test_training_without_token_labels_returns_eval_style_logits():
    config, model = build_from_config(S224, mini_opts('spvit_sp_mini') + ['TRAIN.TOKEN_LABEL.ENABLE', 'False'])
    assert model.mix_token is None
    model.train()
    x = paddle.to_tensor(np.load(os.path.join(FIXTURES, 'spvit_sp_mini', 'input.npy')))
    out = model(x)
    assert isinstance(out, paddle.Tensor) and out.shape == [2, 10]
    cls, aux = model.forward_dense(x)
    np.testing.assert_allclose(out.numpy(), (cls + 0.5 * aux.max(axis=1)).numpy(), atol=1e-5)


def test_spatial_prior_equals_the_official_per_pair_evaluation():
    """The prior is evaluated once per distinct offset and gathered; check it against the
    official per-pair form (w2 . relu(w1 [dx, dy]) + b2 for every query/key pair) on a 3x5 grid."""
    from importlib import import_module
    load_family('SPViT')
    spvit = import_module('_family_spvit_spvit')
    paddle.seed(0)
    attn = spvit.SpatialPriorAttention(dim=12, num_heads=3, grid=(3, 5))
    for p in (attn.w2, attn.b2):
        p.set_value(paddle.randn(p.shape))
    h, w = 3, 5
    prior = attn.spatial_prior().numpy()                                  # [heads, N, N]
    rows, cols = np.divmod(np.arange(h * w), w)
    rel = np.stack([cols[None, :] - cols[:, None], rows[None, :] - rows[:, None]], -1).astype('float32')
    feats = np.maximum(rel @ attn.w1.weight.numpy() + attn.w1.bias.numpy(), 0)   # [N, N, dim]
    feats = feats.reshape(h * w, h * w, 3, 4)
    naive = np.einsum('nm,ijnm->nij', attn.w2.numpy().reshape(3, 4), feats) + attn.b2.numpy()[:, None, None]
    np.testing.assert_allclose(prior, naive, atol=1e-5)


@pytest.mark.parametrize('variant', ['s', 'm', 'l'])
@pytest.mark.parametrize('size', [224, 384])
def test_parameter_counts_equal_official(variant, size):
    with paddle.LazyGuard():
        config, model = build_from_config(os.path.join(CONFIGS, f'spvit_{variant}_{size}.yaml'))
    assert config.MODEL.NAME == f'spvit_{variant}_{size}'
    assert trainable(model) == OFFICIAL_PARAMS[(variant, size)]
    sp_blocks = sum(type(b.attn).__name__ == 'SpatialPriorAttention' for b in model.blocks)
    assert sp_blocks == {'s': 14, 'm': 10, 'l': 0}[variant]     # official lvvit_l: none (see spvit.py)


@pytest.mark.parametrize('variant', ['s', 'l'])
def test_adapt_state_dict_224_to_384_and_back(variant):
    with paddle.LazyGuard():
        _, m224 = build_from_config(os.path.join(CONFIGS, f'spvit_{variant}_224.yaml'))
        _, m384 = build_from_config(os.path.join(CONFIGS, f'spvit_{variant}_384.yaml'))
    shapes224 = {k: tuple(v.shape) for k, v in m224.state_dict().items()}
    shapes384 = {k: tuple(v.shape) for k, v in m384.state_dict().items()}
    rng = np.random.default_rng(0)
    # only pos_embed is read; the other entries are zero-cost views of the right shapes
    state224 = {k: rng.standard_normal(s).astype('float32') if k == 'pos_embed' else np.broadcast_to(np.float32(0), s)
                for k, s in shapes224.items()}
    state = dict(state224)
    messages = m384.adapt_state_dict(state)
    assert len(messages) == 1 and 'pos_embed' in messages[0]
    check_state(shapes384, state, source='224 adapted to 384')        # every key, every shape
    assert state['pos_embed'].shape == (1, 24 * 24, shapes224['pos_embed'][2])   # no class slot (late cls)
    for key in state224:                                               # nothing else changed (SP params too)
        if key != 'pos_embed':
            assert state[key] is state224[key]
    back = dict(state)
    assert len(m224.adapt_state_dict(back)) == 1
    check_state(shapes224, back, source='384 adapted back to 224')
    same = dict(state224)
    assert m224.adapt_state_dict(same) == [] and same['pos_embed'] is state224['pos_embed']


def test_adapt_keeps_class_token_slot_of_lvvit_style_pos_embed():
    """local_up_to_layer 0: pos_embed has a class-token slot that is kept out of the resize."""
    _, m64 = build_from_config(S224, mini_opts('spvit_mini'))
    _, m96 = build_from_config(S224, mini_opts('spvit_mini', image_size=96))
    state = {k: v.numpy() for k, v in m64.state_dict().items()}
    m96.adapt_state_dict(state)
    assert state['pos_embed'].shape == (1, 1 + 36, 48)
    np.testing.assert_array_equal(state['pos_embed'][:, 0], m64.pos_embed.numpy()[:, 0])


@pytest.mark.parametrize('variant,crop', [('s', 0.9), ('m', 1.0), ('l', 1.0)])
def test_configs_eval_preprocessing_and_recipe(variant, crop):
    family = load_family('SPViT')
    for size in (224, 384):
        c = family.get_config(os.path.join(CONFIGS, f'spvit_{variant}_{size}.yaml'))
        assert (c.DATA.IMAGE_SIZE, c.DATA.CROP_PCT, c.DATA.INTERPOLATION) == (size, crop, 'bicubic')
        assert list(c.DATA.MEAN) == [0.485, 0.456, 0.406] and list(c.DATA.STD) == [0.229, 0.224, 0.225]
        assert c.TRAIN.TOKEN_LABEL.ENABLE and c.TRAIN.TOKEN_LABEL.MIX_TOKEN
        assert c.TRAIN.MIXUP_ALPHA == 0 and c.TRAIN.CUTMIX_ALPHA == 0
        assert c.MODEL.DROPPATH == {'s': 0.1, 'm': 0.2, 'l': 0.3}[variant]
        if size == 384:
            assert (c.TRAIN.BASE_LR, c.TRAIN.END_LR, c.TRAIN.WEIGHT_DECAY) == (5e-6, 5e-6, 1e-8)


def test_label_dir_flag_sets_config():
    import argparse
    family = load_family('SPViT')
    args = argparse.Namespace(cfg=S224, token_label_dir='/labels', opts=None)
    assert family.get_config(args=args).TRAIN.TOKEN_LABEL.DATA_DIR == '/labels'
    args.opts = ['TRAIN.TOKEN_LABEL.DATA_DIR', '/other']            # -opts wins over the flag
    assert family.get_config(args=args).TRAIN.TOKEN_LABEL.DATA_DIR == '/other'


@pytest.mark.slow
def test_export_with_jit_save(tmp_path):
    """The eval model converts to a static graph and reloads with the same outputs (the
    spatial-prior offset tables are non-persistable buffers, not stray constants)."""
    _, model, _ = port(os.path.join(FIXTURES, 'spvit_sp_mini', 'model.pth'), S224, mini_opts('spvit_sp_mini'),
                       log=lambda m: None)
    model.eval()
    x = paddle.to_tensor(np.load(os.path.join(FIXTURES, 'spvit_sp_mini', 'input.npy')))
    static = paddle.jit.to_static(model, input_spec=[paddle.static.InputSpec([None, 3, 64, 64], 'float32')],
                                  full_graph=True)
    paddle.jit.save(static, str(tmp_path / 'spvit'))
    loaded = paddle.jit.load(str(tmp_path / 'spvit'))
    np.testing.assert_allclose(loaded(x).numpy(), np.load(os.path.join(FIXTURES, 'spvit_sp_mini', 'logits.npy')),
                               atol=1e-4)
