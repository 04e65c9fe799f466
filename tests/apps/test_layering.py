"""Applications sit at the top: nothing in the library imports prunekit.apps."""

from tests.test_import_graph import import_graph


def test_nothing_in_the_library_imports_apps():
    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if not m.startswith("prunekit.apps")
                   and any(d.startswith("prunekit.apps") for d in deps))
    assert users == []
    assert "prunekit.apps.federated" in graph  # the graph does see the applications
