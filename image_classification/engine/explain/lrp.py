"""The relevance (LRP) pass of Chefer et al. (CVPR 2021) through ViT / DeiT and SP-ViT.

From the explained logit back to the first block, layer by layer, with the rules
of `lrp_rules`, in the order of the reference's `VisionTransformer.relprop`:
head (and pre-logits), the class-token selection, the final norm, then each block
from the last: MLP residual, MLP, norm2, attention residual, attention, norm1.
Inside an attention, with the reference: the output projection, the product A v
(both parts halved), the softmax, the product q k^T (halved), the qkv projection.
The relevance of A in each block, R_A, is what `transformer_attribution` weighs
the attention gradients with.

Every tensor comes from one forward pass recorded by `capture.Recorder` under the
names `record_names` lists (the models' state-dict names), for image 0 of the batch.

SP-ViT adds: residual branches divided by skip_lam (a constant scale: relevance
passes unchanged), a depthwise 3x3 convolution added to the patch tokens after
every block (`pos_block`: alpha-beta through the conv, renormalised addition),
spatial-prior attention (softmax of (q k^T / sqrt(d)) * prior: the prior is a
fixed per-pair factor of the score, through which relevance passes unchanged;
separate `qk` and `v` projections), blocks before the class token joins (their
tokens are the patches alone; the class token's relevance where it joins belongs
to the learned token, not to the image, and stops there), and the evaluation
logit head(cls) + 0.5 * max over tokens of aux_head(tokens) (renormalised
addition, the maximum's relevance to its winning token).
"""
import numpy as np

from . import lrp_rules as rules


def _np(t):
    return t.numpy().astype(np.float64)


def _weight(layer):
    return layer.weight.numpy().astype(np.float64)


