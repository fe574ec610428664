"""The variant YAMLs are `BASE:` of the shared official-recipe files, and that changed no value.

`tests/fixtures/resolved_configs.json` is the resolved config of every variant as it was before the
rewrite (main at 5eb24f8).  If a key is added or a value changed on purpose, regenerate the fixture
with `tests/resolved_configs.py` (see its docstring) and review the fixture's diff.
"""
import json
import os

import pytest

from resolved_configs import FIXTURE, resolve_all

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, 'image_classification', 'configs', 'recipes')


def _differences(expected, actual, prefix=''):
    """['KEY: expected X, got Y'] over every leaf of two nested dicts (a leaf's type counts)."""
    out = []
    for key in sorted(set(expected) | set(actual)):
        name = f'{prefix}{key}'
        if key not in actual:
            out.append(f'{name}: missing (expected {expected[key]!r})')
        elif key not in expected:
            out.append(f'{name}: new key (= {actual[key]!r}); not in the fixture')
        elif isinstance(expected[key], dict) and isinstance(actual[key], dict):
            out += _differences(expected[key], actual[key], f'{name}.')
        elif type(expected[key]) is not type(actual[key]) or expected[key] != actual[key]:
            out.append(f'{name}: expected {expected[key]!r}, got {actual[key]!r}')
    return out


@pytest.fixture(scope='module')
def resolved():
    return resolve_all()


def test_every_variant_resolves_to_the_config_it_had_before_the_recipes(resolved):
    with open(FIXTURE) as f:
        expected = json.load(f)
    assert sorted(resolved) == sorted(expected), 'the set of variants differs from the fixture'
    problems = [f'{name}: {d}' for name in sorted(expected) for d in _differences(expected[name], resolved[name])]
    assert not problems, '\n'.join(problems)


def test_the_difference_check_names_variant_key_and_values():
    assert _differences({'A': {'B': 1, 'C': 0.5}}, {'A': {'B': 1.0, 'C': 0.5, 'D': 2}}) == [
        'A.B: expected 1, got 1.0', 'A.D: new key (= 2); not in the fixture']


def test_recipe_files_are_shared_bases_not_models(resolved):
    """The recipes live outside the family folders: no model is named after one, none sets a model
    type, and every recipe is the BASE of at least one variant."""
    from engine.config import _config_chain, yaml_model_type
    from engine.families import all_variants
    recipes = sorted(f for f in os.listdir(RECIPES) if f.endswith('.yaml'))
    assert recipes
    assert not {f[:-len('.yaml')] for f in recipes} & set(resolved)
    used = set()
    for name, (_, path) in all_variants().items():
        used |= {os.path.realpath(p) for p, _, _ in _config_chain(path)}
    for recipe in recipes:
        path = os.path.join(RECIPES, recipe)
        assert yaml_model_type(path) == '', recipe
        assert os.path.realpath(path) in used, f'{recipe} is the BASE of no variant'
