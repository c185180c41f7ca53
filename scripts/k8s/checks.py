#!/usr/bin/env python3
"""The checks scripts/k8s-e2e runs on its cluster (issue 16), in order:

1. install with mul.replicas=10: all pods Ready, GET /workers through the
   Service lists 10 mul + general workers with the right ops, 200 mixed tasks
   right, `helm test --logs` passes;
2. helm upgrade add.replicas=3 under load: token Secret unchanged, the
   planner (same pod) keeps its queue, no task submitted meanwhile lost;
3. hot swap through the kubelet: the modules ConfigMap gets the v2 mul; every
   mul-capable worker serves it without a restart, no task fails;
4. two busy workers deleted while 500 tasks run, short tasks then 5-8 s ones:
   submitted = completed, 0 lost, 0 executed twice (executions counted in the
   workers' own logs, streamed from before the deletion), the deleted pods
   drain and exit within their grace period, replacements register;
5. the planner pod deleted under load, its volume kept: the new pod recovers
   the queue, no acknowledged task lost;
6. probes gate traffic: a worker started while its planner is unreachable is
   not Ready, and becomes Ready once the planner is back;
7. (the `ha` example on PostgreSQL: once that store exists);
then removing a module from the ConfigMap the documented way.

Each check asserts and stops the run on the first failure. Figures go to a
report printed at the end. Environment: KUBECTL, HELM, CHART (the 1.20 copy),
WORK, MUL_V2 (the v2 mul component), TEST_IMAGE. Python stdlib only.
"""

import base64
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

KUBECTL = os.environ["KUBECTL"]
HELM = os.environ["HELM"]
CHART = os.environ["CHART"]
WORK = os.environ["WORK"]
MUL_V2 = os.environ["MUL_V2"]
TEST_IMAGE = os.environ["TEST_IMAGE"]
RELEASE = "workers"
PLANNER_DEPLOYMENT = f"{RELEASE}-planner"
V2_OFFSET = 1_000_000  # tests/fixtures/ops/mul-v2: a * b + 1,000,000

REPORT = []


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def log(message):
    print(f"   {time.strftime('%H:%M:%S')} {message}", flush=True)


def report(line):
    REPORT.append(line)
    log(line)


# --- commands --------------------------------------------------------------------


def run(cmd, timeout=600, check=True):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd[:6])}... exited {result.returncode}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return result.stdout


def kubectl(*args, **kw):
    return run([KUBECTL, *args], **kw)


def kjson(*args):
    return json.loads(kubectl(*args, "-o", "json"))


def helm(*args, timeout=600):
    return run([HELM, *args], timeout=timeout)


def wait(deadline, what, probe, interval=0.25):
    """Polls `probe` until it returns something true; fails after `deadline` s."""
    until = time.monotonic() + deadline
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > until:
            raise CheckFailed(f"timed out after {deadline} s waiting for {what}")
        time.sleep(interval)


# --- HTTP ----------------------------------------------------------------------------


