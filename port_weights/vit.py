"""ViT key maps: ViT-pytorch `.pth` and Google's `.npz` -> our `VisionTransformer`.

Two official layouts, told apart by their keys:

* ViT-pytorch (`models/modeling.py`) state dicts: `transformer.encoder.layer.0.attn.query.weight`, ...
  Linear weights are [out, in] (transposed here), convs are OIHW like ours.
* Google's `.npz` (the JAX/Flax originals, `imagenet21k/ViT-B_16.npz`,
  `imagenet21k+imagenet2012/ViT-B_16.npz`, `R50+ViT-B_16.npz`, ...):
  `Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel`, ...
  Dense kernels are [in, out] (our layout); attention kernels are split by head
  ([hidden, heads, head_dim] for q/k/v, [heads, head_dim, hidden] for the output)
  and flattened here; convs are HWIO and become OIHW; GroupNorm scales may carry
  leading singleton axes.  The 21k checkpoints also hold `pre_logits` (kept when
  MODEL.REPRESENTATION_SIZE is set, otherwise dropped as ViT-pytorch's `load_from`
  drops it, with a warning).

Pre-step for both: our attention has one fused `qkv` Linear, so each block's query,
key and value weights are concatenated (in that order) before the rules run.

A position embedding for another image size is left as it is here: `port.py` then
calls the model's `adapt_state_dict`, which resizes it and says so.
"""
import re
import warnings

import numpy as np

from port_weights.keymap import Rule, apply_rules, transpose

__all__ = ['convert', 'is_google_layout', 'TORCH_RULES', 'google_rules']


def is_google_layout(state):
    """True for Google's `.npz` key layout (`Transformer/encoderblock_0/...`)."""
    return any(k.startswith('Transformer/') for k in state)


# ------------------------------------------------------------------ ViT-pytorch
def _fuse_qkv_torch(state):
    """Replace each block's attn.{query,key,value}.{weight,bias} by attn.qkv.* ([out, in] kept)."""
    state = dict(state)
    blocks = sorted({m.group(1) for k in state
                     for m in [re.fullmatch(r'(transformer\.encoder\.layer\.\d+)\.attn\.query\.weight', k)] if m})
    for prefix in blocks:
        for kind in ('weight', 'bias'):
            parts = [state.pop(f'{prefix}.attn.{name}.{kind}') for name in ('query', 'key', 'value')]
            state[f'{prefix}.attn.qkv.{kind}'] = np.concatenate(parts, axis=0)
    return state


_P = r'transformer\.encoder\.layer\.(\d+)'
_R = r'transformer\.embeddings\.hybrid_model'
TORCH_RULES = [
    Rule(r'transformer\.embeddings\.cls_token', 'cls_token'),
    Rule(r'transformer\.embeddings\.position_embeddings', 'pos_embed'),
    Rule(r'transformer\.embeddings\.patch_embeddings\.(weight|bias)', r'patch_embed.proj.\1'),
    # R50 stem: same structure and names (StdConv weights, GroupNorm affine)
    Rule(fr'{_R}\.root\.conv\.weight', 'patch_embed.backbone.root.conv.weight'),
    Rule(fr'{_R}\.root\.gn\.(weight|bias)', r'patch_embed.backbone.root.gn.\1'),
    Rule(fr'{_R}\.body\.(block\d+)\.(unit\d+)\.(conv[123]|downsample)\.weight',
         r'patch_embed.backbone.body.\1.\2.\3.weight'),
    Rule(fr'{_R}\.body\.(block\d+)\.(unit\d+)\.(gn[123]|gn_proj)\.(weight|bias)',
         r'patch_embed.backbone.body.\1.\2.\3.\4'),
    # encoder blocks
    Rule(fr'{_P}\.attention_norm\.(weight|bias)', r'blocks.\1.norm1.\2'),
    Rule(fr'{_P}\.attn\.qkv\.weight', r'blocks.\1.attn.qkv.weight', transpose),
    Rule(fr'{_P}\.attn\.qkv\.bias', r'blocks.\1.attn.qkv.bias'),
    Rule(fr'{_P}\.attn\.out\.weight', r'blocks.\1.attn.proj.weight', transpose),
    Rule(fr'{_P}\.attn\.out\.bias', r'blocks.\1.attn.proj.bias'),
    Rule(fr'{_P}\.ffn_norm\.(weight|bias)', r'blocks.\1.norm2.\2'),
    Rule(fr'{_P}\.ffn\.(fc[12])\.weight', r'blocks.\1.mlp.\2.weight', transpose),
    Rule(fr'{_P}\.ffn\.(fc[12])\.bias', r'blocks.\1.mlp.\2.bias'),
    Rule(r'transformer\.encoder\.encoder_norm\.(weight|bias)', r'norm.\1'),
    Rule(r'head\.weight', 'head.weight', transpose),
    Rule(r'head\.bias', 'head.bias'),
]


# ------------------------------------------------------------------ Google .npz
_ATT = 'MultiHeadDotProductAttention_1'


def _fuse_qkv_google(state):
    """Replace each block's query/key/value kernels and biases by one `qkv` entry:
    kernels [hidden, heads, head_dim] -> [hidden, hidden] concatenated on the output
    axis ([in, 3*hidden], Paddle's layout), biases [heads, head_dim] -> [3*hidden]."""
    state = dict(state)
    blocks = sorted({m.group(1) for k in state
                     for m in [re.fullmatch(fr'(Transformer/encoderblock_\d+)/{_ATT}/query/kernel', k)] if m})
    for prefix in blocks:
        kernels = [state.pop(f'{prefix}/{_ATT}/{n}/kernel') for n in ('query', 'key', 'value')]
        biases = [state.pop(f'{prefix}/{_ATT}/{n}/bias') for n in ('query', 'key', 'value')]
        state[f'{prefix}/{_ATT}/qkv/kernel'] = np.concatenate(
            [k.reshape(k.shape[0], -1) for k in kernels], axis=1)
        state[f'{prefix}/{_ATT}/qkv/bias'] = np.concatenate([b.reshape(-1) for b in biases])
    return state


