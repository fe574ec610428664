"""Every family's exported graph runs through Paddle Inference, with oneDNN and without,
and gives the dynamic model's logits (tools/export_model.py + tools/predict.py).

The export tests in test_export.py use a tiny stand-in model; Paddle Inference's
oneDNN passes fuse op patterns, and a pattern only one family's graph has can
break only that family (PerViT's peripheral position encoding did: its predictor
could not be built with oneDNN).  So each case is a small model made from the
family's smallest config with small widths and depths but every block type of
the family's graph: ViT's class token (and the R50 hybrid stem), PiT's pooling
layers (and the distillation token), PerViT's peripheral position encoding and
its stage-change shortcut, SP-ViT's spatial-prior blocks followed by class-token
blocks, VVT's vicinity attention, RegNetY's grouped SE bottlenecks.

Weights are moved away from their initialisation (PerViT starts its position
encoding from constants, under which a kernel that mixes up elements can still
give the right numbers) and BatchNorm gets non-trivial statistics.
"""
import os

import numpy as np
import paddle
import pytest

from conftest import FIXTURES, REPO, kernel_ops_in_graph
from engine.cpu import dispatch as cpu_dispatch
from engine.errors import UserError
from engine.families import build_from_config
from tools import export_model, predict

pytestmark = pytest.mark.slow   # an export and two Paddle Inference predictors per family

CONFIGS = os.path.join(REPO, 'image_classification')
TINY_PIT = ['DATA.IMAGE_SIZE', '64', 'MODEL.BASE_DIMS', '[8, 8, 8]', 'MODEL.DEPTH', '[1, 1, 1]',
            'MODEL.NUM_HEADS', '[2, 2, 4]']
CASES = {   # name: (config, opts)
    'vit': ('ViT/configs/vit_tiny_patch16_224.yaml',
            ['DATA.IMAGE_SIZE', '32', 'MODEL.PATCH_SIZE', '8', 'MODEL.EMBED_DIM', '32', 'MODEL.DEPTH', '2',
             'MODEL.NUM_HEADS', '2', 'MODEL.MLP_DIM', '64']),
    'vit_r50': (os.path.join(FIXTURES, 'vit_r50_mini', 'vit_r50_mini.yaml'), []),
    'pit': ('PiT/configs/pit_ti_224.yaml', TINY_PIT),
    'pit_distilled': ('PiT/configs/pit_ti_distilled_224.yaml', TINY_PIT),
    'pervit': (os.path.join(FIXTURES, 'pervit_mini', 'pervit_mini.yaml'),
               ['DATA.IMAGE_SIZE', '64', 'MODEL.DEPTHS', '[1, 1, 1, 1]']),
    'spvit': ('SPViT/configs/spvit_s_224.yaml',
              ['DATA.IMAGE_SIZE', '64', 'MODEL.EMBED_DIM', '48', 'MODEL.DEPTH', '2', 'MODEL.NUM_HEADS', '2',
               'MODEL.LOCAL_UP_TO_LAYER', '1']),
    'vvt': (os.path.join(FIXTURES, 'vvt_mini', 'vvt_mini.yaml'), []),
    'regnety': ('RegNet/configs/regnety_400mf.yaml',
                ['DATA.IMAGE_SIZE', '64', 'MODEL.STEM_WIDTH', '8', 'MODEL.W0', '16', 'MODEL.WA', '12.0',
                 'MODEL.WM', '1.5', 'MODEL.DEPTH', '5', 'MODEL.GROUP_W', '12']),
}
RTOL = 1e-4   # of the largest logit; measured: at most 2e-6 with oneDNN, 1e-6 without
ONNX_ATOL = 1e-5   # ONNX Runtime against Paddle Inference (the bound); measured: at most 1e-6


def _randomised(model, rng):
    """`model` in eval mode with every weight moved off its initialisation and BatchNorm
    statistics set (mean in [-0.5, 0.5], variance in [0.5, 2])."""
    for key, value in model.state_dict().items():
        a = value.numpy()
        if key.endswith('_variance'):
            a = rng.uniform(0.5, 2.0, a.shape)
        elif key.endswith('_mean'):
            a = rng.uniform(-0.5, 0.5, a.shape)
        else:
            a = a + rng.normal(0.0, 0.1, a.shape)
        value.set_value(a.astype(value.numpy().dtype))
    model.eval()                # also drops PerViT's cached position attention
    return model


@pytest.fixture(scope='module', params=sorted(CASES))
def exported(request, tmp_path_factory):
    """(name, config, model dir, input batch, dynamic-model logits) of one family."""
    name = request.param
    cfg, opts = CASES[name]
    paddle.seed(0)
    config, model = build_from_config(os.path.join(CONFIGS, cfg), opts)
    rng = np.random.default_rng(0)
    model = _randomised(model, rng)
    folder = str(tmp_path_factory.mktemp(f'export_{name}'))
    export_model.export(model, config.DATA.IMAGE_SIZE, folder)
    size = config.DATA.IMAGE_SIZE
    x = rng.standard_normal((2, config.DATA.IMAGE_CHANNELS, size, size)).astype('float32')
    with paddle.no_grad():
        reference = model(paddle.to_tensor(x)).numpy()
    kernels = str(tmp_path_factory.mktemp(f'export_{name}_cpu_kernels'))
    if cpu_dispatch.enabled() and cpu_dispatch.kernels().available():
        export_model.export(model, size, kernels, cpu_kernels=True)
    return name, config, folder, x, reference, kernels


