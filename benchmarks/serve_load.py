"""Load and fault test of `ditkit serve` over loopback HTTP: capacity against direct
Pipeline.generate, closed-loop clients at 1x/2x/4x capacity, and faults (issue 27, "Measure").

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/serve_load.py --threads 2 --json runs/serve_load.json

It starts the real server (`python -m ditkit serve --port P --models M --max-batch B
--max-queue Q`) as a subprocess on a free 127.0.0.1 port and drives it with httpx clients:
1. capacity: B + Q closed-loop clients (a full batch always waits) for --capacity-seconds,
   against Pipeline.generate with batch_size=B, same steps and size, timed before and after;
2. load: k*B closed-loop clients (one per image slot of a batch: k times the capacity) for
   --seconds each, k in --levels; then every accepted job is checked (ended once, agrees with
   GET, every result file fetched once, the server's finished counters grew by exactly that);
3. faults: cancels (running, queued, one of a batch), a dropped event stream, guidance 1e30
   (refused by max_guidance), then a fresh job; and, on the in-process app (create_app on
   uvicorn: HTTP cannot inject it), one job of a shared sampler batch raising.
Clients follow their jobs' event streams without previews (--previews: with). --only capacity
runs only part 1. docs/benchmarks.md ("Serving under load") has the results.
Every phase has a deadline and every wait a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import math
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx
import torch
import uvicorn
from PIL import Image

import ditkit
from common import apply_threads, markdown_table, parser, write_json
from ditkit.serve import running_server
from ditkit.serve.app import create_app
from ditkit.serve.settings import ServeSettings

PROMPTS = ["a red circle", "a blue square to the left of a green triangle", "two yellow stars",
           "a purple triangle above an orange circle"]
TERMINAL = ("completed", "failed", "cancelled")
HOST = "127.0.0.1"
DRAIN_S = 600.0  # longest wait for the jobs in flight at the end of a phase (then they count as lost)
CLUSTER_GAP_S = 0.25  # completions closer than this belong to one sampler batch
POISON = "raise here"  # the in-process fault's marker prompt


def free_port() -> int:
    with socket.socket() as s:
        return s.bind((HOST, 0)) or s.getsockname()[1]


def wait_healthy(base: str, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:  # the server is up once /healthz answers 200
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"no answer from {base}/healthz within {timeout:.0f} s")


@contextlib.contextmanager
def server_process(args, threads: int):
    """`python -m ditkit serve` on a free loopback port (ditkit.serve.running_server); yields
    (base URL, process)."""
    with running_server(args.model, "--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue),
                        "--batch-wait-ms", str(args.batch_wait_ms), host=HOST,
                        env={"OMP_NUM_THREADS": str(threads)}) as server:
        yield server.url, server.process


@contextlib.contextmanager
def in_process_server(pipe, model: str, max_batch: int, max_queue: int):
    """The app from ditkit.serve.app.create_app on uvicorn in a thread (for faults HTTP cannot inject)."""
    app = create_app({model: pipe}, ServeSettings(max_batch=max_batch, max_queue=max_queue))
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=free_port(), log_level="warning"))
    (thread := threading.Thread(target=server.run, daemon=True)).start()
    try:
        wait_healthy(f"http://{HOST}:{server.config.port}")
        yield f"http://{HOST}:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        app.state.service.close()


@dataclass
class JobRecord:
    id: str
    posted: float  # monotonic time the accepted POST was sent
    ended: float | None = None
    state: str | None = None  # from the event stream
    error: dict | None = None
    terminal_events: int = 0


def job_body(args, prompt: str, seed: int, **extra) -> dict:
    return {"task": "generate", "model": args.model, "prompt": prompt, "n": 1, "steps": args.steps,
            "size": f"{args.size}x{args.size}", "seed": seed, **extra}


PREVIEWS = {"previews": "false"}  # clients that want only the result; --previews: every client watches previews


async def follow(client: httpx.AsyncClient, record: JobRecord, until: str | None = None) -> None:
    """Read the job's event stream to its end (or, with until, to the first event of that name,
    then drop the connection)."""
    name = None
    async with client.stream("GET", f"/v1/jobs/{record.id}/events", params=PREVIEWS) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name is not None:
                data = json.loads(line[6:])
                if name in TERMINAL:
                    record.state, record.error, record.ended = name, data.get("error"), time.monotonic()
                    record.terminal_events += 1
                if until is not None and name == until and data.get("step", 1) >= 1:
                    return
                name = None


async def post(client: httpx.AsyncClient, body: dict) -> str:
    """POST /v1/jobs; the new job's id."""
    return (await client.post("/v1/jobs", json=body)).json()["id"]


