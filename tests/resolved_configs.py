"""The resolved config of every shipped variant as plain data, and the fixture that pins it.

`tests/fixtures/resolved_configs.json` holds, for every `image_classification/<Family>/configs/*.yaml`
(every name `paddlevit.list_models()` gives), the complete config its family's `get_config` builds:
defaults, then the YAML with its `BASE:` chain.  It was first written from main at 5eb24f8, before
the YAMLs were rewritten as `BASE:` of the shared recipe files, so `test_config_recipes.py` shows
that the rewrite changed no value.

When a config key is added or a shipped value is changed on purpose, regenerate it:

    .venv/bin/python tests/resolved_configs.py

and review the diff of the fixture (`git diff tests/fixtures/resolved_configs.json`): every changed
line should be one you meant.
"""
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, 'tests', 'fixtures', 'resolved_configs.json')


def plain(node):
    """A config node as nested dicts / lists / scalars (tuples become lists, as in JSON)."""
    if isinstance(node, dict):
        return {key: plain(value) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain(value) for value in node]
    return node


def set_by_files(path):
    """{section: {key: value}} that the YAML at `path` and its BASE chain set (not the defaults),
    merged as the loader merges them: a later file's value wins."""
    from engine.config import _config_chain
    values = {}
    for _, data, _ in _config_chain(path):
        for section, items in data.items():
            if isinstance(items, dict):
                values.setdefault(section, {}).update(items)
    return values


def resolve_all():
    """{model name: resolved config as plain data} of every registered variant."""
    from engine.families import all_variants, load_family
    return {name: plain(load_family(model_type).get_config(path))
            for name, (model_type, path) in all_variants().items()}


if __name__ == '__main__':
    for path in (REPO, os.path.join(REPO, 'image_classification')):
        sys.path.insert(0, path)
    import engine
    engine.prepare_process()   # before paddle is imported
    with open(FIXTURE, 'w') as f:
        json.dump(resolve_all(), f, indent=1, sort_keys=True)
        f.write('\n')
    print(f'wrote {FIXTURE}')
