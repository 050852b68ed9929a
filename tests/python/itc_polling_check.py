"""End-to-end polling check of a running itc-server, from Python.

A Python "agent" starts a task, reports progress, publishes a real-time update and
completes the task over one channel; a Python "poller" on a separate channel reads the
task back with MonitorService.GetStatus and GetTask after each stage. A few bad calls
must fail with the documented status codes.

Run by scripts/check-python.sh, which generates the stubs from proto/ and starts the
server:

    PYTHONPATH=<generated stubs> python tests/python/itc_polling_check.py 127.0.0.1:PORT

Prints "python-check: N passed, 0 failed" on success; exits 1 on the first failure.
"""

import sys
import uuid

import grpc

from itc.v1 import agent_service_pb2, agent_service_pb2_grpc
from itc.v1 import monitor_service_pb2, monitor_service_pb2_grpc
from itc.v1 import types_pb2
from itc_check_lib import CALL_TIMEOUT, as_python, channel, check, expect_error, main, struct, value


AGENT_ID = "py-agent"
DESCRIPTION = "python polling check"
RUNNING = types_pb2.TASK_STATUS_RUNNING
COMPLETED = types_pb2.TASK_STATUS_COMPLETED


def status_name(value):
    return types_pb2.TaskStatus.Name(value)


def find_task(tasks, task_id):
    found = [t for t in tasks if t.task_id == task_id]
    check(len(found) <= 1, f"task {task_id} listed {len(found)} times")
    return found[0] if found else None


def check_running_task(task, where, task_id, metadata):
    """The task as the poller should see it after start, two progress reports and one update."""
    check(task.task_id == task_id, f"{where}: task_id {task.task_id!r}, wanted {task_id!r}")
    check(task.agent_id == AGENT_ID, f"{where}: agent_id {task.agent_id!r}, wanted {AGENT_ID!r}")
    check(
        task.description == DESCRIPTION,
        f"{where}: description {task.description!r}, wanted {DESCRIPTION!r}",
    )
    check(
        task.status == RUNNING,
        f"{where}: status {status_name(task.status)}, wanted TASK_STATUS_RUNNING",
    )
    check(task.progress == 0.75, f"{where}: progress {task.progress}, wanted 0.75")
    check(
        task.status_message == "three quarters done",
        f"{where}: status_message {task.status_message!r}, wanted 'three quarters done'",
    )
    check(
        task.version == 4,
        f"{where}: version {task.version}, wanted 4 (start 1, two progress reports, one update)",
    )
    check(task.HasField("duration"), f"{where}: duration is not set on a running task")
    check(
        task.duration.ToNanoseconds() >= 0,
        f"{where}: negative duration {task.duration.ToJsonString()}",
    )
    check(task.HasField("start_time"), f"{where}: start_time is not set on a running task")
    check(not task.HasField("finish_time"), f"{where}: finish_time is set on a running task")
    check(
        as_python(task.metadata) == metadata,
        f"{where}: metadata {as_python(task.metadata)}, wanted {metadata}",
    )