async def submit_and_follow(client: httpx.AsyncClient, body: dict) -> JobRecord:
    posted = time.monotonic()
    r = await client.post("/v1/jobs", json=body)
    if r.status_code != 202:
        raise RuntimeError(f"POST /v1/jobs answered {r.status_code}: {r.text[:200]}")
    await follow(client, record := JobRecord(r.json()["id"], posted))
    return record


async def wait_state(client: httpx.AsyncClient, job_id: str, timeout: float = DRAIN_S) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (view := (await client.get(f"/v1/jobs/{job_id}")).json()).get("state") in TERMINAL:
            return view
        await asyncio.sleep(0.05)
    raise RuntimeError(f"job {job_id} did not finish within {timeout:.0f} s")


def new_client(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(30.0, read=DRAIN_S),
                             limits=httpx.Limits(max_connections=200, max_keepalive_connections=200))


@dataclass
class LoadResult:
    records: list[JobRecord] = field(default_factory=list)
    refused: int = 0  # 429 answers
    other_errors: list[str] = field(default_factory=list)


async def closed_loop(args, base: str, clients: int, seconds: float, seed0: int) -> LoadResult:
    """`clients` loops of post -> follow to the end -> post again, for `seconds`; the jobs in flight
    at the deadline are followed to their end (bounded by DRAIN_S)."""
    result = LoadResult()
    deadline = time.monotonic() + seconds

    async def one(c: int, client: httpx.AsyncClient) -> None:
        for k in itertools.count():
            if time.monotonic() >= deadline:
                return
            body = job_body(args, PROMPTS[(c + k) % len(PROMPTS)], seed0 + c * 100_000 + k)
            posted = time.monotonic()
            r = await client.post("/v1/jobs", json=body)
            if r.status_code == 429:
                result.refused += 1
                await asyncio.sleep(min(float(r.headers.get("retry-after", 1)), max(deadline - time.monotonic(), 0)))
                continue
            if r.status_code != 202:
                result.other_errors.append(f"{r.status_code} {r.text[:120]}")
                continue
            record = JobRecord(r.json()["id"], posted)
            result.records.append(record)
            await follow(client, record)

    async with new_client(base) as client:
        await asyncio.wait_for(asyncio.gather(*(one(c, client) for c in range(clients))), seconds + DRAIN_S)
    return result


def finished_totals(base: str) -> dict[str, int]:
    """ditkit_jobs_finished_total by state, from GET /metrics."""
    out = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("ditkit_jobs_finished_total{"):
            state = line.split('"')[1]
            out[state] = int(float(line.rsplit(" ", 1)[1]))
    return out


async def check_jobs(base: str, records: list[JobRecord], size: int, before: dict[str, int]) -> list[str]:
    """Problems with the accepted jobs: lost (no terminal state), duplicated (an id twice, two
    terminal events, a finish counted twice by the server), results missing or not retrievable."""
    problems = []
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        problems.append(f"{len(ids) - len(set(ids))} duplicated job ids")
    async with new_client(base) as client:
        for rec in records:
            if rec.terminal_events != 1 or rec.state not in TERMINAL:
                problems.append(f"{rec.id}: {rec.terminal_events} terminal events (state {rec.state})")
            view = (await client.get(f"/v1/jobs/{rec.id}")).json()
            if view.get("state") != rec.state:
                problems.append(f"{rec.id}: the stream said {rec.state}, GET says {view.get('state')}")
            if rec.state == "completed":
                if len(view.get("result", [])) != 1:  # every job here asks for n=1
                    problems.append(f"{rec.id}: {len(view.get('result', []))} result files for n=1")
                for url in view.get("result", []):
                    r = await client.get(url)
                    if r.status_code != 200 or Image.open(io.BytesIO(r.content)).size != (size, size):
                        problems.append(f"{rec.id}: {url} answered {r.status_code}")
    after = finished_totals(base)
    for state in TERMINAL:
        seen = sum(r.state == state for r in records)
        grew = after.get(state, 0) - before.get(state, 0)
        if grew != seen:
            problems.append(f"the server counted {grew} {state} jobs, the clients saw {seen}")
    return problems


def batches(records: list[JobRecord]) -> list[tuple[float, int]]:
    """(end time, images) of each sampler batch, from completion times clustered by CLUSTER_GAP_S."""
    ends = sorted(r.ended for r in records if r.state == "completed")
    out: list[tuple[float, int]] = []
    for t in ends:
        if out and t - out[-1][0] <= CLUSTER_GAP_S:
            out[-1] = (t, out[-1][1] + 1)
        else:
            out.append((t, 1))
    return out


