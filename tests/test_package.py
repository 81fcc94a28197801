"""The package's structure: dependencies point one way."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
    spec = importlib.util.spec_from_file_location(
        "import_cycles", os.path.join(ROOT, "tools", "import_cycles.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tool_finds_a_cycle():
    tool = _tool()
    assert tool.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert tool.cycles({"a": {"b"}, "b": set()}) == []


def test_keras_pd_has_no_import_cycle():
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        graph = _tool().import_graph("keras_pd")
    finally:
        os.chdir(cwd)
    assert "keras_pd.replicas" in graph and graph["keras_pd.replicas"] == set()
    assert _tool().cycles(graph) == []