@pytest.mark.parametrize('onednn', [True, False], ids=['onednn', 'plain'])
def test_exported_family_predicts_as_the_dynamic_model(exported, onednn):
    name, config, folder, x, reference, _ = exported
    messages = []
    classifier = predict.Classifier(folder, config, threads=1, onednn=onednn, log=messages.append)
    logits = classifier.logits(x)
    assert logits.shape == reference.shape
    error = np.abs(logits - reference).max() / np.abs(reference).max()
    assert error <= RTOL, f'{name}: max |diff| / max |logit| = {error:.2e}'
    # the export must run on oneDNN itself (the fastest CPU path), not only through the fallback
    assert classifier.model.onednn == onednn, f'{name}: {messages}'
    assert not messages
    np.testing.assert_allclose(classifier.logits(x[:1]), reference[:1], rtol=0,
                               atol=RTOL * np.abs(reference).max())      # another batch size


# the fused kernels each family's CPU export (--cpu_kernels) must hold: its transformer blocks'
# Linear, GELU + Linear (an MLP's second half) and LayerNorm, and the family's own (attention, convs, VVT's clamp, PerViT's
# peripheral attention); RegNetY (a teacher) builds on Paddle's nn.Conv2D, which oneDNN fuses with
# its BatchNorm, so its graph has none and runs as its portable one
FAMILY_KERNELS = {
    'vit': {'fused_linear', 'fused_gelu_linear', 'fused_layer_norm', 'fused_attention'},
    'vit_r50': {'fused_linear', 'fused_gelu_linear', 'fused_layer_norm', 'fused_attention', 'fused_conv',
                'fused_group_norm'},
    'pit': {'fused_linear', 'fused_gelu_linear', 'fused_layer_norm', 'fused_attention', 'fused_depthwise_conv_image'},
    'pit_distilled': {'fused_linear', 'fused_gelu_linear', 'fused_layer_norm', 'fused_attention'},
    'pervit': {'fused_linear', 'fused_gelu_linear', 'fused_peripheral_attention', 'fused_conv', 'fused_group_norm'},
    'spvit': {'fused_linear', 'fused_gelu_linear', 'fused_layer_norm', 'fused_attention', 'fused_conv'},
    'vvt': {'fused_linear', 'fused_gelu_linear', 'fused_layer_norm', 'fused_depthwise_conv_tokens', 'fused_abs_clamp'},
    'regnety': set(),
}


def test_cpu_kernels_export_of_every_family_predicts_as_the_dynamic_model(exported):
    """`export_model.py --cpu_kernels`: the family's fused kernels are ops of the graph, and Paddle
    Inference gives the dynamic model's logits with them, on plain kernels (oneDNN is refused for
    such graphs: it computed ViT-R50's wrong)."""
    name, config, _, x, reference, kernels = exported
    if not os.path.isfile(os.path.join(kernels, 'inference.pdiparams')):
        pytest.skip('the fused CPU kernels are not available on this machine')
    missing = sorted(FAMILY_KERNELS[name] - kernel_ops_in_graph(kernels))
    assert not missing, f'{name}: the exported graph lacks {missing}'
    messages = []
    classifier = predict.Classifier(kernels, config, threads=2, onednn=False, log=messages.append)
    for batch in (x, x[:1]):
        logits = classifier.logits(batch)
        error = np.abs(logits - reference[:len(batch)]).max() / np.abs(reference).max()
        assert error <= RTOL, f'{name}: max |diff| / max |logit| = {error:.2e}'
    assert not classifier.model.onednn and not messages, f'{name}: {messages}'
    with pytest.raises(UserError, match='runs on plain kernels only'):
        predict.Classifier(kernels, config, threads=2, onednn=True)


def _onnx_packages():
    """Skips (naming what is missing) unless paddle2onnx and onnxruntime are installed; CI has
    them (requirements-dev.txt includes requirements-onnx.txt)."""
    for name in ('paddle2onnx', 'onnxruntime'):
        pytest.importorskip(name, reason=f'{name} is not installed: pip install -r requirements-onnx.txt')


# paddle2onnx 2.1.0 converts `group_norm` as channels first whatever its data_format, and writes
# a garbage epsilon (0 or 3e12) into the ONNX file: the GroupNorms of ViT-R50's ResNet stem
# (every image gave the same logits) and PerViT's channels-last ones (its position encoding)
# come out wrong.  Spelt out in means (or as a LayerNorm) for the export, the
# ONNX model was right but Paddle Inference's oneDNN passes then computed it wrong (2e-2 of the
# largest logit) or could not run it, so PerViT keeps Paddle's op and has no ONNX path yet.
ONNX_BROKEN = {'pervit': 'paddle2onnx 2.1.0 mis-converts channels-last group_norm (layout and epsilon)',
               'vit_r50': "paddle2onnx 2.1.0 writes a garbage epsilon for group_norm (the R50 stem's)"}


def test_exported_family_converts_to_onnx_and_matches_paddle_inference(exported, request):
    """Every family but those with a GroupNorm converts with paddle2onnx and ONNX Runtime gives
    Paddle Inference's logits (VVT's `1. / t` once aborted the conversion): `predict.py --backend
    onnxruntime`.  PerViT and ViT-R50 are expected failures, strict: they report when a paddle2onnx
    release fixes them."""
    _onnx_packages()
    name, config, folder, x, reference, _ = exported
    if name in ONNX_BROKEN:
        request.applymarker(pytest.mark.xfail(strict=True, reason=ONNX_BROKEN[name]))
    export_model.export_onnx(os.path.join(folder, export_model.MODEL_NAME), log=pytest.fail)
    paddle_logits = predict.Classifier(folder, config, threads=1, onednn=False).logits(x)
    classifier = predict.Classifier(folder, config, threads=1, backend='onnxruntime')
    for batch in (x, x[:1]):
        np.testing.assert_allclose(classifier.logits(batch), paddle_logits[:len(batch)], rtol=0, atol=ONNX_ATOL,
                                   err_msg=name)
