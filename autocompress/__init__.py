"""autocompress: search how to compress a PyTorch model under a measured hardware budget."""

from autocompress.errors import AutocompressError
from autocompress.inventory import LayerInfo, LayerInventory, build_inventory
from autocompress.methods import apply_policy
from autocompress.policy import CompressionPolicy, LayerPolicy
from autocompress.tasks import Task, load_task

__version__ = "0.1.0"

# The search's machinery lives in autocompress.engine, so no subpackage shadows ac.search.
from autocompress.engine.api import SearchResult, search  # noqa: E402

__all__ = [
    "AutocompressError",
    "CompressionPolicy",
    "LayerInfo",
    "LayerInventory",
    "LayerPolicy",
    "SearchResult",
    "Task",
    "__version__",
    "apply_policy",
    "build_inventory",
    "load_task",
    "search",
]
