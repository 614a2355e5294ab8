"""Commissaire's service classes (its import path ``commissaire_service.service``).

:class:`CommissaireService` lives in :mod:`busapp.runtime.service`, :class:`ServiceManager`
in :mod:`busapp.runtime.manager`.
"""

from __future__ import annotations

from busapp.errors import CrashLoopError
from busapp.runtime.manager import ServiceManager
from busapp.runtime.service import CommissaireService, IncomingMessage, Subscription, WorkerOptions

__all__ = ["CommissaireService", "CrashLoopError", "IncomingMessage", "ServiceManager",
           "Subscription", "WorkerOptions"]
