"""The search: objective (backend-free), Optuna controller, baselines, and ``search()``.

>>> from autocompress.search import SearchConfig
>>> SearchConfig().strategy
'tpe'
"""

from autocompress.search.api import SearchResult, run, search
from autocompress.search.config import SearchConfig
from autocompress.search.objective import Objective, TrialOutcome

__all__ = ["Objective", "SearchConfig", "SearchResult", "TrialOutcome", "run", "search"]