def run(address):
    agent_channel = channel(address, "agent")
    poller_channel = channel(address, "poller")
    agent = agent_service_pb2_grpc.AgentServiceStub(agent_channel)
    poller = monitor_service_pb2_grpc.MonitorServiceStub(poller_channel)
    print(f"ok - agent and poller connected to {address} on separate channels")

    task_id = f"py-task-{uuid.uuid4()}"
    metadata = {"language": "python", "check": "polling", "attempt": 1.0}

    # --- the agent starts the task ----------------------------------------------------
    started = agent.StartTask(
        agent_service_pb2.StartTaskRequest(
            task_id=task_id,
            agent_id=AGENT_ID,
            description=DESCRIPTION,
            metadata=struct(metadata),
        ),
        timeout=CALL_TIMEOUT,
    ).task
    check(started.task_id == task_id, f"StartTask: task_id {started.task_id!r}, wanted {task_id!r}")
    check(
        started.status == RUNNING,
        f"StartTask: status {status_name(started.status)}, wanted TASK_STATUS_RUNNING",
    )
    check(started.version == 1, f"StartTask: version {started.version}, wanted 1")
    print(f"ok - agent started {task_id} (RUNNING, version 1)")

    # --- progress 0.25, then 0.75 with a message ---------------------------------------
    r = agent.ReportProgress(
        agent_service_pb2.ReportProgressRequest(
            task_id=task_id, progress=0.25, message="a quarter done"
        ),
        timeout=CALL_TIMEOUT,
    )
    check(r.version == 2, f"ReportProgress 0.25: version {r.version}, wanted 2")
    check(r.status == RUNNING, f"ReportProgress 0.25: status {status_name(r.status)}")
    first_seq = r.seq
    check(first_seq > 0, f"ReportProgress 0.25: seq {r.seq}, wanted > 0")
    r = agent.ReportProgress(
        agent_service_pb2.ReportProgressRequest(
            task_id=task_id, progress=0.75, message="three quarters done"
        ),
        timeout=CALL_TIMEOUT,
    )
    check(r.version == 3, f"ReportProgress 0.75: version {r.version}, wanted 3")
    check(r.status == RUNNING, f"ReportProgress 0.75: status {status_name(r.status)}")
    check(r.seq > first_seq, f"ReportProgress 0.75: seq {r.seq}, wanted > {first_seq}")
    print(f"ok - agent reported progress 0.25 and 0.75 (versions 2 and 3)")

    # --- a real-time update ---------------------------------------------------------------
    update = {"phase": "indexing", "files_done": 3.0, "files": ["a.rs", "b.rs"]}
    u = agent.PublishUpdate(
        agent_service_pb2.PublishUpdateRequest(task_id=task_id, data=struct(update)),
        timeout=CALL_TIMEOUT,
    )
    check(u.version == 4, f"PublishUpdate: version {u.version}, wanted 4")
    check(u.status == RUNNING, f"PublishUpdate: status {status_name(u.status)}")
    print(f"ok - agent published a real-time update (version 4, seq {u.seq})")

    # --- the poller reads the task back ------------------------------------------------
    status = poller.GetStatus(
        monitor_service_pb2.GetStatusRequest(agent_ids=[AGENT_ID]), timeout=CALL_TIMEOUT
    )
    others = [t.task_id for t in status.tasks if t.agent_id != AGENT_ID]
    check(not others, f"GetStatus(agent_ids=[{AGENT_ID!r}]) listed other agents' tasks: {others}")
    task = find_task(status.tasks, task_id)
    check(task is not None, f"GetStatus(agent_ids=[{AGENT_ID!r}]) does not list {task_id}")
    check_running_task(task, "GetStatus", task_id, metadata)
    check(
        status.total_size >= 1,
        f"GetStatus: total_size {status.total_size}, wanted >= 1",
    )
    check(
        status.state == monitor_service_pb2.SERVICE_STATE_RUNNING,
        f"GetStatus: state {monitor_service_pb2.ServiceState.Name(status.state)}, "
        "wanted SERVICE_STATE_RUNNING while a task runs",
    )
    print(f"ok - poller sees the task RUNNING at 0.75, version 4, via GetStatus")

    task = poller.GetTask(
        monitor_service_pb2.GetTaskRequest(task_id=task_id), timeout=CALL_TIMEOUT
    ).task
    check_running_task(task, "GetTask", task_id, metadata)
    print(f"ok - poller sees the same via GetTask")

    other = poller.GetStatus(
        monitor_service_pb2.GetStatusRequest(agent_ids=["py-agent-nobody"]), timeout=CALL_TIMEOUT
    )
    check(
        find_task(other.tasks, task_id) is None,
        "GetStatus(agent_ids=['py-agent-nobody']) lists a task of py-agent",
    )
    print(f"ok - the agent_ids filter leaves out other agents' tasks")

    # --- bad calls ---------------------------------------------------------------------
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "ReportProgress(progress=nan)",
        agent.ReportProgress,
        agent_service_pb2.ReportProgressRequest(task_id=task_id, progress=float("nan")),
    )
    expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        f"StartTask of the live task id {task_id} again",
        agent.StartTask,
        agent_service_pb2.StartTaskRequest(
            task_id=task_id, agent_id=AGENT_ID, description=DESCRIPTION
        ),
    )
    task = poller.GetTask(
        monitor_service_pb2.GetTaskRequest(task_id=task_id), timeout=CALL_TIMEOUT
    ).task
    check(
        task.version == 4 and task.progress == 0.75 and task.status == RUNNING,
        f"the refused calls changed the task: version {task.version}, progress {task.progress}, "
        f"status {status_name(task.status)}",
    )
    print(f"ok - the refused calls left the task unchanged")

    # --- the agent completes the task --------------------------------------------------
    result_data = {"answer": 42.0, "ok": True, "notes": ["fast", "clean"]}
    result = value(result_data)
    done = agent.CompleteTask(
        agent_service_pb2.CompleteTaskRequest(task_id=task_id, result=result),
        timeout=CALL_TIMEOUT,
    ).task
    check(
        done.status == COMPLETED,
        f"CompleteTask: status {status_name(done.status)}, wanted TASK_STATUS_COMPLETED",
    )
    check(done.version == 5, f"CompleteTask: version {done.version}, wanted 5")
    check(
        as_python(done.result) == result_data,
        f"CompleteTask: result {as_python(done.result)}, wanted {result_data}",
    )
    check(done.HasField("finish_time"), "CompleteTask: finish_time is not set")
    print(f"ok - agent completed the task with a result")

    # --- the poller sees it COMPLETED, and the statistics -------------------------------
    status = poller.GetStatus(
        monitor_service_pb2.GetStatusRequest(statuses=[COMPLETED]), timeout=CALL_TIMEOUT
    )
    wrong = [t.task_id for t in status.tasks if t.status != COMPLETED]
    check(not wrong, f"GetStatus(statuses=[COMPLETED]) listed tasks not COMPLETED: {wrong}")
    task = find_task(status.tasks, task_id)
    check(task is not None, f"GetStatus(statuses=[TASK_STATUS_COMPLETED]) does not list {task_id}")
    check(
        task.status == COMPLETED,
        f"GetStatus: status {status_name(task.status)}, wanted TASK_STATUS_COMPLETED",
    )
    check(
        as_python(task.result) == result_data,
        f"GetStatus: result {as_python(task.result)}, wanted {result_data}",
    )
    check(task.HasField("duration"), "GetStatus: duration is not set on a finished task")
    check(task.HasField("finish_time"), "GetStatus: finish_time is not set on a finished task")
    stats = status.statistics
    check(stats.tasks_started >= 1, f"statistics.tasks_started {stats.tasks_started}, wanted >= 1")
    check(
        stats.tasks_completed >= 1,
        f"statistics.tasks_completed {stats.tasks_completed}, wanted >= 1",
    )
    check(
        stats.events_published >= 5,
        f"statistics.events_published {stats.events_published}, wanted >= 5 "
        "(started, two progress reports, one update, completed)",
    )
    check(stats.head_seq >= 5, f"statistics.head_seq {stats.head_seq}, wanted >= 5")
    check(
        stats.tasks_by_status.completed >= 1,
        f"statistics.tasks_by_status.completed {stats.tasks_by_status.completed}, wanted >= 1",
    )
    print(
        f"ok - poller sees the task COMPLETED; statistics: "
        f"tasks_started={stats.tasks_started} tasks_completed={stats.tasks_completed} "
        f"events_published={stats.events_published} head_seq={stats.head_seq}"
    )

    running = poller.GetStatus(
        monitor_service_pb2.GetStatusRequest(statuses=[RUNNING], agent_ids=[AGENT_ID]),
        timeout=CALL_TIMEOUT,
    )
    check(
        find_task(running.tasks, task_id) is None,
        "GetStatus(statuses=[RUNNING]) still lists the completed task",
    )
    print(f"ok - the statuses filter leaves out the completed task")

    # --- more bad calls ------------------------------------------------------------------
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        "GetTask of an unknown task id",
        poller.GetTask,
        monitor_service_pb2.GetTaskRequest(task_id=f"py-task-unknown-{uuid.uuid4()}"),
    )
    expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        f"StartTask of the finished task id {task_id} again",
        agent.StartTask,
        agent_service_pb2.StartTaskRequest(
            task_id=task_id, agent_id=AGENT_ID, description=DESCRIPTION
        ),
    )

    agent_channel.close()
    poller_channel.close()


if __name__ == "__main__":
    sys.exit(main(run, __doc__))
