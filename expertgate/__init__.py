"""The command layer: ``expertgate`` commands, benchmarks of the gateway and process launchers.

It sits on top of the three libraries and is the only package that may import both
``gateway`` (the server) and ``evals`` (offline evaluation); neither of those imports the
other, and ``routers`` imports neither. ``expertgate.cli`` holds the commands,
``expertgate.bench`` the gateway benchmarks, ``expertgate.procs`` the launchers of real
processes (redis-server, llama.cpp experts, ``expertgate serve``) used by the demo, the
benchmarks and the tests.
"""

__all__: list[str] = []
