"""End-to-end steering check of a running itc-server, from Python.

Two parties, each on its own channel, both through stubs generated from proto/:

- an agent that connects a session, keeps it alive on the Heartbeat stream, starts a
  task, reports progress and a real-time update, applies the interrupt and the resume
  pushed to it on that stream, asks for input and gets the answer there;
- a coordinator that subscribes with a filter, stops reading and resumes with
  `after_seq` (missing nothing, seeing nothing twice), steers the task under a lock it
  acquired (a second coordinator without the lock is refused), answers the input
  request, and polls GetStatus.

Every step asserts what came back (states, versions, seqs, the events in order), not
just that no exception was raised.

Run by scripts/check-python.sh, which generates the stubs from proto/ and starts the
server:

    PYTHONPATH=<generated stubs> python tests/python/itc_steering_check.py 127.0.0.1:PORT

Prints "python-check: N passed, 0 failed" on success; exits 1 on the first failure.
"""

import queue
import sys
import threading
import time
import uuid

import grpc
from google.protobuf import duration_pb2

from itc.v1 import agent_service_pb2, agent_service_pb2_grpc
from itc.v1 import coordinator_service_pb2, coordinator_service_pb2_grpc
from itc.v1 import monitor_service_pb2, monitor_service_pb2_grpc
from itc.v1 import session_service_pb2, session_service_pb2_grpc
from itc.v1 import types_pb2
from itc_check_lib import CALL_TIMEOUT, as_python, channel, check, expect_error, main, struct, value

WAIT_TIMEOUT = 15.0  # seconds to wait for a pushed message or an event
PING_INTERVAL = 1.0  # seconds between the agent's heartbeat pings

RUN = uuid.uuid4().hex[:8]
AGENT_ID = f"py-steer-agent-{RUN}"
COORDINATOR_ID = f"py-steer-coordinator-{RUN}"
OTHER_COORDINATOR_ID = f"py-steer-other-{RUN}"

T = types_pb2
RUNNING = T.TASK_STATUS_RUNNING


def name(enum, value):
    return enum.Name(value)


class Pump:
    """Reads a server stream on a thread into a queue, so the test can wait on it with
    a deadline. `stream` is the call object (an iterator that can be cancelled)."""

    def __init__(self, stream, what):
        self.stream = stream
        self.what = what
        self.items = queue.Queue()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for item in self.stream:
                self.items.put(item)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self.error = err
        finally:
            self.items.put(None)  # end of stream

    def next(self, want, description):
        """The first item for which want(item) holds, skipping others, within WAIT_TIMEOUT.
        Returns (item, skipped)."""
        deadline = time.monotonic() + WAIT_TIMEOUT
        skipped = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{self.what}: no {description} within {WAIT_TIMEOUT}s; saw {len(skipped)} "
                    f"other messages: {[short(s) for s in skipped][-5:]}"
                )
            try:
                item = self.items.get(timeout=left)
            except queue.Empty:
                continue
            if item is None:
                raise AssertionError(
                    f"{self.what}: the stream ended before {description} (error: {self.error})"
                )
            if want(item):
                return item, skipped
            skipped.append(item)

    def close(self):
        self.stream.cancel()
        self.thread.join(timeout=WAIT_TIMEOUT)
        check(not self.thread.is_alive(), f"{self.what}: the reader did not stop after cancel")


def short(message):
    text = str(message).replace("\n", " ")
    return text[:160]


class Agent:
    """The agent: a session kept alive by a Heartbeat stream that vouches for its task,
    and whose pushed messages (commands, answered inputs) land in a queue."""

    def __init__(self, ch):
        self.sessions = session_service_pb2_grpc.SessionServiceStub(ch)
        self.api = agent_service_pb2_grpc.AgentServiceStub(ch)
        self.task_ids = []
        self.stopped = threading.Event()
        connected = self.sessions.Connect(
            session_service_pb2.ConnectRequest(
                session_id=AGENT_ID,
                kind=T.SESSION_KIND_AGENT,
                capabilities=T.Capabilities(streaming=True),
            ),
            timeout=CALL_TIMEOUT,
        )
        self.generation = connected.session.generation
        check(connected.session.session_id == AGENT_ID, f"Connect: session {connected.session}")
        check(not connected.taken_over, "Connect: a fresh agent id was 'taken over'")
        self.pushed = Pump(self.sessions.Heartbeat(self._pings()), "agent heartbeat stream")

    def _pings(self):
        while True:
            yield session_service_pb2.HeartbeatRequest(
                session_id=AGENT_ID, task_ids=list(self.task_ids), generation=self.generation
            )
            if self.stopped.wait(PING_INTERVAL):
                return

    def stop(self):
        self.stopped.set()
        self.pushed.close()


