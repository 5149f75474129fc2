"""Importing the data library loads neither Paddle nor the heavy optional libraries."""

from __future__ import annotations

import subprocess
import sys


def test_modules_import_without_paddle_pillow_numpy_or_jinja():
    code = (
        "import sys\n"
        "import mixcore_datasets, mixcore_datasets.chatml, mixcore.kit.images\n"
        "import mixcore.kit.templates, mixcore_datasets.synthetic, mixcore.kit.scoring\n"
        "import mixcore_datasets.coco, mixcore_datasets.vqa, mixcore_datasets.base\n"
        "heavy = {'paddle', 'paddlenlp', 'PIL', 'numpy', 'jinja2'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
