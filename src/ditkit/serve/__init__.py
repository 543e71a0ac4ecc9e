"""`ditkit serve`: an HTTP API over ditkit.api (an entry point beside cli, rank 10).

    app = create_app({"shapes-64": ditkit.load("shapes-64")}, ServeSettings())   # serve.app

OpenAI-Images-compatible endpoints (serve.openai_routes), a native job API for every task
(serve.job_routes), one worker thread per model with a bounded queue and shape-invariant
batching (serve.worker), results kept in memory for a TTL (serve.jobs). docs/serving.md
documents the API. Nothing outside ditkit.cli.serve imports this package.

    with running_server("shapes-64") as server: ...          # `ditkit serve` as a child process (serve.process)
"""

from ditkit.serve.process import ServerProcess, running_server

__all__ = ["ServerProcess", "running_server"]
