"""Explicit, strict mapping from an official state dict to ours.

A family's port module lists `Rule`s: a regular expression over the official
key (matched in full), the name it becomes here (a `re` template, `\\1` for the
groups), and the layout change its array needs (`transpose` for Linear
weights, a reshape for Google's kernels, ...).  A rule with `dst=None` drops
keys on purpose and says why.  `apply_rules` refuses to guess: an official key
no rule matches, two keys landing on one name, a name we need that nothing
filled, or a shape that differs, each stops the conversion with the full list
of keys at fault.
"""
import re
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from engine.weights import KeyMismatchError, check_state, describe_keys  # noqa: F401  (re-exported)

__all__ = ['Rule', 'KeyMismatchError', 'apply_rules', 'check_state', 'transpose', 'bn_rules']


def transpose(a):
    """torch Linear [out, in] -> Paddle Linear [in, out]."""
    return np.ascontiguousarray(a.T)


@dataclass(frozen=True)
class Rule:
    src: str
    dst: Optional[str]
    transform: Optional[Callable[[np.ndarray], np.ndarray]] = None
    why: str = ''

    def match(self, key):
        return re.fullmatch(self.src, key)


def bn_rules(prefix_src, prefix_dst=None):
    """Rules for one BatchNorm: torch's running stats are Paddle's `_mean`/`_variance`.

    `prefix_src` is a regex for the layer's key prefix (no trailing dot).
    """
    dst = prefix_dst if prefix_dst is not None else prefix_src
    return [
        Rule(fr'{prefix_src}\.weight', fr'{dst}.weight'),
        Rule(fr'{prefix_src}\.bias', fr'{dst}.bias'),
        Rule(fr'{prefix_src}\.running_mean', fr'{dst}._mean'),
        Rule(fr'{prefix_src}\.running_var', fr'{dst}._variance'),
        Rule(fr'{prefix_src}\.num_batches_tracked', None, why='BatchNorm step counter, unused at eval'),
    ]


def apply_rules(state, rules, source='checkpoint'):
    """`{our_name: array}` from `state` through `rules`; returns (converted, dropped).

    Every key of `state` must match a rule (the first one that matches wins).
    """
    converted, dropped, unmatched, collisions = {}, {}, [], []
    for key, value in state.items():
        for rule in rules:
            m = rule.match(key)
            if m is None:
                continue
            if rule.dst is None:
                dropped[key] = rule.why
            else:
                name = m.expand(rule.dst)
                if name in converted:
                    collisions.append(f'{key} -> {name}')
                converted[name] = rule.transform(value) if rule.transform else np.asarray(value)
            break
        else:
            unmatched.append(key)
    problems = []
    if unmatched:
        problems.append(f'{len(unmatched)} key(s) of {source} match no rule: {describe_keys(unmatched)}')
    if collisions:
        problems.append(f'several keys map to one name: {describe_keys(collisions)}')
    if problems:
        raise KeyMismatchError('; '.join(problems))
    return converted, dropped
