"""The search: objective (backend-free), Optuna controller, baselines, and ``search()``.

>>> from autocompress.engine import SearchConfig
>>> SearchConfig().strategy
'tpe'
"""

from autocompress.engine.api import SearchResult, run, search
from autocompress.engine.config import SearchConfig
from autocompress.engine.objective import Objective, TrialOutcome

__all__ = ["Objective", "SearchConfig", "SearchResult", "TrialOutcome", "run", "search"]