def steady_rate(records: list[JobRecord]) -> float:
    """Images per second from the end of the first batch to the end of the last."""
    b = batches(records)
    if len(b) < 2:
        return float("nan")
    return sum(n for _, n in b[1:]) / (b[-1][0] - b[0][0])


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (with few samples, p99 is the largest)."""
    return sorted(values)[max(0, math.ceil(q / 100 * len(values)) - 1)] if values else float("nan")


async def warm(args, base: str) -> None:
    """One full batch through the server, untimed (text encoder, allocator, first-call costs)."""
    async with new_client(base) as client:
        await asyncio.gather(*(submit_and_follow(client, job_body(args, PROMPTS[k % 4], k))
                               for k in range(args.max_batch)))


def direct_rate(pipe, args, seconds: float, seed0: int) -> list[float]:
    """Seconds per Pipeline.generate call of max_batch images, repeated for `seconds` (at least 2 calls)."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.max_batch)]
    times, end = [], time.monotonic() + seconds
    while time.monotonic() < end or len(times) < 2:
        t0 = time.perf_counter()
        pipe.generate(prompts, steps=args.steps, size=args.size, seed=seed0 + len(times) * args.max_batch,
                      batch_size=args.max_batch)
        times.append(time.perf_counter() - t0)
    return times


async def faults(args, base: str) -> list[dict]:
    """The fault rows against the real server: each says what was done, what must hold, what held."""
    rows = []
    B = args.max_batch

    def row(fault: str, expected: str, observed: str, ok: bool) -> None:
        rows.append({"fault": fault, "expected": expected, "observed": observed, "ok": bool(ok)})
        print(f"  {'ok  ' if ok else 'FAIL'} {fault}: {observed}", flush=True)

    async with new_client(base) as client:
        # Cancel a job running alone: it must stop at its next sampler step, long before its end.
        body = job_body(args, PROMPTS[0], 1, steps=max(args.steps, 4) * 4)
        rec = JobRecord(await post(client, body), time.monotonic())
        await follow(client, rec, until="progress")
        t0, cancel = time.monotonic(), await client.post(f"/v1/jobs/{rec.id}/cancel")
        view = await wait_state(client, rec.id)
        took = time.monotonic() - t0
        again = await client.post(f"/v1/jobs/{rec.id}/cancel")
        row("cancel a running job", "cancelled within about one step; a second cancel is 409",
            f"{view['state']} {took:.2f} s after the cancel (at step {view['step']} of {view['steps']}); "
            f"second cancel {again.status_code}",
            cancel.status_code == 200 and view["state"] == "cancelled" and again.status_code == 409)

        # Cancel a queued job (behind a running one of another batch key): cancelled at once.
        running = await post(client, job_body(args, PROMPTS[0], 2, guidance=2.0))
        queued = await post(client, job_body(args, PROMPTS[1], 3))
        answer = (await client.post(f"/v1/jobs/{queued}/cancel")).json()
        first = await wait_state(client, running)
        row("cancel a queued job", "cancelled at once; the job ahead completes",
            f"queued job {answer['state']}; the job ahead {first['state']}",
            answer["state"] == "cancelled" and first["state"] == "completed")

        # Cancel one job of a shared sampler batch: it ends cancelled, its batch-mates complete.
        blocker = await post(client, job_body(args, PROMPTS[0], 4, guidance=2.0))
        mates = [await post(client, job_body(args, PROMPTS[k % 4], 10 + k)) for k in range(B)]
        await wait_state(client, blocker)
        victim = JobRecord(mates[0], time.monotonic())
        await follow(client, victim, until="progress")
        await client.post(f"/v1/jobs/{victim.id}/cancel")
        states = [(await wait_state(client, j))["state"] for j in mates]
        row(f"cancel 1 of {B} jobs in one batch", "that job cancelled, the others completed",
            f"{', '.join(states)}", states[0] == "cancelled" and all(s == "completed" for s in states[1:]))

        # A client that drops its event stream mid-run: the job still completes, its image is there.
        dropped = JobRecord(await post(client, job_body(args, PROMPTS[2], 20)), time.monotonic())
        await follow(client, dropped, until="progress")  # leaves the `async with` and closes the connection
        view = await wait_state(client, dropped.id)
        png = await client.get(view["result"][0]) if view["result"] else None
        row("client drops its event stream mid-run", "the job completes, its result is retrievable",
            f"{view['state']}, result {png.status_code if png else 'missing'}",
            view["state"] == "completed" and png is not None and png.status_code == 200)

        # A guidance that would overflow the sampler (1e30): refused before queueing (max_guidance).
        r = await client.post("/v1/jobs", json=job_body(args, PROMPTS[0], 30, guidance=1e30))
        message = r.json()["error"]["message"]
        row("guidance 1e30 (overflows the sampler)", "400 naming the server's limit, nothing queued",
            f"{r.status_code}: {message[:90]}", r.status_code == 400 and "max_guidance" in message)

        # Still serving.
        health = await client.get("/healthz")
        fresh = await submit_and_follow(client, job_body(args, PROMPTS[3], 40))
        row("after the faults", "/healthz 200 and a new job completes", f"/healthz {health.status_code}, "
            f"new job {fresh.state}", health.status_code == 200 and fresh.state == "completed")
    return rows