def _hwio_to_oihw(a):
    return np.ascontiguousarray(np.transpose(a, (3, 2, 0, 1)))


def _flat(a):
    return np.ascontiguousarray(np.reshape(a, -1))


def _heads_to_matrix(a):
    """Output-projection kernel [heads, head_dim, hidden] -> [heads*head_dim, hidden] = [in, out]."""
    return np.ascontiguousarray(np.reshape(a, (-1, a.shape[-1])))


_G = r'Transformer/encoderblock_(\d+)'


def google_rules(keep_pre_logits):
    """The rules for Google's layout; `pre_logits` is mapped or dropped on purpose."""
    if keep_pre_logits:
        pre_logits = [Rule(r'pre_logits/kernel', 'pre_logits.weight'),
                      Rule(r'pre_logits/bias', 'pre_logits.bias')]
    else:
        pre_logits = [Rule(r'pre_logits/(kernel|bias)', None,
                           why='MODEL.REPRESENTATION_SIZE is 0: no pre-logits layer '
                               '(ViT-pytorch load_from ignores it too)')]
    return [
        Rule(r'cls', 'cls_token'),
        Rule(r'Transformer/posembed_input/pos_embedding', 'pos_embed'),
        Rule(r'embedding/kernel', 'patch_embed.proj.weight', _hwio_to_oihw),
        Rule(r'embedding/bias', 'patch_embed.proj.bias'),
        # R50 stem (BiT naming)
        Rule(r'conv_root/kernel', 'patch_embed.backbone.root.conv.weight', _hwio_to_oihw),
        Rule(r'gn_root/scale', 'patch_embed.backbone.root.gn.weight', _flat),
        Rule(r'gn_root/bias', 'patch_embed.backbone.root.gn.bias', _flat),
        Rule(r'(block\d+)/(unit\d+)/(conv[123])/kernel', r'patch_embed.backbone.body.\1.\2.\3.weight',
             _hwio_to_oihw),
        Rule(r'(block\d+)/(unit\d+)/conv_proj/kernel', r'patch_embed.backbone.body.\1.\2.downsample.weight',
             _hwio_to_oihw),
        Rule(r'(block\d+)/(unit\d+)/(gn[123]|gn_proj)/scale', r'patch_embed.backbone.body.\1.\2.\3.weight',
             _flat),
        Rule(r'(block\d+)/(unit\d+)/(gn[123]|gn_proj)/bias', r'patch_embed.backbone.body.\1.\2.\3.bias',
             _flat),
        # encoder blocks
        Rule(fr'{_G}/LayerNorm_0/scale', r'blocks.\1.norm1.weight'),
        Rule(fr'{_G}/LayerNorm_0/bias', r'blocks.\1.norm1.bias'),
        Rule(fr'{_G}/{_ATT}/qkv/kernel', r'blocks.\1.attn.qkv.weight'),
        Rule(fr'{_G}/{_ATT}/qkv/bias', r'blocks.\1.attn.qkv.bias'),
        Rule(fr'{_G}/{_ATT}/out/kernel', r'blocks.\1.attn.proj.weight', _heads_to_matrix),
        Rule(fr'{_G}/{_ATT}/out/bias', r'blocks.\1.attn.proj.bias', _flat),
        Rule(fr'{_G}/LayerNorm_2/scale', r'blocks.\1.norm2.weight'),
        Rule(fr'{_G}/LayerNorm_2/bias', r'blocks.\1.norm2.bias'),
        Rule(fr'{_G}/MlpBlock_3/Dense_0/kernel', r'blocks.\1.mlp.fc1.weight'),
        Rule(fr'{_G}/MlpBlock_3/Dense_0/bias', r'blocks.\1.mlp.fc1.bias'),
        Rule(fr'{_G}/MlpBlock_3/Dense_1/kernel', r'blocks.\1.mlp.fc2.weight'),
        Rule(fr'{_G}/MlpBlock_3/Dense_1/bias', r'blocks.\1.mlp.fc2.bias'),
        Rule(r'Transformer/encoder_norm/scale', 'norm.weight'),
        Rule(r'Transformer/encoder_norm/bias', 'norm.bias'),
        *pre_logits,
        Rule(r'head/kernel', 'head.weight'),
        Rule(r'head/bias', 'head.bias'),
    ]


def convert(state, config):
    """Official ViT state (ViT-pytorch `.pth` or Google `.npz`) -> our names and layouts."""
    if is_google_layout(state):
        keep = bool(config.MODEL.REPRESENTATION_SIZE)
        converted, dropped = apply_rules(_fuse_qkv_google(state), google_rules(keep), 'Google .npz')
    else:
        converted, dropped = apply_rules(_fuse_qkv_torch(state), TORCH_RULES, 'ViT-pytorch checkpoint')
    if dropped:
        reasons = sorted(set(dropped.values()))
        warnings.warn(f'dropped {", ".join(sorted(dropped))}: {"; ".join(reasons)}', stacklevel=2)
    return {k: np.asarray(v, dtype=np.float32) for k, v in converted.items()}
