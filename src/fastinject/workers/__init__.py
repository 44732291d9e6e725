"""Every core of the machine: a supervisor hands each connection to the least-loaded worker.

A :class:`Supervisor` binds the addresses, runs worker processes that each build the user's
``fastinject.Server`` from a factory, accepts every connection and passes the socket to the
least-loaded worker, whose ``ConnectionInjector`` serves it (TLS handshake included).  The
``fastinject serve`` command (:mod:`fastinject.workers.cli`) runs one.
"""

from .binds import Bind, TlsFiles
from .factory import FactoryError
from .handle import WorkerBootError
from .supervisor import Supervisor
from .targets import WorkerTarget

__all__ = ["Bind", "FactoryError", "Supervisor", "TlsFiles", "WorkerBootError", "WorkerTarget"]