class TransformerLRP:
    """LRP through a ViT-style model (ViT / DeiT: `VisionTransformer`; SP-ViT: `SPViT`).

    `record_names()` are the sub-layers to record during the forward pass;
    `relevance(recorder, class_index, head)` runs the pass and returns the R_A of
    every block in forward order, each [heads, N_i, N_i] (N_i without the class
    token in SP-ViT's blocks before it joins).
    """

    def __init__(self, model):
        self.model = model
        self.blocks = list(model.blocks)
        self.joins = getattr(model, 'local_up_to_layer', 0)     # block where the class token joins
        self.skip_lam = getattr(self.blocks[0], 'skip_lam', 1.)

    def record_names(self):
        names = ['norm', 'head'] + (['pre_logits'] if getattr(self.model, 'pre_logits', None) else [])
        names += ['aux_head'] if hasattr(self.model, 'aux_head') else []
        for i, block in enumerate(self.blocks):
            p = f'blocks.{i}'
            names += [p, f'{p}.norm1', f'{p}.attn.attn_drop', f'{p}.attn.proj', f'{p}.norm2',
                      f'{p}.mlp.fc1', f'{p}.mlp.act', f'{p}.mlp.fc2']
            names += [f'{p}.attn.qk', f'{p}.attn.v'] if hasattr(block.attn, 'qk') else [f'{p}.attn.qkv']
            names += [f'{p}.pos_block'] if hasattr(block, 'pos_block') else []
        return names

    # ------------------------------------------------------------------ head
    def head_relevance(self, rec, class_index, head):
        """Relevance of the final norm's output [N, C] for the logit of `class_index`:
        head='class' explains head(cls); head='eval' the logit evaluation uses (for SP-ViT
        head(cls) + 0.5 * max aux_head(tokens); elsewhere the same as 'class')."""
        tokens = _np(rec['norm'][1])[0]                                        # [N, C]
        r_out = np.zeros(self.model.head.weight.shape[1])
        r_out[class_index] = 1.
        relevance = np.zeros_like(tokens)
        r_cls = r_out
        if head == 'eval' and 'aux_head' in rec:
            cls_logits = _np(rec['head'][1])[0]
            aux = _np(rec['aux_head'][1])[0]                                   # [N - 1, classes]
            r_cls, r_aux = rules.add(cls_logits, 0.5 * aux.max(0), r_out)
            r_tokens = rules.token_max(aux, r_aux)
            relevance[1:] = rules.linear(tokens[1:], _weight(self.model.aux_head), r_tokens)
        head_in = _np(rec['head'][0][0])[0]
        r_feature = rules.linear(head_in, _weight(self.model.head), r_cls)
        if 'pre_logits' in rec:
            pre_in, pre_out = _np(rec['pre_logits'][0][0])[0], _np(rec['pre_logits'][1])[0]
            r_feature = rules.linear(pre_in, _weight(self.model.pre_logits), rules.tanh(pre_out, r_feature))
        relevance[0] += r_feature
        return _layer_norm(self.model.norm, _np(rec['norm'][0][0])[0], relevance)

    # ------------------------------------------------------------------ blocks
    def attention_inputs(self, rec, i):
        """(q, k, v [heads, N, d], the softmax's input [heads, N, N]) of block i, recomputed from the
        recorded projections: q k^T / sqrt(d), times the spatial prior in SP-ViT's SP blocks."""
        p, attn = f'blocks.{i}', self.blocks[i].attn
        x = _np(rec[f'{p}.norm1'][1])[0]
        n, h = x.shape[0], attn.num_heads
        d = x.shape[1] // h
        if hasattr(attn, 'qk'):
            q, k = _np(rec[f'{p}.attn.qk'][1])[0].reshape(n, 2, h, d).transpose(1, 2, 0, 3)
            v = _np(rec[f'{p}.attn.v'][1])[0].reshape(n, h, d).transpose(1, 0, 2)
            prior = attn.spatial_prior().numpy().astype(np.float64)
            return q, k, v, (q @ k.transpose(0, 2, 1)) * attn.scale * prior
        q, k, v = _np(rec[f'{p}.attn.qkv'][1])[0].reshape(n, 3, h, d).transpose(1, 2, 0, 3)
        return q, k, v, (q @ k.transpose(0, 2, 1)) * d ** -0.5

    def _attention(self, rec, i, relevance):
        """(R of norm1's output, R_A) for block i's attention, given R of its output [N, C]."""
        p, attn = f'blocks.{i}', self.blocks[i].attn
        x = _np(rec[f'{p}.norm1'][1])[0]                                      # [N, C]
        n, c = x.shape
        h, d = attn.num_heads, c // attn.num_heads
        a = _np(rec[f'{p}.attn.attn_drop'][1])[0]                            # [h, N, N]
        q, k, v, scores = self.attention_inputs(rec, i)
        proj_in = _np(rec[f'{p}.attn.proj'][0][0])[0]
        r = rules.linear(proj_in, _weight(attn.proj), relevance).reshape(n, h, d).transpose(1, 0, 2)
        r_a, r_v = (part / 2 for part in rules.matmul(a, v, r))
        r_q, r_kt = (part / 2 for part in rules.matmul(q, k.transpose(0, 2, 1), rules.softmax(scores, r_a)))
        r_k = r_kt.transpose(0, 2, 1)
        heads = lambda t: t.transpose(1, 0, 2).reshape(n, c)                 # noqa: E731  [h, N, d] -> [N, C]
        if hasattr(attn, 'qk'):
            r_x = (rules.linear(x, _weight(attn.qk), np.concatenate([heads(r_q), heads(r_k)], -1))
                   + rules.linear(x, _weight(attn.v), heads(r_v)))
        else:
            r_x = rules.linear(x, _weight(attn.qkv), np.concatenate([heads(r_q), heads(r_k), heads(r_v)], -1))
        return r_x, r_a

    def _mlp(self, rec, i, relevance):
        p, mlp = f'blocks.{i}', self.blocks[i].mlp
        r = rules.linear(_np(rec[f'{p}.mlp.fc2'][0][0])[0], _weight(mlp.fc2), relevance)
        r = rules.gelu(_np(rec[f'{p}.mlp.act'][0][0])[0], r)
        return rules.linear(_np(rec[f'{p}.mlp.fc1'][0][0])[0], _weight(mlp.fc1), r)

    def pos_block_relevance(self, rec, i, relevance):
        """Relevance of SP-ViT's pos_block input: tokens + dwconv(tokens) on the patches."""
        x_in, x_out = (_np(t)[0] for t in (rec[f'blocks.{i}.pos_block'][0][0], rec[f'blocks.{i}.pos_block'][1]))
        prefix = 1 if i >= self.joins else 0
        tokens, conv_out = x_in[prefix:], x_out[prefix:] - x_in[prefix:]
        r_conv, r_skip = rules.add(conv_out, tokens, relevance[prefix:])
        grid = self.model.grid
        as_image = lambda t: t.T.reshape(-1, *grid)                          # noqa: E731  [N, C] -> [C, H, W]
        r_tokens = rules.depthwise_conv(as_image(tokens), _weight(self.blocks[i].pos_block.proj),
                                        as_image(r_conv)).reshape(tokens.shape[1], -1).T
        out = relevance.copy()
        out[prefix:] = r_tokens + r_skip
        return out

    def _block(self, rec, i, relevance):
        """(relevance of block i's input, R_A of block i) from the relevance of its output."""
        p, block = f'blocks.{i}', self.blocks[i]
        if hasattr(block, 'pos_block'):
            relevance = self.pos_block_relevance(rec, i, relevance)
        x_in = _np(rec[p][0][0])[0]
        attn_out = _np(rec[f'{p}.attn.proj'][1])[0] / self.skip_lam
        x_mid = x_in + attn_out
        mlp_out = _np(rec[f'{p}.mlp.fc2'][1])[0] / self.skip_lam
        r_skip, r_mlp = rules.add(x_mid, mlp_out, relevance)
        r_mlp = _layer_norm(block.norm2, x_mid, self._mlp(rec, i, r_mlp))
        r_skip, r_attn = rules.add(x_in, attn_out, r_skip + r_mlp)
        r_attn, r_a = self._attention(rec, i, r_attn)
        return r_skip + _layer_norm(block.norm1, x_in, r_attn), r_a

    def relevance(self, rec, class_index, head='eval'):
        """R_A of every block, forward order, for the logit of `class_index` (see `head_relevance`)."""
        relevance = self.head_relevance(rec, class_index, head)
        found = []
        for i in reversed(range(len(self.blocks))):
            if i == self.joins - 1:
                relevance = relevance[1:]        # the class token joined here: its share stays with it
            relevance, r_a = self._block(rec, i, relevance)
            found.append(r_a)
        return found[::-1]


def _layer_norm(norm, x, relevance):
    return rules.layer_norm(x, _weight(norm), norm.bias.numpy().astype(np.float64), norm._epsilon, relevance)
