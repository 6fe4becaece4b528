"""The registry-installed fallback data set of the main job (scikit-image's documented photos)."""

from __future__ import annotations

import pytest
from PIL import Image

from provision.sample_data import captions_from_fetchers, write_sample_data

SOURCE = '''
def chelsea():
    """Chelsea the cat.

    An example with texture.

    This image was downloaded from https://example.org; no known copyright restrictions.

    Returns
    -------
    chelsea : ndarray
    """
    return _load("data/chelsea.png")


def logo():
    """Scikit-image logo."""
    return _load("data/logo.png")


def _private():
    """Not an image."""
    return _load("data/x.png")
'''


def test_captions_are_the_descriptive_docstring_paragraphs():
    assert captions_from_fetchers(SOURCE) == {"chelsea.png": "Chelsea the cat. An example with texture."}


@pytest.mark.slow
@pytest.mark.network
def test_sample_data_from_pypi(tmp_path):
    tsv = write_sample_data(tmp_path)
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    assert len(rows) >= 15
    names = {name for name, _ in rows}
    assert {"astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"} <= names
    for name, caption in rows:
        assert caption.strip()
        with Image.open(tmp_path / "images" / name) as im:
            im.load()
