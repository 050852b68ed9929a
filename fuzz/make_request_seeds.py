"""Writes the seed inputs of the `requests` fuzz target: one per request type and caller,
each the type byte (plus 32 for the principal `agent`, 64 for `sup`; see
itc_server::fuzzing) then a plausible protobuf encoding (task `t`, sessions `sup` and
`agent`, as itc_server::fuzzing seeds its server).

Usage: PYTHONPATH=<stubs generated from proto/> python fuzz/make_request_seeds.py fuzz/seeds/requests
"""
import sys
from google.protobuf import struct_pb2, duration_pb2
from itc.v1 import agent_service_pb2 as a, coordinator_service_pb2 as c, monitor_service_pb2 as m, session_service_pb2 as s, types_pb2 as t
def st(d):
    x=struct_pb2.Struct(); x.update(d); return x
def val(v):
    x=struct_pb2.Value(); x.string_value=v; return x
seeds = {
 0: a.StartTaskRequest(task_id="t2", agent_id="agent", description="seed", metadata=st({"k": [1, {"a": "b"}]}), plan=st({"steps": ["x"]}), stall_timeout=duration_pb2.Duration(seconds=5)),
 1: a.ReportProgressRequest(task_id="t", progress=0.5, message="half"),
 2: a.PublishUpdateRequest(task_id="t", data=st({"phase": "parse", "n": 3})),
 3: a.CompleteTaskRequest(task_id="t", result=val("ok")),
 4: a.FailTaskRequest(task_id="t", error=t.TaskError(message="boom", details=st({"code": 7}))),
 5: a.CancelTaskRequest(task_id="t", reason="stop"),
 6: a.RequestInputRequest(task_id="t", prompt="Ship it?", choices=["yes","no"], timeout=duration_pb2.Duration(seconds=1), timeout_action=t.INPUT_TIMEOUT_ACTION_USE_DEFAULT, default_value=val("no")),
 7: a.AcknowledgeCommandRequest(command_id="c", outcome=t.COMMAND_STATE_APPLIED, result=val("done")),
 8: c.CoordinateRequest(task_id="t", coordinator_id="sup", action=t.COMMAND_ACTION_MODIFY_PLAN, data=st({"steps": ["a","b"]}), idempotency_key="k", wait=c.COMMAND_WAIT_DELIVERED, wait_timeout=duration_pb2.Duration(nanos=1000000)),
 9: c.AcquireLockRequest(task_id="t", coordinator_id="sup", lease=duration_pb2.Duration(seconds=5)),
 10: c.RenewLockRequest(task_id="t", coordinator_id="sup", fencing_token=5),
 11: c.ReleaseLockRequest(task_id="t", coordinator_id="sup", fencing_token=5),
 12: c.AnswerInputRequest(request_id="r", coordinator_id="sup", answer=val("yes")),
 13: c.InterruptAllRequest(coordinator_id="sup", reason="all"),
 14: c.InteractRequest(query="stop everything", requestor_id="sup", requestor_kind=t.SESSION_KIND_HUMAN),
 15: m.GetStatusRequest(statuses=[t.TASK_STATUS_RUNNING], agent_ids=["agent"], page_size=10),
 16: m.GetTaskRequest(task_id="t"),
 17: m.SubscribeRequest(filter=t.SubscriptionFilter(task_ids=["t"], event_types=[t.EVENT_TYPE_TASK_PROGRESS]), after_seq=0, snapshot=True, session_id="sup"),
 18: s.ConnectRequest(session_id="sup2", kind=t.SESSION_KIND_SUPERVISOR, capabilities=t.Capabilities(streaming=True, interruption=True), lease_ttl=duration_pb2.Duration(seconds=3)),
 19: s.DisconnectRequest(session_id="agent"),
 20: c.GetCommandRequest(command_id="c"),
 21: m.GetInputRequest(request_id="r"),
 22: c.ResumeAllRequest(coordinator_id="sup"),
}
for kind, msg in seeds.items():
    for caller, offset in (("", 0), ("-agent", 32), ("-sup", 64)):
        open(f"{sys.argv[1]}/kind-{kind:02}{caller}", "wb").write(bytes([kind + offset]) + msg.SerializeToString())
