"""Lists import cycles among a package's modules (every import, module-level or inside a
function); exits 1 if there is one.

    python tools/import_cycles.py [keras_pd]

`from pkg import submodule` counts as an edge to the submodule only, not to the package.
"""

import ast
import os
import sys


def import_graph(root):
    """{module: set of modules of the same package it imports} for the package at `root`."""
    modules = {}
    for directory, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = path[:-3].replace(os.sep, ".")
                modules[module[:-len(".__init__")] if module.endswith(".__init__")
                        else module] = path
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and node.module:
                subs = [f"{node.module}.{a.name}" for a in node.names
                        if f"{node.module}.{a.name}" in modules]
                graph[module].update(subs)
                if node.module in modules and len(subs) < len(node.names):
                    graph[module].add(node.module)
            elif isinstance(node, ast.Import):
                graph[module].update(a.name for a in node.names if a.name in modules)
    return graph


def cycles(graph):
    """The strongly connected groups of more than one module (each holds a cycle), sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def connect(node):  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(groups)


def main(argv):
    root = argv[1] if len(argv) > 1 else "keras_pd"
    found = cycles(import_graph(root))
    for group in found:
        print("modules importing each other: " + ", ".join(group))
    print(f"{len(found)} import cycle(s) in {root}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
