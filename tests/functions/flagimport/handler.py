"""Imports cleanly unless the node's data folder holds a file named `import-fails`: lets a test break
the import of an already deployed function, to see Runtime.ImportModuleError at invocation time."""

import os

if os.path.exists(os.path.join(os.environ["LAMBDA_TASK_ROOT"], "..", "..", "import-fails")):
    import module_that_does_not_exist  # type: ignore[import-not-found]  # noqa: F401


def handler(event, context):
    return "imported"
