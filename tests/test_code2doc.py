import ast
import sys
import textwrap

import pytest

from encore.data import code2doc
from encore.data.code2doc import extract_functions, first_sentence, module_split

MODULE = textwrap.dedent(
    '''
    """Module docstring: not a function, not an example."""
    import functools


    def add(a, b):
        """Return the sum of two numbers. Extra detail that is not the summary.

        More text.
        """
        total = a + b
        return total


    def no_doc(x):
        return x


    def tiny(x):
        """Tiny."""
        return x


    def one_liner(): "Docstring on the def line is left out."


    def interface(self):
        """Subclasses must override this hook, e.g. to log."""


    class Store:
        @functools.lru_cache(maxsize=None)
        def get(self, key,
                default=None):
            """Look up a key in the store
            and fall back to the default.
            """
            text = """
    a string that starts at column 0
    """
            def helper():
                """Normalize the key before lookup."""
                return key.lower()
            return helper(), text

        async def fetch(self):
            """Fetch everything!  Then more."""
            return [1]
    '''
)


def test_extract_functions_from_a_written_module(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text(MODULE)
    examples = {e["name"]: e for e in extract_functions(path)}
    assert set(examples) == {"add", "interface", "Store.get", "Store.get.<locals>.helper", "Store.fetch"}
    assert extract_functions(str(path)) == extract_functions(MODULE)  # a path or the source text

    add = examples["add"]
    assert add["target"] == "Return the sum of two numbers."
    assert add["source"] == "def add(a, b):\n    total = a + b\n    return total"
    assert add["lineno"] == 6

    # a method: decorators kept, dedented, the docstring gone, a column-0 string literal left as written
    get = examples["Store.get"]
    assert get["target"] == "Look up a key in the store and fall back to the default."
    assert get["source"].startswith("@functools.lru_cache(maxsize=None)\ndef get(self, key,\n        default=None):\n")
    assert "Look up" not in get["source"] and "\na string that starts at column 0\n" in get["source"]
    assert '"""Normalize the key before lookup."""' in get["source"]  # only its own docstring is removed
    assert examples["Store.get.<locals>.helper"]["source"] == "def helper():\n    return key.lower()"

    # a body that was only a docstring still reads as Python; "e.g." does not end the sentence
    assert examples["interface"]["source"] == "def interface(self):\n    ..."
    assert examples["interface"]["target"] == "Subclasses must override this hook, e.g. to log."
    assert examples["Store.fetch"]["target"] == "Fetch everything!"

    for e in examples.values():
        ast.parse(e["source"])  # every source is valid Python on its own


def test_first_sentence():
    assert first_sentence("Open a file.  Return a handle.") == "Open a file."
    assert first_sentence("Split the path\n   into parts\n\nDetails. More.") == "Split the path into parts"
    assert first_sentence("Version 3.11 of the parser, i.e. the new one. Rest.") == (
        "Version 3.11 of the parser, i.e. the new one."
    )
    assert first_sentence("Is it ready? Maybe.") == "Is it ready?"


def test_unparsable_source_and_missing_file_raise(tmp_path):
    with pytest.raises(SyntaxError):
        extract_functions("def broken(:\n    pass\n")
    with pytest.raises(FileNotFoundError):
        extract_functions(str(tmp_path / "absent.py"))


def test_module_split_is_stable():
    # sha256 of the module name: the same on every machine and run (hash() would not be)
    assert [module_split(m) for m in ("json", "os.path", "collections", "heapq")] == [
        "train",
        "train",
        "validation",
        "train",
    ]
    assert {module_split(f"m{i}") for i in range(200)} == {"train", "validation", "test"}


def _fake_stdlib(root):
    files = {
        "alpha.py": "def f(x):\n    '''Compute the alpha of x.'''\n    return x\n",
        "pkg/__init__.py": "def g():\n    '''Build the package index.'''\n    return 1\n",
        "pkg/beta.py": "class C:\n    def m(self):\n        '''Return the beta value.'''\n        return 2\n",
        "pkg/broken.py": "def h(:\n",
        "test/test_alpha.py": "def t():\n    '''A test that must be skipped.'''\n",
        "idlelib/idle_test/x.py": "def t():\n    '''A test that must be skipped.'''\n",
        "site-packages/thirdparty.py": "def t():\n    '''Third-party code that must be skipped.'''\n",
        "test_top.py": "def t():\n    '''Another test file to skip.'''\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_stdlib_walk_cache_and_load(tmp_path, monkeypatch):
    stdlib = _fake_stdlib(tmp_path / "lib")
    cache = tmp_path / "cache"
    found = code2doc.examples(cache_dir=cache, stdlib=stdlib)
    assert [(e["module"], e["name"], e["target"]) for e in found] == [
        ("alpha", "f", "Compute the alpha of x."),
        ("pkg", "g", "Build the package index."),
        ("pkg.beta", "C.m", "Return the beta value."),
    ]
    assert all(e["split"] == module_split(e["module"]) for e in found)
    cached = list(cache.glob("code2doc-*.jsonl"))
    assert len(cached) == 1 and f"{sys.version_info[0]}.{sys.version_info[1]}." in cached[0].name

    # the second call reads the cache and does not walk the library again
    monkeypatch.setattr(code2doc, "extract_stdlib", lambda stdlib=None: pytest.fail("cache not used"))
    assert code2doc.examples(cache_dir=cache, stdlib=stdlib) == found
    by_split = {s: list(code2doc.load(s, cache_dir=cache, stdlib=stdlib)) for s in code2doc.SPLITS}
    assert sum(len(v) for v in by_split.values()) == 3
    assert all(set(e) == {"source", "target"} for v in by_split.values() for e in v)
    with pytest.raises(ValueError, match="splits: train, validation, test"):
        list(code2doc.load("dev", cache_dir=cache, stdlib=stdlib))


@pytest.mark.slow
def test_full_stdlib_has_enough_examples(tmp_path):
    # the real thing, once (a few seconds): >= 5,000 examples, every split populated, module-disjoint
    found = code2doc.examples(cache_dir=tmp_path)
    splits = {s: [e for e in found if e["split"] == s] for s in code2doc.SPLITS}
    assert len(found) >= 5000
    assert len(splits["validation"]) >= 200 and len(splits["test"]) >= 200
    modules = [{e["module"] for e in v} for v in splits.values()]
    assert not (modules[0] & modules[1]) and not (modules[0] & modules[2]) and not (modules[1] & modules[2])
    assert not any(".test." in f".{e['module']}." or "site-packages" in e["module"] for e in found)
    for e in found[::50]:
        ast.parse(e["source"])


def test_lines_are_counted_as_ast_counts_them():
    # a form feed (page break, common in old modules) is no line break to ast: sources must not shift
    source = "x = 1\x0c\r\n\r\ndef f(a):\r\n    '''Return the value of a.'''\r\n    return a\r\n"
    assert extract_functions(source) == [
        {"name": "f", "lineno": 3, "source": "def f(a):\n    return a", "target": "Return the value of a."}
    ]