async def batched_fault(args, pipe) -> dict:
    """One job of a shared sampler batch raises (injected; the in-process app): it fails alone
    with its message, its batch-mates complete (the worker re-runs the batch job by job)."""
    real = pipe.engine.generate

    def generate(request, callback=None):
        if POISON in request.prompts:
            raise RuntimeError("injected failure for the load test")
        return real(request, callback)

    pipe.engine.generate = generate  # an instance attribute: shadows the method for this pipeline only
    try:
        with in_process_server(pipe, args.model, args.max_batch, args.max_queue) as base:
            async with new_client(base) as client:
                blocker = await post(client, job_body(args, PROMPTS[0], 50, guidance=2.0))
                prompts = [POISON] + [PROMPTS[k % 4] for k in range(1, args.max_batch)]
                jobs = [asyncio.create_task(submit_and_follow(client, job_body(args, prompt, 51 + k)))
                        for k, prompt in enumerate(prompts)]
                await wait_state(client, blocker)
                recs = await asyncio.gather(*jobs)
                fresh = await submit_and_follow(client, job_body(args, PROMPTS[1], 60))
    finally:
        del pipe.engine.generate
    message = (recs[0].error or {}).get("message", "")
    ok = (recs[0].state == "failed" and "injected failure" in message
          and all(r.state == "completed" for r in recs[1:]) and fresh.state == "completed")
    observed = (f"{recs[0].state}: \"{message}\"; batch-mates {', '.join(r.state for r in recs[1:])}; "
                f"next job {fresh.state}")
    print(f"  {'ok  ' if ok else 'FAIL'} injected exception in a shared batch: {observed}", flush=True)
    return {"fault": f"exception in 1 of {args.max_batch} jobs of one batch (injected, in-process app)",
            "expected": "that job fails with its message, its batch-mates complete, the server serves on",
            "observed": observed, "ok": ok}


def capacity(args, pipe, base: str) -> dict:
    """Images per second, direct and through the server, in --rounds interleaved rounds (direct
    then server, then server then direct, ...) so the other load on the machine hits both alike;
    the ratio is the median of the rounds' ratios."""
    rounds, problems = [], []
    for r in range(args.rounds):
        seconds = args.capacity_seconds / args.rounds
        measured = {}
        for side in (("direct", "server") if r % 2 == 0 else ("server", "direct")):
            if side == "direct":
                measured["direct"] = direct_rate(pipe, args, seconds / 2, 1000 * (r + 1))
            else:
                before = finished_totals(base)
                cap = asyncio.run(closed_loop(args, base, args.max_batch + args.max_queue, seconds, 10_000 * (r + 1)))
                problems += asyncio.run(check_jobs(base, cap.records, args.size, before)) + cap.other_errors
                measured["server"] = cap.records
        direct, server = args.max_batch / statistics.median(measured["direct"]), steady_rate(measured["server"])
        rounds.append({"direct_img_s": direct, "server_img_s": server, "ratio": server / direct,
                       "direct_calls": len(measured["direct"]), "server_batches": len(batches(measured["server"]))})
        print(f"capacity round {r}: {rounds[-1]}", flush=True)
    out = {key: statistics.median(x[key] for x in rounds) for key in ("direct_img_s", "server_img_s", "ratio")}
    return {**out, "rounds": rounds, "problems": problems}