def http(method, url, body=None, timeout=10):
    """(status, parsed JSON or text); status 0 when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (OSError, urllib.error.URLError):
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def planner_url():
    """The planner's Service, by its cluster IP (kube-proxy's rules on this node)."""
    ip = kubectl("get", "svc", PLANNER_DEPLOYMENT, "-o", "jsonpath={.spec.clusterIP}").strip()
    return f"http://{ip}:3000"


def expected(op, args):
    a, b = args
    return a + b if op == "add" else a * b


def mixed_tasks(n, ops=("add", "mul")):
    return [{"op": random.choice(ops), "args": [random.randint(-1000, 1000), random.randint(-1000, 1000)]} for _ in range(n)]


def submit(planner, tasks):
    status, answer = http("POST", f"{planner}/tasks", tasks, timeout=30)
    expect(status == 202, f"submission refused: {status} {answer}")
    return answer["ids"]


def wait_final(planner, ids, deadline):
    """Every task final; returns their views by id."""
    views, pending = {}, list(ids)
    until = time.monotonic() + deadline
    while pending:
        still = []
        for task_id in pending:
            status, view = http("GET", f"{planner}/tasks/{task_id}")
            if status == 200 and view["status"] in ("done", "failed", "cancelled"):
                views[task_id] = view
            else:
                still.append(task_id)
        pending = still
        if pending:
            if time.monotonic() > until:
                raise CheckFailed(f"{len(pending)} tasks not final after {deadline} s, e.g. {pending[:5]}")
            time.sleep(0.5)
    return views


def right(view, v2_allowed=False):
    if view["status"] != "done":
        return False
    want = expected(view["op"], view["args"])
    return view["result"] == want or (v2_allowed and view["op"] == "mul" and view["result"] == want + V2_OFFSET)


# --- pods ----------------------------------------------------------------------------


def pods(component=None):
    selector = f"app.kubernetes.io/instance={RELEASE}"
    if component:
        selector += f",app.kubernetes.io/component={component}"
    return kjson("get", "pods", "-l", selector)["items"]


def ready(pod):
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def restarts(pod_list):
    return {p["metadata"]["name"]: sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses", [])) for p in pod_list}


def worker_pods():
    return [p for p in pods() if p["metadata"]["labels"].get("task-system/role") == "worker"]


def live_worker_pods():
    return [p for p in worker_pods() if not p["metadata"].get("deletionTimestamp")]


def all_ready(expected_count):
    items = [p for p in pods() if not p["metadata"].get("deletionTimestamp")
             and p["metadata"]["labels"].get("app.kubernetes.io/component") != "test"]
    return len(items) == expected_count and all(ready(p) for p in items)


def worker_ops(pod):
    status, ops = http("GET", f"http://{pod['status']['podIP']}:8080/ops", timeout=3)
    return {op["name"]: op["digest"] for op in ops} if status == 200 else None


def worker_busy(pod):
    status, text = http("GET", f"http://{pod['status']['podIP']}:8080/", timeout=3)
    return status == 200 and isinstance(text, (str, dict, list)) and not str(text).startswith("ready to work")


class LogStreams:
    """`kubectl logs -f` of every worker pod, started as pods appear: each
    worker logs one `ran` line per execution (worker::executor at debug)."""

    def __init__(self):
        self.lines = {}  # pod -> list of parsed JSON log lines
        self.ended = {}  # pod -> monotonic time its stream ended
        self.procs = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow_new_pods, daemon=True)

    def __enter__(self):
        self._start_new()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait()

    def _follow_new_pods(self):
        while not self.stop.wait(0.5):
            try:
                self._start_new()
            except (CheckFailed, subprocess.SubprocessError, ValueError):
                pass

    def _start_new(self):
        for pod in worker_pods():
            name = pod["metadata"]["name"]
            running = any("running" in c.get("state", {}) for c in pod["status"].get("containerStatuses", []))
            if name not in self.procs and running:
                proc = subprocess.Popen([KUBECTL, "logs", "-f", name], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
                self.procs[name] = proc
                with self.lock:
                    self.lines[name] = []
                threading.Thread(target=self._read, args=(name, proc), daemon=True).start()

    def _read(self, name, proc):
        for line in proc.stdout:
            try:
                parsed = json.loads(line)
            except ValueError:
                # Not the worker's: e.g. kubectl saying the container is gone.
                parsed = {"kubectl": line.strip()}
            with self.lock:
                self.lines[name].append(parsed)
        with self.lock:
            self.ended[name] = time.monotonic()

    def executions(self):
        """task id -> number of executions, over every worker's log."""
        counts = {}
        with self.lock:
            for lines in self.lines.values():
                for line in lines:
                    fields = line.get("fields", {})
                    if fields.get("message") == "ran" and "task" in fields:
                        counts[fields["task"]] = counts.get(fields["task"], 0) + 1
        return counts

    def messages(self, pod):
        """The worker's own log messages, in order."""
        with self.lock:
            return [line["fields"].get("message", "") for line in self.lines.get(pod, []) if "fields" in line]


# --- the checks --------------------------------------------------------------------

VALUES = f"""
image: {{pullPolicy: Never}}
tests:
  image: {{repository: {TEST_IMAGE.rsplit(':', 1)[0]}, tag: "{TEST_IMAGE.rsplit(':', 1)[1]}", pullPolicy: Never}}
  timeoutSeconds: 60
logging:
  format: json
  # One `ran` line per execution, which check 4 counts.
  level: info,worker::executor=debug
planner:
  persistence: {{enabled: true, storageClass: e2e-local, size: 1Gi}}
  resources: {{requests: {{cpu: 50m, memory: 64Mi}}}}
worker:
  # 2 cores for ~20 pods: small requests, so that scheduling never waits.
  resources:
    requests: {{cpu: 10m, memory: 32Mi}}
    limits: {{cpu: "1", memory: 256Mi}}
  # Short tasks on every flavor, so that work spreads and a worker is caught
  # busy (check 4).
  workMs: "50-200"
"""


