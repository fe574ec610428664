"""Test setup: import paths, quiet Paddle, and helpers to build any family."""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures')
for _path in (REPO, os.path.join(REPO, 'image_classification')):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import engine  # noqa: E402,F401  (sets the environment before paddle is imported)