def load_level(args, base: str, level: float, seed0: int) -> dict:
    clients = max(1, round(level * args.max_batch))
    before = finished_totals(base)
    res = asyncio.run(closed_loop(args, base, clients, args.seconds, seed0))
    problems = asyncio.run(check_jobs(base, res.records, args.size, before)) + res.other_errors
    latency = [r.ended - r.posted for r in res.records if r.state == "completed"]
    b = batches(res.records)  # mean images per sampler batch, median seconds between batch ends:
    per = float(statistics.mean(n for _, n in b)) if b else float("nan")
    gap = statistics.median(t1 - t0 for (t0, _), (t1, _) in zip(b, b[1:])) if len(b) > 1 else float("nan")
    row = {"level": f"{level:g}x", "clients": clients, "accepted": len(res.records),
           "completed": sum(r.state == "completed" for r in res.records), "refused_429": res.refused,
           "p50_s": percentile(latency, 50), "p99_s": percentile(latency, 99), "img_s": steady_rate(res.records),
           "images_per_batch": per, "s_per_batch": gap, "lost_or_duplicated": len(problems), "problems": problems[:10]}
    print(f"load: {row}", flush=True)
    return row


def print_tables(report: dict) -> None:
    c = report["capacity"]
    print("\n" + markdown_table(["round", "direct img/s", "server img/s", "server / direct"],
                                [[str(i), r["direct_img_s"], r["server_img_s"], f"{r['ratio']:.2f}x"]
                                 for i, r in enumerate(c["rounds"])]
                                + [["**median**", c["direct_img_s"], c["server_img_s"], f"**{c['ratio']:.2f}x** "
                                    "(target >= 0.90x)"]]))
    keys = list(report["load"][0])[:-1] if report["load"] else []  # every column but "problems"
    print("\n" + markdown_table(["load", "clients", "accepted", "completed", "429s", "p50 s", "p99 s", "img/s",
                                 "images per batch", "s per batch", "lost or duplicated"],
                                [[r[k] for k in keys] for r in report["load"]]))
    print("\n" + markdown_table(["fault", "must hold", "observed", "ok"],
                                [[r["fault"], r["expected"], r["observed"], "yes" if r["ok"] else "**no**"]
                                 for r in report["faults"]], align="llll"))


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--model", default="shapes-64")
    p.add_argument("--max-batch", type=int, default=4, help="the server's --max-batch and the direct batch size")
    p.add_argument("--max-queue", type=int, default=8, help="the server's --max-queue (small: 4x capacity meets 429s)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60.0, help="seconds per load level (issue 27: 60)")
    p.add_argument("--capacity-seconds", type=float, default=40.0,
                   help="seconds of server saturation in all (direct calls get half as long)")
    p.add_argument("--rounds", type=int, default=4, help="interleaved capacity rounds")
    p.add_argument("--levels", default="1,2,4", help="load levels, in multiples of capacity")
    p.add_argument("--batch-wait-ms", type=float, default=50.0, help="the server's --batch-wait-ms")
    p.add_argument("--previews", action="store_true", help="clients follow with previews (default: result only)")
    p.add_argument("--only", choices=["capacity"], help="run only the capacity part")
    args = p.parse_args()
    if args.previews:
        PREVIEWS.clear()
    apply_threads(args)
    threads = args.threads or torch.get_num_threads()
    started = time.monotonic()
    pipe = ditkit.load(args.model)
    print(f"{args.model}: batch {args.max_batch}, {args.steps} steps, {args.size}x{args.size}, {threads} threads",
          flush=True)
    direct_rate(pipe, args, 0.0, 0)  # warm-up (text encoder, allocator), not timed
    report: dict = {"args": vars(args), "threads": threads}
    with server_process(args, threads) as (base, proc):
        asyncio.run(warm(args, base))
        report["capacity"] = capacity(args, pipe, base)
        levels = [] if args.only else args.levels.split(",")
        report["load"] = [load_level(args, base, float(level), 100_000 * (i + 2)) for i, level in enumerate(levels)]
        print("faults:", flush=True)
        report["faults"] = [] if args.only else asyncio.run(faults(args, base))
        report["server_alive"] = proc.poll() is None
    if not args.only:
        report["faults"].append(asyncio.run(batched_fault(args, pipe)))
    report["wall_s"] = time.monotonic() - started
    ok = (not report["capacity"]["problems"] and report["capacity"]["ratio"] >= 0.9 and report["server_alive"]
          and not any(r["problems"] for r in report["load"]) and all(r["ok"] for r in report["faults"]))
    print_tables(report)
    print(f"\nserver process alive after the faults: {report['server_alive']}; wall time {report['wall_s']:.0f} s; "
          f"all checks {'passed' if ok else 'FAILED'}")
    write_json(args.json, report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
