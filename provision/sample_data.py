"""A small real image-text set that installs from the package registries: scikit-image's photos.

The main job trains on the COCO photos of ``../shared/data``; where that folder is absent it falls
back to this. The scikit-image wheel on PyPI carries about twenty real images (the astronaut
Eileen Collins, Chelsea the cat, a coffee cup, a rocket launch, Greek coins, the moon, a
motorcycle, ...), each documented by a docstring in ``skimage/data/_fetchers.py``. Those
docstrings' descriptive paragraphs are the captions. The wheel is fetched with pip (pinned by
hash, for one platform tag, so the same file everywhere) and never installed: the images and the
docstrings are read straight out of the zip.

    python -m provision.sample_data --out runs/sample_data    # writes captions.tsv + images/
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl"
WHEEL_SHA256 = "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af"
FETCHERS = "skimage/data/_fetchers.py"
# Synthetic or non-photographic images (checkerboards, logos, phantoms, text scans) are left out.
SKIP = {
    "chessboard_GRAY.png",
    "chessboard_RGB.png",
    "logo.png",
    "phantom.png",
    "text.png",
    "page.png",
    "color.png",
}


def fetch_wheel(dest: Path) -> Path:
    """pip-download the pinned scikit-image wheel (no install, no dependencies)."""
    req = dest / "requirements.txt"
    req.write_text(f"scikit-image==0.26.0 --hash=sha256:{WHEEL_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--only-binary=:all:"]
    cmd += [
        "--python-version",
        "3.11",
        "--platform",
        "manylinux_2_28_x86_64",
        "-q",
        "-r",
        str(req),
        "-d",
        str(dest),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    return dest / WHEEL


def _caption(doc: str) -> str:
    """The descriptive paragraphs of a numpydoc docstring, without links, licences or sections."""
    body = re.split(r"\n\s*(?:Returns|Notes|References|Parameters|Examples)\n\s*-{3,}", doc)[0]
    keep = []
    for para in re.split(r"\n\s*\n", body):
        text = " ".join(para.split())
        if not text or re.search(
            r"https?://|copyright|public domain|licen[cs]e|downloaded|courtesy", text, re.I
        ):
            continue
        keep.append(text)
    return " ".join(keep)


def captions_from_fetchers(source: str) -> dict[str, str]:
    """file name -> caption, from each ``def name(): \"\"\"doc\"\"\" ... _load("data/<file>")``."""
    out: dict[str, str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node) or ""
        for call in ast.walk(node):
            if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "_load" and call.args:
                arg = call.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    name = arg.value.rsplit("/", 1)[-1]
                    if name.endswith((".png", ".jpg")) and name not in SKIP and _caption(doc):
                        out[name] = _caption(doc)
    return out


def write_sample_data(out: Path, wheel: Path | None = None) -> Path:
    """Write ``out/images/*`` and ``out/captions.tsv`` (file<TAB>caption); return the TSV."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="catlip-skimage-") as tmp:
        wheel = wheel or fetch_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            captions = captions_from_fetchers(zf.read(FETCHERS).decode())
            (out / "images").mkdir(parents=True, exist_ok=True)
            lines = []
            for name, caption in sorted(captions.items()):
                member = f"skimage/data/{name}"
                if member not in zf.namelist():
                    continue  # fetched from the network by scikit-image itself, not in the wheel
                (out / "images" / name).write_bytes(zf.read(member))
                lines.append(f"{name}\t{caption}\n")
    tsv = out / "captions.tsv"
    tsv.write_text("".join(lines))
    return tsv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m provision.sample_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="folder for captions.tsv and images/")
    args = parser.parse_args(argv)
    tsv = write_sample_data(args.out)
    n = sum(1 for _ in tsv.open())
    print(f"wrote {n} scikit-image photos with their documented captions: {tsv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