def check_server_dry_run(state):
    """What the defaults and every example render, through the real API
    server's validation and admission (`kubectl apply --dry-run=server`).
    PodDisruptionBudgets (policy/v1) and ServiceMonitors are left out: 1.20
    has neither."""
    examples = sorted(f for f in os.listdir(os.path.join(CHART, "examples")) if f.endswith(".yaml"))
    for example in [None] + examples:
        args = ["template", RELEASE, CHART] + (["-f", os.path.join(CHART, "examples", example)] if example else [])
        rendered = helm(*args)
        docs = [d for d in rendered.split("\n---") if d.strip() and "kind: PodDisruptionBudget" not in d
                and "kind: ServiceMonitor" not in d]
        result = subprocess.run([KUBECTL, "apply", "--dry-run=server", "-f", "-"], input="\n---".join(docs),
                                capture_output=True, text=True, timeout=120)
        expect(result.returncode == 0, f"server-side dry run of {example or 'the defaults'}:\n{result.stderr}")
        expect(result.stdout.count("(server dry run)") == len([d for d in docs if "kind:" in d]),
               f"server-side dry run of {example or 'the defaults'} did not cover every object:\n{result.stdout}")
    report(f"0. server-side dry run: the defaults and {len(examples)} examples accepted by the API server")


def check_install(state):
    values = os.path.join(WORK, "values.yaml")
    with open(values, "w") as f:
        f.write(VALUES)
    state["values"] = values
    started = time.monotonic()
    helm("install", RELEASE, CHART, "-f", values, "--set", "mul.replicas=10", "--wait", "--timeout", "5m")
    took = time.monotonic() - started
    expect(all_ready(12), "after --wait, not all 12 pods (planner, 1 general, 10 mul) are Ready")
    report(f"1. install: 12 pods Ready {took:.1f} s after `helm install` began")
    planner = planner_url()
    state["planner"] = planner

    def listed():
        status, workers = http("GET", f"{planner}/workers")
        return workers if status == 200 and len(workers) == 11 else None

    workers = wait(60, "11 workers in GET /workers through the Service", listed)
    by_flavor = {}
    for w in workers:
        flavor = w["id"].split("-")[1]  # pod names: workers-<flavor>-<hash>-<id>
        by_flavor.setdefault(flavor, []).append(sorted(op["name"] for op in w["ops"]))
    expect(len(by_flavor.get("mul", [])) == 10 and all(ops == ["mul"] for ops in by_flavor["mul"]),
           f"10 mul workers offering [mul]: {by_flavor}")
    expect(by_flavor.get("general") == [["add", "mul"]], f"1 general worker offering add and mul: {by_flavor}")
    expect("add" not in by_flavor, f"no add workers by default: {by_flavor}")
    report(f"1. GET /workers through the Service: {', '.join(f'{len(v)} {k}' for k, v in sorted(by_flavor.items()))}, right ops")

    tasks = mixed_tasks(200)
    ids = submit(planner, tasks)
    views = wait_final(planner, ids, 120)
    wrong = [v for v in views.values() if not right(v)]
    expect(not wrong, f"{len(wrong)} of 200 tasks wrong, e.g. {wrong[:2]}")
    report("1. 200 mixed tasks through the Service: 200 right")

    out = helm("test", RELEASE, "--logs", "--timeout", "3m")
    expect("PASS" in out, f"helm test printed no PASS:\n{out}")
    answers = [line.split(": HTTP")[0].strip() + " = " + str(json.loads(line.split("HTTP 200 ", 1)[1])["result"])
               for line in out.splitlines() if "HTTP 200 {" in line]
    report(f"1. helm test --logs: passed ({', '.join(answers)})")
    state["pods"] = 12


