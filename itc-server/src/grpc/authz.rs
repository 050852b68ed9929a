//! Authorization: what the authenticated caller ([`crate::auth`]) may do.
//!
//! - A principal acts only as itself: a session id, agent id, coordinator id or
//!   requestor id in a request must be its id.
//! - An agent changes only its own tasks (and answers only their commands).
//! - Only coordinators (and admins) coordinate, lock, interrupt, resume or answer input.
//! - An agent sees only its own tasks, their events, inputs and commands, and its own
//!   session; coordinators and admins see everything.
//!
//! With authentication off there is no principal and everything is allowed, as before.
//! Refusals are PERMISSION_DENIED naming the field and both ids, and change nothing: every
//! check runs before the core is called.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::auth::{Principal, Role};
use crate::core::{Core, SessionKind};
use crate::error::CoreError;

/// The caller of one request: a principal, or anyone (authentication off).
#[derive(Debug, Clone)]
pub(crate) struct Caller(Option<Arc<Principal>>);

fn denied(message: String) -> Status {
    CoreError::PermissionDenied(message).into()
}

impl Caller {
    /// The caller of `request` (the principal [`crate::auth::AuthLayer`] put there).
    pub(crate) fn of<T>(request: &Request<T>) -> Self {
        Self(request.extensions().get::<Arc<Principal>>().cloned())
    }

    /// The principal's id; `None` with authentication off.
    pub(crate) fn id(&self) -> Option<&str> {
        self.0.as_ref().map(|p| p.id.as_str())
    }

    /// `id`, given in `field`, must be the caller's own id.
    pub(crate) fn acts_as(&self, field: &str, id: &str) -> Result<(), Status> {
        match &self.0 {
            Some(p) if p.id != id => Err(denied(format!(
                "`{field}` is `{id}`, but the caller is `{}`: a principal acts only as itself",
                p.id
            ))),
            _ => Ok(()),
        }
    }

    /// The caller must have `role` (admins count as coordinators).
    pub(crate) fn needs(&self, role: Role, what: &str) -> Result<(), Status> {
        match &self.0 {
            Some(p) if !p.has(role) => Err(denied(format!(
                "`{}` may not {what}: it takes the {} role",
                p.id,
                match role {
                    Role::Agent => "agent",
                    Role::Coordinator => "coordinator",
                    Role::Admin => "admin",
                }
            ))),
            _ => Ok(()),
        }
    }

    /// The caller must be the agent of `task_id` (checked against the task as stored).
    pub(crate) fn owns_task(&self, core: &Core, task_id: &str) -> Result<(), Status> {
        let Some(p) = &self.0 else { return Ok(()) };
        self.needs(Role::Agent, "change a task")?;
        let task = core.task(task_id)?;
        if task.agent_id != p.id {
            return Err(denied(format!(
                "task `{task_id}` is not one of `{}`'s tasks: an agent changes only its own",
                p.id
            )));
        }
        Ok(())
    }

    /// The caller may see the task of agent `agent_id` (its own, or everything).
    pub(crate) fn sees(&self, what: &str, agent_id: &str) -> Result<(), Status> {
        match &self.0 {
            Some(p) if !p.sees_all() && p.id != agent_id => Err(denied(format!(
                "{what} is not one of `{}`'s: an agent sees only its own",
                p.id
            ))),
            _ => Ok(()),
        }
    }

    /// `None` when the caller sees every agent's tasks; `Some(id)` when only its own.
    pub(crate) fn only_agent(&self) -> Option<&str> {
        match &self.0 {
            Some(p) if !p.sees_all() => Some(&p.id),
            _ => None,
        }
    }

    /// Narrows an agent-id filter to what the caller sees: an empty one (all) becomes the
    /// caller's own id; one naming another agent is refused.
    pub(crate) fn narrow_agents(&self, field: &str, agent_ids: &mut Vec<String>) -> Result<(), Status> {
        let Some(own) = self.only_agent() else { return Ok(()) };
        if let Some(other) = agent_ids.iter().find(|a| *a != own) {
            return Err(denied(format!(
                "`{field}` names agent `{other}`; `{own}` sees only its own tasks"
            )));
        }
        if agent_ids.is_empty() {
            agent_ids.push(own.to_owned());
        }
        Ok(())
    }

    /// A session of `kind` as `session_id`: the caller's own id, with the role the kind
    /// takes (AGENT: agent; the coordinator kinds: coordinator).
    pub(crate) fn may_connect(&self, session_id: &str, kind: SessionKind) -> Result<(), Status> {
        self.acts_as("session_id", session_id)?;
        if kind == SessionKind::Agent {
            self.needs(Role::Agent, "connect an AGENT session")
        } else {
            self.needs(Role::Coordinator, "connect a coordinator session")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed expectation is a failed test
mod tests {
    use super::*;

    fn caller(id: &str, roles: &[Role]) -> Caller {
        Caller(Some(Arc::new(Principal {
            id: id.into(),
            roles: roles.to_vec(),
        })))
    }

    #[test]
    fn principals_act_only_as_themselves() {
        let worker = caller("w1", &[Role::Agent]);
        assert!(worker.acts_as("agent_id", "w1").is_ok());
        let err = worker.acts_as("agent_id", "w2").unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("`agent_id` is `w2`, but the caller is `w1`"),
            "{}",
            err.message()
        );
        let admin = caller("root", &[Role::Admin]);
        assert!(admin.acts_as("coordinator_id", "sup").is_err(), "admins too");
        assert!(Caller(None).acts_as("agent_id", "anyone").is_ok(), "auth off");
    }

    #[test]
    fn roles_and_visibility() {
        let worker = caller("w1", &[Role::Agent]);
        let sup = caller("sup", &[Role::Coordinator]);
        let admin = caller("root", &[Role::Admin]);
        assert!(worker.needs(Role::Coordinator, "coordinate").is_err());
        assert!(sup.needs(Role::Coordinator, "coordinate").is_ok());
        assert!(admin.needs(Role::Coordinator, "coordinate").is_ok());
        assert!(sup.needs(Role::Agent, "change a task").is_err());
        assert!(worker.sees("task `t`", "w2").is_err() && worker.sees("task `t`", "w1").is_ok());
        assert!(sup.sees("task `t`", "w2").is_ok() && admin.sees("task `t`", "w2").is_ok());

        let mut all = vec![];
        worker.narrow_agents("agent_ids", &mut all).unwrap();
        assert_eq!(all, ["w1"]);
        assert!(worker.narrow_agents("agent_ids", &mut vec!["w2".into()]).is_err());
        let mut all = vec![];
        sup.narrow_agents("agent_ids", &mut all).unwrap();
        assert!(all.is_empty());

        assert!(worker.may_connect("w1", SessionKind::Agent).is_ok());
        assert!(worker.may_connect("w1", SessionKind::Human).is_err());
        assert!(sup.may_connect("sup", SessionKind::Supervisor).is_ok());
        assert!(sup.may_connect("sup", SessionKind::Agent).is_err());
        assert!(sup.may_connect("w1", SessionKind::Supervisor).is_err());
    }
}
