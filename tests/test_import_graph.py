"""The package's layers import downwards only: ``models ← sampling ← rollout ← train``, with
``algos``, ``rewards`` and ``envs`` as leaves, and no cycle between subpackages (function-
level imports included: a cycle hidden in a function is still a cycle)."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "rlpt_jax"
# For each layer, the layers it must never import.
FORBIDDEN = {
    "models": {"sampling", "rollout", "train"},
    "sampling": {"rollout", "train"},
    "rollout": {"train"},
    "batch": {"models", "sampling", "rollout", "train"},
    "algos": {"models", "sampling", "rollout", "train", "data"},
    "rewards": {"models", "sampling", "rollout", "train"},
    "envs": {"models", "sampling", "rollout", "train", "rewards"},
    "data": {"sampling", "rollout", "train"},
}


def _layer(module: str) -> str:
    """``rlpt_jax.rollout.tree`` → ``rollout``; ``rlpt_jax.batch`` → ``batch``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def import_graph() -> dict[str, set[str]]:
    """Layer → the other layers its modules import, at any depth of the module."""
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        module = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rlpt_jax"):
                if node.module == "rlpt_jax":  # from rlpt_jax import batch
                    targets |= {a.name for a in node.names}
                else:
                    targets.add(_layer(node.module))
            elif isinstance(node, ast.Import):
                targets |= {_layer(a.name) for a in node.names if a.name.startswith("rlpt_jax.")}
        layer = _layer(module.removesuffix(".__init__"))
        graph.setdefault(layer, set()).update(targets - {layer})
    return graph


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_import_runs_up_the_layers(layer):
    graph = import_graph()
    assert layer in graph, f"no module found for layer {layer!r}"
    assert not graph[layer] & FORBIDDEN[layer], (layer, sorted(graph[layer] & FORBIDDEN[layer]))


def test_no_cycle_between_layers():
    graph = import_graph()
    done, active = set(), []

    def visit(node):
        if node in active:
            raise AssertionError(
                "import cycle: " + " -> ".join(active[active.index(node) :] + [node])
            )
        if node in done:
            return
        active.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        active.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