def secret_token():
    secret = kjson("get", "secret", "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]
    expect(len(secret) == 1, f"one token Secret: {[s['metadata']['name'] for s in secret]}")
    return secret[0]["metadata"]["uid"], secret[0]["data"]


class Load:
    """Submits a few tasks every `every` s in a thread; records what was acknowledged."""

    def __init__(self, planner, per_batch=5, every=0.1, ops=("add", "mul")):
        self.planner, self.per_batch, self.every, self.ops = planner, per_batch, every, ops
        self.acked, self.refused, self.outage = [], 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def _run(self):
        failing_since = None
        while not self.stop.wait(self.every):
            status, answer = http("POST", f"{self.planner}/tasks", mixed_tasks(self.per_batch, self.ops), timeout=5)
            if status == 202:
                self.acked.extend(answer["ids"])
                if failing_since is not None:
                    self.outage.append(time.monotonic() - failing_since)
                    failing_since = None
            else:
                self.refused += 1
                if failing_since is None:
                    failing_since = time.monotonic()


def check_upgrade(state):
    planner = state["planner"]
    uid, token = secret_token()
    planner_pod = pods("planner")[0]["metadata"]["uid"]
    # A queue that cannot drain: an op no worker offers waits in it.
    stuck = submit(planner, [{"op": "pow", "args": [2, 10]} for _ in range(5)])
    with Load(planner) as load:
        helm("upgrade", RELEASE, CHART, "--reuse-values", "--set", "add.replicas=3", "--wait", "--timeout", "5m")
    expect(secret_token() == (uid, token), "the token Secret changed over the upgrade")
    expect(pods("planner")[0]["metadata"]["uid"] == planner_pod, "the planner pod was replaced by the upgrade")
    for task_id in stuck:
        status, view = http("GET", f"{planner}/tasks/{task_id}")
        expect(status == 200 and view["status"] == "queued", f"queued task {task_id} after the upgrade: {status} {view}")
        http("DELETE", f"{planner}/tasks/{task_id}")
    views = wait_final(planner, load.acked, 120)
    lost = [v for v in views.values() if not right(v)]
    expect(load.acked and not lost, f"tasks submitted during the upgrade: {len(load.acked)}, not right: {lost[:3]}")
    expect(load.refused == 0, f"{load.refused} submissions refused during the upgrade")

    def three_add():
        status, workers = http("GET", f"{planner}/workers")
        adds = [w for w in workers if w["id"].startswith(f"{RELEASE}-add-")] if status == 200 else []
        return len(adds) == 3 and all([op["name"] for op in w["ops"]] == ["add"] for w in adds)

    wait(60, "3 add workers offering [add]", three_add)
    state["pods"] = 15
    report(f"2. upgrade add.replicas=3: Secret unchanged, same planner pod, 5 queued tasks kept, "
           f"{len(load.acked)} tasks submitted meanwhile all right, 3 add workers")


def mul_capable():
    return [p for p in live_worker_pods()
            if p["metadata"]["labels"]["app.kubernetes.io/component"] in ("mul", "general") and ready(p)]


def check_hot_swap(state):
    planner = state["planner"]
    with open(MUL_V2, "rb") as f:
        module = f.read()
    v2 = hashlib.sha256(module).hexdigest()
    before = restarts(worker_pods())
    capable = mul_capable()
    expect(len(capable) == 11, f"11 mul-capable workers before the swap, found {len(capable)}")
    patch = json.dumps({"binaryData": {"mul.wasm": base64.b64encode(module).decode()}})
    with Load(planner, ops=("mul",)) as load:
        started = time.monotonic()
        kubectl("patch", "configmap", f"{RELEASE}-modules", "--type", "merge", "-p", patch)
        first, seen = None, set()

        def all_swapped():
            nonlocal first
            for pod in capable:
                name = pod["metadata"]["name"]
                if name not in seen and (worker_ops(pod) or {}).get("mul") == v2:
                    seen.add(name)
                    first = first or time.monotonic() - started
            return len(seen) == len(capable)

        wait(180, "every mul-capable worker to serve the v2 mul", all_swapped, interval=0.5)
        all_took = time.monotonic() - started
        time.sleep(1)
    after = restarts(worker_pods())
    expect(all(after.get(name) == count for name, count in before.items()),
           f"restart counts changed over the swap: {before} -> {after}")
    views = wait_final(planner, load.acked, 120)
    failed = [v for v in views.values() if not right(v, v2_allowed=True)]
    expect(not failed, f"{len(failed)} tasks failed or wrong during the swap: {failed[:3]}")
    v2_results = sum(1 for v in views.values() if v["result"] != expected(v["op"], v["args"]))
    probe = wait_final(planner, submit(planner, [{"op": "mul", "args": [6, 7]} for _ in range(20)]), 60)
    expect(all(v["result"] == 42 + V2_OFFSET and v["digest"] == v2 for v in probe.values()),
           f"after the swap every mul runs v2: {[v['result'] for v in probe.values()]}")
    report(f"3. hot swap via the ConfigMap: first worker {first:.1f} s, all 11 mul-capable {all_took:.1f} s "
           f"after the patch; {len(views)} tasks meanwhile, 0 failed ({v2_results} by v2); no restart")
    # Back to the built-in mul for the next checks, the kubectl way.
    kubectl("patch", "configmap", f"{RELEASE}-modules", "--type", "json", "-p",
            json.dumps([{"op": "remove", "path": "/binaryData/mul.wasm"}]))
    wait(180, "every mul-capable worker back on the built-in mul",
         lambda: all((worker_ops(p) or {}).get("mul") not in (None, v2) for p in mul_capable()), interval=0.5)


def watch_exit(pod, exits):
    """Follows a deleted pod until it is gone, keeping its container's exit code."""
    until = time.monotonic() + 120
    while time.monotonic() < until:
        result = subprocess.run([KUBECTL, "get", "pod", pod, "-o", "json"], capture_output=True, text=True)
        if result.returncode != 0:
            return
        for status in json.loads(result.stdout)["status"].get("containerStatuses", []):
            terminated = status.get("state", {}).get("terminated")
            if terminated:
                exits[pod] = terminated["exitCode"]
        time.sleep(0.2)


def check_pod_deletion(state, label, tasks_n, deadline):
    planner = state["planner"]
    grace = {p["metadata"]["name"]: p["spec"]["terminationGracePeriodSeconds"] for p in live_worker_pods()}
    with LogStreams() as streams:
        wait(30, "log streams of every worker", lambda: len(streams.procs) >= len(live_worker_pods()))
        ids = submit(planner, [{"op": "mul", "args": [random.randint(1, 10**6), random.randint(1, 1000)]} for _ in range(tasks_n)])

        def two_busy():
            busy = [p for p in live_worker_pods() if p["metadata"]["labels"]["app.kubernetes.io/component"] == "mul"
                    and worker_busy(p)]
            return busy[:2] if len(busy) >= 2 else None

        victims = [p["metadata"]["name"] for p in wait(30, "two busy mul workers", two_busy, interval=0.1)]
        exits = {}  # victim -> its container's exit code, when the kubelet reported one
        watchers = [threading.Thread(target=watch_exit, args=(v, exits), daemon=True) for v in victims]
        for watcher in watchers:
            watcher.start()
        deleted_at = time.monotonic()
        kubectl("delete", "pod", *victims, "--wait=false")
        views = wait_final(planner, ids, deadline)
        for victim in victims:
            wait(max(grace[victim], 30) + 30, f"{victim} to be gone", lambda: victim not in {p["metadata"]["name"] for p in worker_pods()})
            wait(10, f"the end of {victim}'s log stream", lambda: victim in streams.ended)
        wait(120, "10 registered mul workers, replacements included",
             lambda: len([w for w in (http("GET", f"{planner}/workers")[1] or []) if w["id"].startswith(f"{RELEASE}-mul-")]) == 10)
        registered = {w["id"] for w in http("GET", f"{planner}/workers")[1]}
        expect(not registered & set(victims), f"deleted pods still registered: {registered & set(victims)}")
        time.sleep(1)  # the last `ran` lines of the live workers
        executions = streams.executions()
        for victim in victims:
            messages = streams.messages(victim)
            took = streams.ended[victim] - deleted_at
            expect(any(m.startswith("stopping") for m in messages) and messages[-1:] == ["stopped"],
                   f"{victim} did not drain and stop cleanly; last lines: {messages[-5:]}")
            expect(took < grace[victim], f"{victim} took {took:.1f} s, its grace period is {grace[victim]} s")
        drain_times = [streams.ended[v] - deleted_at for v in victims]
        for watcher in watchers:
            watcher.join()
        expect(all(code == 0 for code in exits.values()), f"deleted pods' exit codes: {exits}")
    completed = sum(1 for v in views.values() if right(v))
    twice = {task_id: n for task_id, n in executions.items() if task_id in views and n > 1}
    never = [task_id for task_id in ids if executions.get(task_id, 0) == 0]
    attempts = sum(1 for v in views.values() if v["attempts"] > 1)
    report(f"4. {label}: deleted 2 busy mul pods; submitted {len(ids)} / completed {completed} / lost {len(ids) - completed} "
           f"/ executed twice {len(twice)} / never executed {len(never)}; tasks with attempts>1: {attempts}; "
           f"victims stopped {', '.join(f'{t:.1f}' for t in drain_times)} s after the delete "
           f"(grace {grace[victims[0]]} s), exit codes seen: {exits or 'none before the pods vanished'}")
    expect(completed == len(ids), f"{len(ids) - completed} tasks lost or wrong")
    expect(not twice, f"tasks executed more than once: {dict(list(twice.items())[:5])}")
    expect(not never, f"tasks done without an execution in any worker log: {never[:5]}")


def check_planner_deletion(state):
    planner = state["planner"]
    old = pods("planner")[0]["metadata"]["name"]
    # A queue: more mul tasks than slots, most of them waiting.
    batch = submit(planner, [{"op": "mul", "args": [random.randint(1, 10**6), random.randint(1, 1000)]} for _ in range(400)])
    with Load(planner, per_batch=1, every=0.2, ops=("add",)) as load:
        wait(30, "tasks running", lambda: (http("GET", f"{planner}/stats")[1] or {}).get("by_status", {}).get("running", 0) > 0)
        _, stats = http("GET", f"{planner}/stats")
        deleted_at = time.monotonic()
        kubectl("delete", "pod", old, "--wait=false")

        def new_planner_ready():
            fresh = [p for p in pods("planner") if p["metadata"]["name"] != old]
            return fresh and ready(fresh[0]) and old not in {p["metadata"]["name"] for p in pods("planner")}

        wait(180, "a new planner pod Ready", new_planner_ready)
        ready_after = time.monotonic() - deleted_at
        worker_count = len(live_worker_pods())

        def workers_back():
            status, workers = http("GET", f"{planner}/workers")
            return status == 200 and len(workers) == worker_count

        wait(60, f"the {worker_count} workers registered with the new planner", workers_back)
        back_after = time.monotonic() - deleted_at
        accepted = len(load.acked)
        wait(30, "submissions accepted again", lambda: len(load.acked) > accepted + 5)
    ids = batch + load.acked
    views = wait_final(planner, ids, 300)
    lost = [task_id for task_id in ids if not right(views[task_id])]
    outage = max(load.outage) if load.outage else 0.0
    report(f"5. planner pod deleted under load ({stats['by_status'].get('queued', 0)} queued, "
           f"{stats['by_status'].get('running', 0)} running): {len(ids)} acknowledged tasks, lost {len(lost)}; "
           f"new pod Ready after {ready_after:.1f} s, all {worker_count} workers re-registered after {back_after:.1f} s, "
           f"submissions failed for {outage:.1f} s")
    expect(not lost, f"{len(lost)} acknowledged tasks lost: {lost[:5]}")


def check_probes_gate(state):
    planner = state["planner"]
    kubectl("scale", "deployment", PLANNER_DEPLOYMENT, "--replicas=0")
    wait(60, "the planner gone", lambda: not pods("planner"))
    victim = [p for p in live_worker_pods() if p["metadata"]["labels"]["app.kubernetes.io/component"] == "general"][0]
    kubectl("delete", "pod", victim["metadata"]["name"], "--wait=false")

    def fresh_running():
        fresh = [p for p in live_worker_pods() if p["metadata"]["labels"]["app.kubernetes.io/component"] == "general"
                 and p["metadata"]["name"] != victim["metadata"]["name"]]
        if fresh and any("running" in c.get("state", {}) for c in fresh[0]["status"].get("containerStatuses", [])):
            return fresh[0]
        return None

    fresh = wait(60, "a new general worker running", fresh_running)
    name = fresh["metadata"]["name"]
    # Several readiness periods (5 s) while the planner is unreachable: never Ready.
    watched_from = time.monotonic()
    while time.monotonic() - watched_from < 16:
        pod = kjson("get", "pod", name)
        expect(not ready(pod), f"{name} is Ready while its planner is unreachable")
        status, answer = http("GET", f"http://{pod['status']['podIP']}:8080/readyz", timeout=3)
        expect(status == 503, f"{name} /readyz answered {status} {answer} with no planner")
        time.sleep(1)
    kubectl("scale", "deployment", PLANNER_DEPLOYMENT, "--replicas=1")
    wait(120, "the planner Ready", lambda: pods("planner") and ready(pods("planner")[0]))
    planner_ready = time.monotonic()
    wait(60, f"{name} Ready once its planner is reachable", lambda: ready(kjson("get", "pod", name)))
    report(f"6. probes: {name} started with no planner stayed not Ready (/readyz 503) for 16 s; "
           f"Ready {time.monotonic() - planner_ready:.1f} s after the planner was")
    wait(120, "every pod Ready again", lambda: all_ready(state["pods"]))


def check_ha_postgres(state):
    report("7. ha example with PostgreSQL: SKIPPED (no PostgreSQL image runs in this cluster; three replicas on a real PostgreSQL are tested by tests/tests/replicas.rs, the chart's ha.yaml by tests/tests/chart/ha.rs)")


def check_module_removal(state):
    """chart/README.md's way to take a module out of the ConfigMap."""
    b64 = os.path.join(WORK, "mul-v2.b64")
    with open(MUL_V2, "rb") as f, open(b64, "w") as out:
        out.write(base64.b64encode(f.read()).decode())
    cm = f"{RELEASE}-modules"

    def files():
        return sorted((kjson("get", "configmap", cm).get("binaryData") or {}).keys())

    helm("upgrade", RELEASE, CHART, "--reuse-values", "--set-file", "modules.files.mul\\.wasm=" + b64)
    expect(files() == ["mul.wasm"], f"helm --set-file put mul.wasm in the ConfigMap: {files()}")
    helm("upgrade", RELEASE, CHART, "--reuse-values", "--set", "modules.files.mul\\.wasm=null")
    kept = files()
    values = json.loads(helm("get", "values", RELEASE, "-o", "json"))
    values.setdefault("modules", {})["files"] = {}
    with open(os.path.join(WORK, "values-now.json"), "w") as f:
        json.dump(values, f)
    helm("upgrade", RELEASE, CHART, "--reset-values", "-f", os.path.join(WORK, "values-now.json"))
    expect(files() == [], f"--reset-values with the module left out removes it: {files()}")
    report(f"removing a module: --reuse-values --set 'modules.files.mul\\.wasm=null' leaves {kept or 'nothing'}; "
           "--reset-values -f <values without it> removes it")


def main():
    random.seed(16)
    state = {}
    checks = [
        ("0. server-side dry run of every example", check_server_dry_run),
        ("1. install, Service, 200 tasks, helm test", check_install),
        ("2. upgrade keeps Secret and queue", check_upgrade),
        ("3. hot swap through the kubelet", check_hot_swap),
        ("4a. worker pods deleted, short tasks", lambda s: check_pod_deletion(s, "short tasks (50-200 ms), 500", 500, 180)),
        ("4b. worker pods deleted, 5-8 s tasks", long_tasks),
        ("5. planner pod deleted with its volume", check_planner_deletion),
        ("6. probes gate traffic", check_probes_gate),
        ("7. ha with PostgreSQL", check_ha_postgres),
        ("module removal from the ConfigMap", check_module_removal),
    ]
    only = os.environ.get("K8S_CHECKS")  # e.g. "1,2": a subset, while developing
    if only and "1" not in only.split(","):  # on a cluster where check 1 ran before
        state["planner"] = planner_url()
        state["pods"] = len([p for p in pods() if p["metadata"]["labels"].get("app.kubernetes.io/component") != "test"])
    for name, check in checks:
        if only and name.split(".")[0].rstrip("ab") not in only.split(",") and name[0].isdigit():
            continue
        started = time.monotonic()
        print(f"-- check {name}", flush=True)
        try:
            check(state)
        except CheckFailed as err:
            print(f"k8s-e2e: CHECK FAILED: {name}: {err}", file=sys.stderr, flush=True)
            print_report()
            sys.exit(1)
        print(f"-- check {name}: {time.monotonic() - started:.1f} s", flush=True)
    print_report()


def long_tasks(state):
    # 5-8 s tasks, 25 at once per mul worker: 500 tasks in two waves.
    helm("upgrade", RELEASE, CHART, "--reuse-values", "--set", "mul.workMs=5000-8000", "--set", "mul.slots=25",
         "--wait", "--timeout", "5m")
    wait(120, "every pod Ready after the rollout", lambda: all_ready(state["pods"]))
    check_pod_deletion(state, "5-8 s tasks, 500", 500, 300)


def print_report():
    print("== k8s-e2e report")
    for line in REPORT:
        print(f"   {line}")


if __name__ == "__main__":
    main()