def run(address):
    agent_ch = channel(address, "agent")
    coord_ch = channel(address, "coordinator")
    sessions = session_service_pb2_grpc.SessionServiceStub(coord_ch)
    monitor = monitor_service_pb2_grpc.MonitorServiceStub(coord_ch)
    coordinator = coordinator_service_pb2_grpc.CoordinatorServiceStub(coord_ch)

    # --- the agent connects and heartbeats ----------------------------------------------
    agent = Agent(agent_ch)
    lease, _ = agent.pushed.next(lambda m: m.HasField("lease"), "lease renewal")
    check(lease.lease.expire_time.seconds > 0, f"lease renewal without an expiry: {lease}")
    print(f"ok - agent {AGENT_ID} connected; its heartbeat stream renews the lease")

    # --- the coordinator connects and subscribes with a filter ---------------------------
    for coordinator_id in (COORDINATOR_ID, OTHER_COORDINATOR_ID):
        sessions.Connect(
            session_service_pb2.ConnectRequest(
                session_id=coordinator_id,
                kind=T.SESSION_KIND_SUPERVISOR,
                capabilities=T.Capabilities(
                    streaming=True, interruption=True, task_coordination=True
                ),
            ),
            timeout=CALL_TIMEOUT,
        )
    wanted_types = [
        T.EVENT_TYPE_TASK_STARTED,
        T.EVENT_TYPE_TASK_PROGRESS,
        T.EVENT_TYPE_REAL_TIME_UPDATE,
        T.EVENT_TYPE_TASK_INTERRUPTED,
        T.EVENT_TYPE_TASK_RESUMED,
        T.EVENT_TYPE_COORDINATION_APPLIED,
        T.EVENT_TYPE_INPUT_REQUESTED,
        T.EVENT_TYPE_INPUT_PROVIDED,
        T.EVENT_TYPE_TASK_COMPLETED,
    ]
    stream_filter = T.SubscriptionFilter(agent_ids=[AGENT_ID], event_types=wanted_types)

    def subscribe(**kwargs):
        return Pump(
            monitor.Subscribe(
                monitor_service_pb2.SubscribeRequest(
                    filter=stream_filter, session_id=COORDINATOR_ID, **kwargs
                )
            ),
            "coordinator's Subscribe stream",
        )

    events = subscribe()
    start, _ = events.next(
        lambda m: m.event.type == T.EVENT_TYPE_STREAM_START, "STREAM_START"
    )
    check(start.event.seq == 0, f"STREAM_START has seq {start.event.seq}, wanted 0")
    check(
        list(start.event.stream.filter.agent_ids) == [AGENT_ID],
        f"STREAM_START echoes the filter {start.event.stream.filter}",
    )
    print(f"ok - coordinator {COORDINATOR_ID} subscribed to {AGENT_ID}'s events (9 types)")

    def next_event(pump, event_type, task_id):
        m, skipped = pump.next(
            lambda m: m.event.seq > 0 and m.event.type == event_type,
            name(T.EventType, event_type),
        )
        others = [m.event for m in skipped if m.event.seq > 0]
        check(not others, f"events before {name(T.EventType, event_type)}: {others}")
        check(m.event.task_id == task_id, f"{m.event} is about another task")
        check(m.event.agent_id == AGENT_ID, f"{m.event} is about another agent")
        return m.event

    # --- an unrelated agent's task must not reach the filtered stream --------------------
    agent_api = agent.api
    other = agent_api.StartTask(
        agent_service_pb2.StartTaskRequest(agent_id=f"py-other-{RUN}", description="noise"),
        timeout=CALL_TIMEOUT,
    ).task

    # --- the agent starts a task, reports progress and an update ----------------------------
    task_id = f"py-steer-{RUN}"
    task = agent_api.StartTask(
        agent_service_pb2.StartTaskRequest(
            task_id=task_id, agent_id=AGENT_ID, description="python steering check"
        ),
        timeout=CALL_TIMEOUT,
    ).task
    agent.task_ids.append(task_id)
    check(task.status == RUNNING and task.version == 1, f"StartTask: {task}")
    started = next_event(events, T.EVENT_TYPE_TASK_STARTED, task_id)
    check(started.task_version == 1, f"TASK_STARTED task_version {started.task_version}")
    print(f"ok - the stream shows TASK_STARTED of {task_id} and not {other.task_id}")

    r = agent_api.ReportProgress(
        agent_service_pb2.ReportProgressRequest(task_id=task_id, progress=0.3, message="reading"),
        timeout=CALL_TIMEOUT,
    )
    check(r.status == RUNNING and r.version == 2, f"ReportProgress 0.3: {r}")
    progress = next_event(events, T.EVENT_TYPE_TASK_PROGRESS, task_id)
    check(progress.seq == r.seq, f"TASK_PROGRESS seq {progress.seq}, the call said {r.seq}")
    check(
        (progress.progress.progress, progress.progress.message) == (0.3, "reading"),
        f"TASK_PROGRESS detail {progress.progress}",
    )
    u = agent_api.PublishUpdate(
        agent_service_pb2.PublishUpdateRequest(
            task_id=task_id, data=struct({"phase": "parse", "files": 12})
        ),
        timeout=CALL_TIMEOUT,
    )
    update = next_event(events, T.EVENT_TYPE_REAL_TIME_UPDATE, task_id)
    check(update.seq == u.seq, f"REAL_TIME_UPDATE seq {update.seq}, the call said {u.seq}")
    check(
        as_python(update.data) == {"phase": "parse", "files": 12.0},
        f"REAL_TIME_UPDATE data {as_python(update.data)}",
    )
    print(f"ok - progress 0.3 and a real-time update arrive live with the seqs the calls returned")

    # --- resume with after_seq: stop reading, miss events, resubscribe ------------------------
    last_seen = update.seq
    events.close()
    missed = []
    for p in (0.4, 0.5):
        missed.append(
            agent_api.ReportProgress(
                agent_service_pb2.ReportProgressRequest(task_id=task_id, progress=p),
                timeout=CALL_TIMEOUT,
            ).seq
        )
    events = subscribe(after_seq=last_seen)
    replayed = []
    for want_seq in missed:
        m, _ = events.next(lambda m: m.event.seq > 0, f"the replayed event {want_seq}")
        replayed.append(m.event)
    check(
        [(e.seq, e.type, e.progress.progress) for e in replayed]
        == [(missed[0], T.EVENT_TYPE_TASK_PROGRESS, 0.4), (missed[1], T.EVENT_TYPE_TASK_PROGRESS, 0.5)],
        f"after_seq={last_seen} replayed {[(e.seq, name(T.EventType, e.type)) for e in replayed]}, "
        f"wanted the two missed progress events {missed}",
    )
    print(f"ok - resubscribing with after_seq={last_seen} replays exactly the 2 missed events")

    # --- coordinate under a lock: interrupt, applied by the agent --------------------------
    lock = coordinator.AcquireLock(
        coordinator_service_pb2.AcquireLockRequest(
            task_id=task_id,
            coordinator_id=COORDINATOR_ID,
            lease=duration_pb2.Duration(seconds=30),
        ),
        timeout=CALL_TIMEOUT,
    ).lock
    check(lock.holder_id == COORDINATOR_ID and lock.fencing_token > 0, f"AcquireLock: {lock}")
    expect_error(
        grpc.StatusCode.ABORTED,
        "Coordinate by a second coordinator while the lock is held",
        coordinator.Coordinate,
        coordinator_service_pb2.CoordinateRequest(
            task_id=task_id,
            coordinator_id=OTHER_COORDINATOR_ID,
            action=T.COMMAND_ACTION_BOOST_PRIORITY,
            data=struct({"priority": 9}),
        ),
    )
    expect_error(
        grpc.StatusCode.ABORTED,
        "Coordinate with a stale fencing token",
        coordinator.Coordinate,
        coordinator_service_pb2.CoordinateRequest(
            task_id=task_id,
            coordinator_id=COORDINATOR_ID,
            action=T.COMMAND_ACTION_INTERRUPT,
            fencing_token=lock.fencing_token + 1,
        ),
    )

    def steer(action, data=None):
        response = coordinator.Coordinate(
            coordinator_service_pb2.CoordinateRequest(
                task_id=task_id,
                coordinator_id=COORDINATOR_ID,
                action=action,
                data=struct(data) if data else None,
                fencing_token=lock.fencing_token,
                idempotency_key=f"{name(T.CommandAction, action)}-{RUN}",
            ),
            timeout=CALL_TIMEOUT,
        )
        command = response.command
        check(command.fencing_token == lock.fencing_token, f"{command} carries another token")
        # The agent gets the command on its heartbeat stream and applies it.
        pushed, _ = agent.pushed.next(
            lambda m: m.HasField("command") and m.command.command_id == command.command_id,
            f"the pushed command {command.command_id}",
        )
        check(pushed.command.action == action, f"pushed {pushed.command}")
        acked = agent_api.AcknowledgeCommand(
            agent_service_pb2.AcknowledgeCommandRequest(
                command_id=command.command_id,
                outcome=T.COMMAND_STATE_APPLIED,
                result=value({"ok": True}),
            ),
            timeout=CALL_TIMEOUT,
        ).command
        check(acked.state == T.COMMAND_STATE_APPLIED, f"AcknowledgeCommand: {acked}")
        final = coordinator.GetCommand(
            coordinator_service_pb2.GetCommandRequest(command_id=command.command_id),
            timeout=CALL_TIMEOUT,
        ).command
        check(final.state == T.COMMAND_STATE_APPLIED, f"GetCommand after the ack: {final}")
        return command

    interrupt = steer(T.COMMAND_ACTION_INTERRUPT, {"reason": "wrong branch"})
    interrupted = next_event(events, T.EVENT_TYPE_TASK_INTERRUPTED, task_id)
    check(
        interrupted.task_status == T.TASK_STATUS_INTERRUPTED,
        f"TASK_INTERRUPTED with task_status {name(T.TaskStatus, interrupted.task_status)}",
    )
    applied = next_event(events, T.EVENT_TYPE_COORDINATION_APPLIED, task_id)
    check(
        applied.command.command_id == interrupt.command_id,
        f"COORDINATION_APPLIED of {applied.command.command_id}, wanted {interrupt.command_id}",
    )
    r = agent_api.ReportProgress(
        agent_service_pb2.ReportProgressRequest(task_id=task_id, progress=0.55),
        timeout=CALL_TIMEOUT,
    )
    check(
        r.status == T.TASK_STATUS_INTERRUPTED,
        f"ReportProgress after the interrupt: status {name(T.TaskStatus, r.status)}, "
        "wanted INTERRUPTED (the agent's checkpoint)",
    )
    next_event(events, T.EVENT_TYPE_TASK_PROGRESS, task_id)
    print("ok - under the lock, INTERRUPT is pushed to the agent, applied, and seen by all")

    # A retry with the same idempotency key returns the same command, not a new one.
    again = coordinator.Coordinate(
        coordinator_service_pb2.CoordinateRequest(
            task_id=task_id,
            coordinator_id=COORDINATOR_ID,
            action=T.COMMAND_ACTION_INTERRUPT,
            data=struct({"reason": "wrong branch"}),
            fencing_token=lock.fencing_token,
            idempotency_key=f"COMMAND_ACTION_INTERRUPT-{RUN}",
        ),
        timeout=CALL_TIMEOUT,
    ).command
    check(
        again.command_id == interrupt.command_id,
        f"a retried Coordinate made command {again.command_id}, wanted {interrupt.command_id}",
    )
    print("ok - a retried Coordinate with the same idempotency key returns the first command")

    steer(T.COMMAND_ACTION_RESUME)
    resumed = next_event(events, T.EVENT_TYPE_TASK_RESUMED, task_id)
    check(resumed.task_status == RUNNING, f"TASK_RESUMED with {resumed.task_status}")
    next_event(events, T.EVENT_TYPE_COORDINATION_APPLIED, task_id)
    coordinator.ReleaseLock(
        coordinator_service_pb2.ReleaseLockRequest(
            task_id=task_id, coordinator_id=COORDINATOR_ID, fencing_token=lock.fencing_token
        ),
        timeout=CALL_TIMEOUT,
    )
    print("ok - RESUME applied the same way; the lock is released")

    # --- the agent asks for input; the coordinator answers --------------------------------
    asked = agent_api.RequestInput(
        agent_service_pb2.RequestInputRequest(
            task_id=task_id, prompt="Deploy to production?", choices=["yes", "no"]
        ),
        timeout=CALL_TIMEOUT,
    ).input
    check(asked.state == T.INPUT_STATE_OPEN, f"RequestInput: {asked}")
    requested = next_event(events, T.EVENT_TYPE_INPUT_REQUESTED, task_id)
    check(
        requested.input.request_id == asked.request_id
        and list(requested.input.choices) == ["yes", "no"],
        f"INPUT_REQUESTED: {requested.input}",
    )
    check(
        requested.task_status == T.TASK_STATUS_INPUT_REQUIRED,
        f"INPUT_REQUESTED with task_status {name(T.TaskStatus, requested.task_status)}",
    )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "AnswerInput with an answer outside the choices",
        coordinator.AnswerInput,
        coordinator_service_pb2.AnswerInputRequest(
            request_id=asked.request_id, coordinator_id=COORDINATOR_ID, answer=value("maybe")
        ),
    )
    answered = coordinator.AnswerInput(
        coordinator_service_pb2.AnswerInputRequest(
            request_id=requested.input.request_id,
            coordinator_id=COORDINATOR_ID,
            answer=value("yes"),
        ),
        timeout=CALL_TIMEOUT,
    ).input
    check(answered.state == T.INPUT_STATE_ANSWERED, f"AnswerInput: {answered}")
    pushed, _ = agent.pushed.next(
        lambda m: m.HasField("input") and m.input.request_id == asked.request_id,
        "the answered input request",
    )
    check(
        pushed.input.state == T.INPUT_STATE_ANSWERED
        and as_python(pushed.input.answer) == "yes"
        and pushed.input.answered_by == COORDINATOR_ID,
        f"the agent got {pushed.input}",
    )
    provided = next_event(events, T.EVENT_TYPE_INPUT_PROVIDED, task_id)
    check(provided.task_status == RUNNING, f"INPUT_PROVIDED with {provided.task_status}")
    print("ok - the agent's input request is answered 'yes' and pushed back to the agent")

    # --- poll GetStatus -------------------------------------------------------------------
    status = monitor.GetStatus(
        monitor_service_pb2.GetStatusRequest(agent_ids=[AGENT_ID], statuses=[RUNNING]),
        timeout=CALL_TIMEOUT,
    )
    listed = [(t.task_id, t.status, t.progress) for t in status.tasks]
    check(listed == [(task_id, RUNNING, 0.55)], f"GetStatus(agent, RUNNING) listed {listed}")
    polled = status.tasks[0]
    check(not polled.HasField("lock"), f"the released lock still shows: {polled.lock}")
    check(len(polled.open_inputs) == 0, f"answered input still open: {polled.open_inputs}")
    check(
        polled.last_command.action == T.COMMAND_ACTION_RESUME,
        f"last_command {polled.last_command}",
    )
    by_id = {s.session_id: s for s in status.sessions}
    check(
        AGENT_ID in by_id and COORDINATOR_ID in by_id,
        f"GetStatus sessions {sorted(by_id)} lack the agent or the coordinator",
    )
    # The stream cancelled before the resume goes away once the server sees the cancel:
    # wait (bounded) until the live one is all that is listed.
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        sessions_now = monitor.GetStatus(
            monitor_service_pb2.GetStatusRequest(page_size=1), timeout=CALL_TIMEOUT
        ).sessions
        subscriptions = [s for s in sessions_now if s.session_id == COORDINATOR_ID][0].subscriptions
        if len(subscriptions) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # no notification of a stream's end reaches a client
    check(
        len(subscriptions) == 1 and list(subscriptions[0].filter.agent_ids) == [AGENT_ID],
        f"the coordinator's subscriptions as listed: {subscriptions}",
    )
    print("ok - GetStatus shows the task RUNNING at 0.55, unlocked, and both sessions")

    # --- finish ------------------------------------------------------------------------------
    done = agent_api.CompleteTask(
        agent_service_pb2.CompleteTaskRequest(task_id=task_id, result=value({"deployed": True})),
        timeout=CALL_TIMEOUT,
    ).task
    check(done.status == T.TASK_STATUS_COMPLETED, f"CompleteTask: {done}")
    completed = next_event(events, T.EVENT_TYPE_TASK_COMPLETED, task_id)
    check(completed.task_version == done.version, f"TASK_COMPLETED {completed}")
    print(f"ok - the task completes (version {done.version}) and the stream shows it")

    events.close()
    agent.stop()
    check(agent.pushed.error is None, f"the heartbeat stream failed: {agent.pushed.error}")
    for coordinator_id in (COORDINATOR_ID, OTHER_COORDINATOR_ID, AGENT_ID):
        sessions.Disconnect(
            session_service_pb2.DisconnectRequest(session_id=coordinator_id),
            timeout=CALL_TIMEOUT,
        )
    agent_ch.close()
    coord_ch.close()


if __name__ == "__main__":
    sys.exit(main(run, __doc__))
