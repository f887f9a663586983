"""Make torch unimportable, as on a machine where it is not installed (tests/test_no_torch.py).

Put this folder on ``PYTHONPATH``: Python imports ``sitecustomize`` at start-up. Then, even
where torch is installed (the test extras install it), ``import torch`` or any ``torch.*``
raises ``ModuleNotFoundError`` and ``importlib.util.find_spec("torch")`` returns None: the
answer libraries that probe for an optional torch (transformers' ``is_torch_available``)
get when it is absent, so they take their torch-free paths instead of failing half-way.
``RLPT_JAX_BLOCK_MODULES`` (comma-separated top-level names) blocks more modules the same
way: the tests pass every module that ``requirements.txt`` does not install, so that a test
extra (jinja2 comes with torch) cannot stand in for a missing runtime dependency.

A ``None`` entry in ``sys.modules`` is the import system's own way to say "not importable";
the meta-path finder keeps the block even if someone deletes those entries. A module
already imported while Python started (by a ``.pth`` file) is left alone. Package metadata
(``importlib.metadata.version("torch")``) stays visible; nothing on our runtime path asks
for it without first finding the module.
"""

import os
import sys

BLOCKED = frozenset(
    {"torch", "torchgen", "functorch"}
    | {n for n in os.environ.get("RLPT_JAX_BLOCK_MODULES", "").split(",") if n}
) - set(sys.modules)


class ModuleBlocker:
    """Refuses to find a blocked top-level module or anything inside it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (blocked by tests/torch_blocker)", name=fullname
            )
        return None


for _name in BLOCKED:
    sys.modules[_name] = None
sys.meta_path.insert(0, ModuleBlocker())
