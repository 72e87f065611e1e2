//! The v1 scheduler API's calls, as inputs of the core: SUBSCRIBE (which always opens a
//! stream, answering SUBSCRIBED or ERROR on it) and every other call, answered synchronously
//! with the status Mesos gives (202, 200, 400, 403, 501) while their effects go out as
//! commands.

use std::collections::BTreeSet;
use std::time::Duration;

use corral_wire::mesos::v1::scheduler::{Call, Event, call, event};
use corral_wire::mesos::v1::{self, framework_info::capability::Type as Cap};
use corral_wire::mesos::{IdExt as _, is_terminal, is_valid_uuid, validate_id, validate_role};
use corral_wire::proto::{
    CommandSpec, ExecutorSpec, FrameworkRef, MasterMessage, RunTask, TaskGroupRef, TaskSpec,
};
use corral_wire::resources::Resources;

use super::{
    Command, Executor, Framework, Master, Stream, StreamId, Task, Time, has_capability,
    master_update, update_event,
};

/// A `CommandInfo` as the agent runs it.
fn command_spec(cmd: &v1::CommandInfo) -> CommandSpec {
    CommandSpec {
        shell: cmd.shell(),
        value: cmd.value.clone(),
        arguments: cmd.arguments.clone(),
        environment: cmd
            .environment
            .as_ref()
            .map(|e| {
                e.variables
                    .iter()
                    .map(|v| (v.name.clone(), v.value.clone().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default(),
        user: cmd.user.clone(),
    }
}

/// Default `Filters.refuse_seconds`.
const DEFAULT_REFUSE: Duration = Duration::from_secs(5);

/// A refused call, with Mesos' status and text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 403.
    #[error("{0}")]
    Forbidden(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 501.
    #[error("not implemented")]
    NotImplemented,
}

/// A call's success status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResponse {
    /// 202 with an empty body.
    Accepted,
    /// 200 with an empty body (UPDATE_FRAMEWORK).
    Ok,
}

/// Mesos' `validation::scheduler::call::validate`, applied before anything else (the shell
/// answers 400 "Failed to validate scheduler::Call: <text>").
pub fn validate_call(call: &Call) -> Result<(), String> {
    let Some(t) = call.r#type else { return Err("Expecting 'type' to be present".into()) };
    let t = call::Type::try_from(t).unwrap_or(call::Type::Unknown);
    if t == call::Type::Subscribe {
        let Some(sub) = &call.subscribe else {
            return Err("Expecting 'subscribe' to be present".into());
        };
        if sub.framework_info.id != call.framework_id {
            return Err("'framework_id' differs from 'subscribe.framework_info.id'".into());
        }
        return Ok(());
    }
    if call.framework_id.is_none() {
        return Err("Expecting 'framework_id' to be present".into());
    }
    let missing = |present: bool, name: &str| {
        if present { Ok(()) } else { Err(format!("Expecting '{name}' to be present")) }
    };
    match t {
        call::Type::Accept => missing(call.accept.is_some(), "accept"),
        call::Type::Decline => missing(call.decline.is_some(), "decline"),
        call::Type::AcceptInverseOffers => {
            missing(call.accept_inverse_offers.is_some(), "accept_inverse_offers")
        }
        call::Type::DeclineInverseOffers => {
            missing(call.decline_inverse_offers.is_some(), "decline_inverse_offers")
        }
        call::Type::Kill => missing(call.kill.is_some(), "kill"),
        call::Type::Shutdown => missing(call.shutdown.is_some(), "shutdown"),
        call::Type::Acknowledge => {
            let Some(ack) = &call.acknowledge else {
                return Err("Expecting 'acknowledge' to be present".into());
            };
            if is_valid_uuid(&ack.uuid) { Ok(()) } else { Err("Not a valid UUID".into()) }
        }
        call::Type::AcknowledgeOperationStatus => {
            let Some(ack) = &call.acknowledge_operation_status else {
                return Err("Expecting 'acknowledge_operation_status' to be present".into());
            };
            if !is_valid_uuid(&ack.uuid) {
                return Err("Not a valid UUID".into());
            }
            missing(ack.agent_id.is_some(), "agent_id")
        }
        call::Type::Reconcile => missing(call.reconcile.is_some(), "reconcile"),
        call::Type::ReconcileOperations => {
            missing(call.reconcile_operations.is_some(), "reconcile_operations")
        }
        call::Type::Message => missing(call.message.is_some(), "message"),
        call::Type::Request => missing(call.request.is_some(), "request"),
        call::Type::UpdateFramework => {
            let Some(u) = &call.update_framework else {
                return Err("Expecting 'update_framework' to be present".into());
            };
            if u.framework_info.id != call.framework_id {
                return Err(
                    "'framework_id' differs from 'update_framework.framework_info.id'".into()
                );
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The roles a framework subscribes with: `roles` for MULTI_ROLE frameworks, else the legacy
/// `role` (default `*`).
#[allow(deprecated)]
fn framework_roles(info: &v1::FrameworkInfo) -> Vec<String> {
    if has_capability(info, Cap::MultiRole) {
        info.roles.clone()
    } else {
        vec![info.role.clone().unwrap_or_else(|| "*".into())]
    }
}

/// Mesos' FrameworkInfo validation (roles, id, failover timeout).
#[allow(deprecated)]
fn validate_framework_info(info: &v1::FrameworkInfo) -> Result<(), String> {
    let multi = has_capability(info, Cap::MultiRole);
    if multi && info.role.is_some() {
        return Err(
            "'FrameworkInfo.role' must not be set when the framework is MULTI_ROLE capable".into(),
        );
    }
    if !multi && !info.roles.is_empty() {
        return Err(
            "'FrameworkInfo.roles' must not be set when the framework is not MULTI_ROLE capable"
                .into(),
        );
    }
    if multi {
        let mut seen = BTreeSet::new();
        let dups: BTreeSet<&String> = info.roles.iter().filter(|r| !seen.insert(*r)).collect();
        if !dups.is_empty() {
            let list: Vec<&str> = dups.iter().map(|s| s.as_str()).collect();
            return Err(format!(
                "'FrameworkInfo.roles' contains duplicate items: {{ {} }}",
                list.join(", ")
            ));
        }
        for r in &info.roles {
            validate_role(r)
                .map_err(|e| format!("'FrameworkInfo.roles' contains invalid role: {e}"))?;
        }
    } else {
        let role = info.role.clone().unwrap_or_else(|| "*".into());
        validate_role(&role)
            .map_err(|e| format!("'FrameworkInfo.role' is not a valid role: {e}"))?;
    }
    if let Some(id) = &info.id
        && !id.value.is_empty()
    {
        validate_id(&id.value)?;
    }
    if let Some(t) = info.failover_timeout
        && (!t.is_finite() || t < 0.0)
    {
        return Err(format!("The framework failover_timeout ({t}) is invalid"));
    }
    Ok(())
}

fn refuse_duration(filters: Option<&v1::Filters>) -> Duration {
    let secs = filters.and_then(|f| f.refuse_seconds).unwrap_or(DEFAULT_REFUSE.as_secs_f64());
    if secs.is_finite() && secs > 0.0 {
        Duration::from_secs_f64(secs.min(super::allocator::MAX_REFUSE.as_secs_f64()))
    } else {
        Duration::ZERO
    }
}

fn error_event(message: &str) -> Event {
    Event {
        r#type: Some(event::Type::Error as i32),
        error: Some(event::Error { message: message.to_string() }),
        ..Default::default()
    }
}

/// The HEARTBEAT event.
pub fn heartbeat_event() -> Event {
    Event { r#type: Some(event::Type::Heartbeat as i32), ..Default::default() }
}

impl Master {
    /// A SUBSCRIBE call arrived; the shell has opened `stream` (whose `Mesos-Stream-Id` is
    /// `stream_uuid`). Answers SUBSCRIBED + HEARTBEAT on it, or ERROR and closes it.
    pub fn subscribe(
        &mut self,
        now: Time,
        stream: StreamId,
        stream_uuid: String,
        sub: call::Subscribe,
    ) {
        self.now = now;
        self.allocator.set_now(now);
        let mut info = sub.framework_info;
        let fail = |this: &mut Master, msg: String| {
            tracing::info!(%msg, "refusing framework subscription");
            this.commands
                .push_back(Command::SendEvent { stream, event: Box::new(error_event(&msg)) });
            this.commands.push_back(Command::CloseStream { stream });
        };
        if let Err(e) = validate_framework_info(&info) {
            return fail(self, format!("Supplied FrameworkInfo is not valid: {e}"));
        }
        let roles = framework_roles(&info);
        let suppressed = sub.suppressed_roles;
        if let Some(r) = suppressed.iter().find(|r| !roles.contains(r)) {
            return fail(
                self,
                format!("Suppressed role '{r}' is not contained in the list of roles"),
            );
        }
        let id = match info.id.as_ref().map(|i| i.value.clone()).filter(|v| !v.is_empty()) {
            Some(id) => {
                if self.completed_frameworks.iter().any(|f| f.id == id) {
                    return fail(self, "Framework has been removed".into());
                }
                id
            }
            None => {
                let id = format!("{}-{:04}", self.identity.id, self.next_framework);
                self.next_framework += 1;
                id
            }
        };
        info.id = Some(v1::FrameworkId::from_str(&id));
        let stream_rec = Stream { id: stream, uuid: stream_uuid };
        let added = !self.frameworks.contains_key(&id);
        match self.frameworks.get_mut(&id) {
            Some(fw) => {
                tracing::info!(framework = %id, name = %info.name, "framework re-subscribed");
                if let Some(old) = fw.stream.replace(stream_rec) {
                    self.streams.remove(&old.id);
                    self.commands.push_back(Command::SendEvent {
                        stream: old.id,
                        event: Box::new(error_event("Framework failed over")),
                    });
                    self.commands.push_back(Command::CloseStream { stream: old.id });
                }
                if fw.recovered {
                    fw.registered_time = Some(now);
                    fw.recovered = false;
                } else {
                    fw.reregistered_time = Some(now);
                }
                fw.info = info;
                fw.roles = roles.clone();
                fw.suppressed = suppressed.clone();
                fw.failover_deadline = None;
                fw.unregistered_time = None;
                let offers: Vec<String> = fw.offers.iter().cloned().collect();
                for o in offers {
                    self.remove_offer(&o, true);
                }
            }
            None => {
                tracing::info!(framework = %id, name = %info.name, "framework subscribed");
                let fw = Framework::new(
                    &id,
                    info,
                    roles.clone(),
                    suppressed.clone(),
                    Some((stream_rec, now)),
                );
                self.frameworks.insert(id.clone(), fw);
            }
        }
        self.streams.insert(stream, id.clone());
        self.allocator.add_framework(&id, &roles, &suppressed, true);
        let subscribed = Event {
            r#type: Some(event::Type::Subscribed as i32),
            subscribed: Some(event::Subscribed {
                framework_id: v1::FrameworkId::from_str(&id),
                heartbeat_interval_seconds: Some(self.config.heartbeat_interval.as_secs_f64()),
                master_info: Some(self.identity.master_info()),
            }),
            ..Default::default()
        };
        self.commands.push_back(Command::SendEvent { stream, event: Box::new(subscribed) });
        self.commands.push_back(Command::SendEvent { stream, event: Box::new(heartbeat_event()) });
        self.emit_framework(&id, added);
    }

    /// Any call but SUBSCRIBE, already validated with [`validate_call`]. `stream_id` is the
    /// request's `Mesos-Stream-Id` header.
    pub fn call(
        &mut self,
        now: Time,
        stream_id: Option<&str>,
        call: Call,
    ) -> Result<CallResponse, CallError> {
        self.now = now;
        self.allocator.set_now(now);
        let fid = call.framework_id.as_ref().map(|f| f.value.clone()).unwrap_or_default();
        let Some(fw) = self.frameworks.get(&fid) else {
            return Err(CallError::BadRequest("Framework cannot be found".into()));
        };
        let Some(stream) = &fw.stream else {
            return Err(CallError::Forbidden("Framework is not subscribed".into()));
        };
        let Some(header) = stream_id else {
            return Err(CallError::BadRequest(
                "All non-subscribe calls should include the 'Mesos-Stream-Id' header".into(),
            ));
        };
        if header != stream.uuid {
            return Err(CallError::BadRequest(format!(
                "The stream ID '{header}' included in this request didn't match the stream ID currently associated with framework ID {fid}"
            )));
        }
        let t =
            call.r#type.and_then(|t| call::Type::try_from(t).ok()).unwrap_or(call::Type::Unknown);
        match t {
            call::Type::Teardown => {
                tracing::info!(framework = %fid, "framework teardown");
                self.remove_framework(&fid);
            }
            call::Type::Accept => {
                let a = call.accept.unwrap_or_default();
                self.accept(&fid, a.offer_ids, a.operations, a.filters.as_ref());
            }
            call::Type::Decline => {
                let d = call.decline.unwrap_or_default();
                self.metrics.offers_declined += d.offer_ids.len() as u64;
                self.accept(&fid, d.offer_ids, Vec::new(), d.filters.as_ref());
            }
            call::Type::Revive => {
                let roles = call.revive.map(|r| r.roles).unwrap_or_default();
                if let Some(fw) = self.frameworks.get_mut(&fid) {
                    if roles.is_empty() {
                        fw.suppressed.clear();
                    } else {
                        fw.suppressed.retain(|r| !roles.contains(r));
                    }
                }
                self.allocator.revive(&fid, &roles);
            }
            call::Type::Suppress => {
                let roles = call.suppress.map(|r| r.roles).unwrap_or_default();
                if let Some(fw) = self.frameworks.get_mut(&fid) {
                    let add: Vec<String> =
                        if roles.is_empty() { fw.roles.clone() } else { roles.clone() };
                    for r in add {
                        if !fw.suppressed.contains(&r) {
                            fw.suppressed.push(r);
                        }
                    }
                }
                self.allocator.suppress(&fid, &roles);
            }
            call::Type::Kill => {
                let k = call.kill.unwrap_or_default();
                self.kill(&fid, &k.task_id.value, k.agent_id.map(|a| a.value), k.kill_policy);
            }
            call::Type::Shutdown => {
                let s = call.shutdown.unwrap_or_default();
                let custom = self.frameworks[&fid]
                    .executors
                    .get(&s.executor_id.value)
                    .filter(|e| e.info.command.is_some())
                    .map(|e| e.agent_id.clone());
                match custom {
                    Some(agent) => self.send_agent(
                        &agent,
                        MasterMessage::ShutdownExecutor {
                            framework_id: fid.clone(),
                            executor_id: s.executor_id.value,
                        },
                    ),
                    // Command tasks run under an executor whose id is the task id.
                    None => self.kill(&fid, &s.executor_id.value, Some(s.agent_id.value), None),
                }
            }
            call::Type::Acknowledge => {
                let a = call.acknowledge.unwrap_or_default();
                self.acknowledge(&fid, &a.agent_id.value, &a.task_id.value, &a.uuid);
            }
            call::Type::Reconcile => {
                let r = call.reconcile.unwrap_or_default();
                let tasks = r
                    .tasks
                    .into_iter()
                    .map(|t| (t.task_id.value, t.agent_id.map(|a| a.value)))
                    .collect();
                self.reconcile(&fid, tasks);
            }
            call::Type::UpdateFramework => {
                return self.update_framework(&fid, call.update_framework.unwrap_or_default());
            }
            call::Type::ReconcileOperations => {
                let r = call.reconcile_operations.unwrap_or_default();
                self.reconcile_operations(&fid, r);
            }
            call::Type::Message => {
                // To the executor through its agent; Mesos drops a message for an executor it
                // does not know, silently.
                let msg = call.message.unwrap_or_default();
                let agent = msg.agent_id.value;
                if self.agents.get(&agent).is_some_and(|a| a.tasks.iter().any(|(f, _)| *f == fid)) {
                    self.send_agent(
                        &agent,
                        MasterMessage::FrameworkMessage {
                            framework_id: fid.clone(),
                            executor_id: msg.executor_id.value,
                            data: msg.data,
                        },
                    );
                } else {
                    tracing::debug!(framework = %fid, %agent, "MESSAGE for an agent without the framework's executors; dropped");
                }
            }
            call::Type::Request
            | call::Type::AcceptInverseOffers
            | call::Type::DeclineInverseOffers
            | call::Type::AcknowledgeOperationStatus => {
                // Accepted without effect, as in Mesos: REQUEST is ignored by its allocator,
                // inverse offers exist only with maintenance schedules, and operation
                // statuses from the master carry no uuid to acknowledge.
                tracing::debug!(framework = %fid, call = ?t, "call accepted without effect");
            }
            call::Type::Subscribe | call::Type::Unknown => return Err(CallError::NotImplemented),
        }
        Ok(CallResponse::Accepted)
    }

    fn update_framework(
        &mut self,
        fid: &str,
        u: call::UpdateFramework,
    ) -> Result<CallResponse, CallError> {
        let info = u.framework_info;
        validate_framework_info(&info).map_err(|e| {
            CallError::BadRequest(format!("Supplied FrameworkInfo is not valid: {e}"))
        })?;
        let fw = self.frameworks.get_mut(fid).expect("checked by call()");
        let immutable = |name: &str, old: &dyn std::fmt::Debug, new: &dyn std::fmt::Debug| {
            Err(CallError::BadRequest(format!(
                "Updating 'FrameworkInfo.{name}' is unsupported; attempted to update from {old:?} to {new:?}"
            )))
        };
        if fw.info.principal != info.principal {
            return immutable("principal", &fw.info.principal, &info.principal);
        }
        if fw.info.user != info.user {
            return immutable("user", &fw.info.user, &info.user);
        }
        if fw.info.checkpoint.unwrap_or(false) != info.checkpoint.unwrap_or(false) {
            return immutable("checkpoint", &fw.info.checkpoint, &info.checkpoint);
        }
        let roles = framework_roles(&info);
        if let Some(r) = u.suppressed_roles.iter().find(|r| !roles.contains(r)) {
            return Err(CallError::BadRequest(format!(
                "Suppressed role '{r}' is not contained in the list of roles"
            )));
        }
        fw.info = info;
        fw.roles = roles.clone();
        fw.suppressed = u.suppressed_roles.clone();
        // Offers made for roles the framework left are rescinded.
        let stale: Vec<String> = fw
            .offers
            .iter()
            .filter(|o| self.offers.get(*o).is_some_and(|o| !roles.contains(&o.role)))
            .cloned()
            .collect();
        self.allocator.update_framework(fid, &roles, &u.suppressed_roles);
        for o in stale {
            self.rescind_offer(&o);
        }
        self.emit_framework(fid, false);
        Ok(CallResponse::Ok)
    }

    fn accept(
        &mut self,
        fid: &str,
        offer_ids: Vec<v1::OfferId>,
        operations: Vec<v1::offer::Operation>,
        filters: Option<&v1::Filters>,
    ) {
        let refuse = refuse_duration(filters);
        // Validate the offers as a whole (Mesos' offer validation, in its order).
        let mut error = None;
        let mut seen = BTreeSet::new();
        let mut agent: Option<String> = None;
        let mut role: Option<String> = None;
        for oid in &offer_ids {
            let Some(offer) = self.offers.get(&oid.value) else {
                error.get_or_insert(format!("Offer {} is no longer valid", oid.value));
                continue;
            };
            if !seen.insert(oid.value.clone()) {
                error.get_or_insert(format!("Duplicate offer {} in offer list", oid.value));
            }
            if offer.framework_id != fid {
                error.get_or_insert(format!(
                    "Offer {} has invalid framework {} while framework {fid} is expected",
                    oid.value, offer.framework_id
                ));
            }
            match &role {
                Some(r) if *r != offer.role => {
                    error.get_or_insert(format!(
                        "Aggregated offers must be allocated to the same role. Offer {} uses role '{} but another is using role '{r}",
                        oid.value, offer.role
                    ));
                }
                _ => role = Some(offer.role.clone()),
            }
            match &agent {
                Some(a) if *a != offer.agent_id => {
                    error.get_or_insert(format!(
                        "Aggregated offers must belong to one single agent. Offer {} uses agent {} and agent {a}",
                        oid.value, offer.agent_id
                    ));
                }
                _ => agent = Some(offer.agent_id.clone()),
            }
        }
        if offer_ids.is_empty() {
            error.get_or_insert("No offers specified".into());
        }
        if let Some(error) = error {
            tracing::info!(framework = %fid, %error, "refusing ACCEPT: invalid offers");
            for oid in &offer_ids {
                if self.offers.get(&oid.value).is_some_and(|o| o.framework_id == fid) {
                    self.remove_offer(&oid.value, true);
                }
            }
            let dropped = self.frameworks[fid].lost(v1::TaskState::TaskDropped);
            for op in operations {
                for task in op.launch.map(|l| l.task_infos).unwrap_or_default() {
                    let status = master_update(
                        &task.task_id.value,
                        dropped,
                        v1::task_status::Reason::InvalidOffers,
                        &format!("Task launched with invalid offers: {error}"),
                        None,
                        self.now,
                    );
                    self.send_event(fid, update_event(status));
                }
            }
            return;
        }
        let (Some(agent), Some(role)) = (agent, role) else { return };
        let mut remaining = Resources::new();
        let declined = operations.is_empty();
        for oid in &offer_ids {
            if let Some(o) = self.remove_offer(&oid.value, false) {
                remaining.add(&o.resources);
                if let Some(fw) = self.frameworks.get_mut(fid) {
                    let stages = fw.stages(&role);
                    let stage = if declined { &mut stages.declined } else { &mut stages.accepted };
                    stage.record_between(o.created, self.now);
                }
            }
        }
        if !operations.is_empty() {
            self.metrics.offers_accepted += offer_ids.len() as u64;
        }
        for op in operations {
            let t = v1::offer::operation::Type::try_from(op.r#type.unwrap_or(0))
                .unwrap_or(v1::offer::operation::Type::Unknown);
            match t {
                v1::offer::operation::Type::Launch => {
                    for task in op.launch.map(|l| l.task_infos).unwrap_or_default() {
                        self.launch(fid, &agent, &role, task, &mut remaining);
                    }
                }
                v1::offer::operation::Type::LaunchGroup => {
                    if let Some(group) = op.launch_group {
                        self.launch_group(fid, &agent, &role, group, &mut remaining);
                    }
                }
                v1::offer::operation::Type::Reserve
                | v1::offer::operation::Type::Unreserve
                | v1::offer::operation::Type::Create
                | v1::offer::operation::Type::Destroy => {
                    let id = op.id.clone();
                    let result = super::operator::conversion_of(&op).and_then(|conv| {
                        self.convert_offered(fid, &agent, &role, &conv, &mut remaining)
                    });
                    if let Err(e) = &result {
                        tracing::info!(framework = %fid, error = %e, "dropping an offer operation");
                    }
                    if let Some(id) = id {
                        self.operation_feedback(fid, &agent, id, result);
                    }
                }
                other => {
                    tracing::warn!(framework = %fid, operation = ?other, "offer operation not supported; ignored");
                    if let Some(id) = op.id {
                        let result =
                            Err(format!("Operation {} is not supported", other.as_str_name()));
                        self.operation_feedback(fid, &agent, id, result);
                    }
                }
            }
        }
        self.allocator.recover(self.now, fid, &agent, &role, &remaining, Some(refuse));
    }

    fn task_error(
        &self,
        task: &v1::TaskInfo,
        reason: v1::task_status::Reason,
        message: &str,
    ) -> v1::TaskStatus {
        let (task_id, agent) = (&task.task_id.value, &task.agent_id.value);
        master_update(task_id, v1::TaskState::TaskError, reason, message, Some(agent), self.now)
    }

    /// Validates one task against what remains of the offers and launches it, or answers
    /// TASK_ERROR.
    fn launch(
        &mut self,
        fid: &str,
        agent: &str,
        role: &str,
        task: v1::TaskInfo,
        remaining: &mut Resources,
    ) {
        let validated = self.validate_task(fid, agent, &task, remaining).and_then(|r| {
            let charge = match &task.executor {
                Some(e) => self.executor_charge(fid, agent, e)?,
                None => Resources::new(),
            };
            let all = r.plus(&charge);
            if !remaining.contains(&all) {
                return Err(format!(
                    "Total resources {all} required by task and its executor is more than available {remaining}"
                ));
            }
            Ok((r, charge))
        });
        let (resources, charge) = match validated {
            Ok(r) => r,
            Err(msg) => {
                let status = self.task_error(&task, v1::task_status::Reason::TaskInvalid, &msg);
                self.send_event(fid, update_event(status));
                return;
            }
        };
        remaining.subtract(&resources);
        remaining.subtract(&charge);
        if let Some(e) = &task.executor {
            let fw = self.frameworks.get_mut(fid).expect("caller checked");
            let mut info = e.clone();
            info.framework_id = Some(v1::FrameworkId::from_str(fid));
            fw.executors
                .entry(e.executor_id.value.clone())
                .or_insert_with(|| Executor {
                    agent_id: agent.to_string(),
                    info,
                    role: role.to_string(),
                    resources: charge,
                    tasks: BTreeSet::new(),
                })
                .tasks
                .insert(task.task_id.value.clone());
        }
        self.start_task(fid, agent, role, task, resources, None);
    }

    /// What a custom executor is charged: its resources when it does not run yet, nothing
    /// when it does (on this agent).
    fn executor_charge(
        &self,
        fid: &str,
        agent: &str,
        e: &v1::ExecutorInfo,
    ) -> Result<Resources, String> {
        let eid = &e.executor_id.value;
        match self.frameworks[fid].executors.get(eid) {
            Some(x) if x.agent_id != agent => {
                Err(format!("Executor '{eid}' already runs on agent {}", x.agent_id))
            }
            Some(_) => Ok(Resources::new()),
            None => Resources::from_mesos(&e.resources)
                .map_err(|why| format!("Executor uses invalid resources: {why}")),
        }
    }

    /// Records a validated task and sends it to its agent.
    fn start_task(
        &mut self,
        fid: &str,
        agent: &str,
        role: &str,
        task: v1::TaskInfo,
        resources: Resources,
        group: Option<TaskGroupRef>,
    ) {
        let fw = self.frameworks.get_mut(fid).expect("caller checked");
        let cmd = task.command.clone().unwrap_or_default();
        let executor_id = group
            .as_ref()
            .map(|g| g.executor_id.clone())
            .or_else(|| task.executor.as_ref().map(|e| e.executor_id.value.clone()));
        let executor = task.executor.as_ref().map(|e| {
            let c = e.command.clone().unwrap_or_default();
            ExecutorSpec {
                executor_id: e.executor_id.value.clone(),
                name: e.name.clone().unwrap_or_default(),
                command: command_spec(&c),
                resources: Resources::from_mesos(&e.resources).unwrap_or_default(),
                data: e.data.clone(),
            }
        });
        let spec = TaskSpec {
            task_id: task.task_id.value.clone(),
            name: task.name.clone(),
            resources: resources.clone(),
            command: command_spec(&cmd),
            kill_grace_period_ns: task
                .kill_policy
                .as_ref()
                .and_then(|k| k.grace_period.as_ref())
                .map(|d| d.nanoseconds.max(0) as u64),
            group,
            executor,
            data: task.data.clone(),
        };
        let run = RunTask {
            framework: FrameworkRef {
                id: fid.to_string(),
                name: fw.info.name.clone(),
                user: fw.info.user.clone(),
                role: role.to_string(),
            },
            task: spec,
        };
        let t = Task {
            id: task.task_id.value.clone(),
            name: task.name.clone(),
            framework_id: fid.to_string(),
            agent_id: agent.to_string(),
            role: role.to_string(),
            resources,
            state: v1::TaskState::TaskStaging,
            latest_uuid: None,
            statuses_pb: Vec::new(),
            user: cmd.user.clone().or_else(|| Some(fw.info.user.clone())),
            info_pb: Some(prost::Message::encode_to_vec(&task).into_boxed_slice()),
            container_id: None,
            executor_id,
            usage: None,
            accepted_at: Some(self.now),
        };
        fw.tasks.insert(t.id.clone(), t);
        self.metrics.tasks_launched += 1;
        if let Some(a) = self.agents.get_mut(agent) {
            a.tasks.insert((fid.to_string(), run.task.task_id.clone()));
        }
        self.emit_task_added(fid, &run.task.task_id);
        self.send_agent(agent, MasterMessage::RunTask(Box::new(run)));
    }

    /// LAUNCH_GROUP: the whole group is validated (executor and every task, against what
    /// remains of the offers) and launched, or every task gets TASK_ERROR with
    /// REASON_TASK_GROUP_INVALID. The agent runs the group under its built-in default
    /// executor: the tasks share the executor's sandbox and end together when one fails.
    fn launch_group(
        &mut self,
        fid: &str,
        agent: &str,
        role: &str,
        group: v1::offer::operation::LaunchGroup,
        remaining: &mut Resources,
    ) {
        let executor = group.executor;
        let tasks = group.task_group.tasks;
        match self.validate_group(fid, agent, &executor, &tasks, remaining) {
            Err(msg) => {
                for task in &tasks {
                    let status =
                        self.task_error(task, v1::task_status::Reason::TaskGroupInvalid, &msg);
                    self.send_event(fid, update_event(status));
                }
            }
            Ok((charge, per_task)) => {
                let eid = executor.executor_id.value.clone();
                let ids: Vec<String> = tasks.iter().map(|t| t.task_id.value.clone()).collect();
                remaining.subtract(&charge);
                let fw = self.frameworks.get_mut(fid).expect("caller checked");
                let mut info = executor;
                info.framework_id = Some(v1::FrameworkId::from_str(fid));
                let e = fw.executors.entry(eid.clone()).or_insert_with(|| Executor {
                    agent_id: agent.to_string(),
                    info,
                    role: role.to_string(),
                    resources: charge,
                    tasks: BTreeSet::new(),
                });
                e.tasks.extend(ids.iter().cloned());
                tracing::info!(framework = %fid, executor = %eid, tasks = ids.len(), "launching a task group");
                for (task, resources) in tasks.into_iter().zip(per_task) {
                    remaining.subtract(&resources);
                    let group = TaskGroupRef { executor_id: eid.clone(), task_ids: ids.clone() };
                    self.start_task(fid, agent, role, task, resources, Some(group));
                }
            }
        }
    }

    /// Mesos' task group validation; returns what the executor is charged (nothing when it
    /// already runs on the agent) and each task's resources.
    fn validate_group(
        &self,
        fid: &str,
        agent: &str,
        executor: &v1::ExecutorInfo,
        tasks: &[v1::TaskInfo],
        available: &Resources,
    ) -> Result<(Resources, Vec<Resources>), String> {
        use v1::executor_info::Type;
        if tasks.is_empty() {
            return Err("Task group cannot be empty".into());
        }
        match executor.r#type.and_then(|t| Type::try_from(t).ok()) {
            Some(Type::Default) => {}
            Some(Type::Custom) => {
                return Err("Custom executors are not supported yet: task groups run under the DEFAULT executor".into());
            }
            _ => return Err("'ExecutorInfo.type' must be set".into()),
        }
        let eid = &executor.executor_id.value;
        validate_id(eid).map_err(|e| format!("Executor ID '{eid}' is invalid: {e}"))?;
        if let Some(f) = &executor.framework_id
            && f.value != fid
        {
            return Err(format!(
                "ExecutorInfo has an invalid FrameworkID (Actual: {} vs Expected: {fid})",
                f.value
            ));
        }
        let fw = &self.frameworks[fid];
        let charge = match fw.executors.get(eid) {
            Some(e) if e.agent_id != agent => {
                return Err(format!("Executor '{eid}' already runs on agent {}", e.agent_id));
            }
            Some(_) => Resources::new(),
            None => {
                let r = Resources::from_mesos(&executor.resources)
                    .map_err(|e| format!("Executor uses invalid resources: {e}"))?;
                let min = Resources::new().with_scalar("cpus", 0.01).with_scalar("mem", 32.0);
                if !r.scalars_only().contains(&min) {
                    return Err(format!(
                        "Executor '{eid}' uses {r}: at least cpus:0.01 and mem:32 are needed"
                    ));
                }
                r
            }
        };
        if !available.contains(&charge) {
            return Err(format!("Executor resources {charge} are more than available {available}"));
        }
        let mut left = available.minus(&charge);
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for t in tasks {
            let id = &t.task_id.value;
            if !seen.insert(id.clone()) {
                return Err(format!("Duplicate task ID in task group: {id}"));
            }
            if let Some(e) = &t.executor
                && e.executor_id.value != *eid
            {
                return Err(format!(
                    "The `ExecutorInfo` of task '{id}' is different from the executor of the task group"
                ));
            }
            let mut plain = t.clone();
            plain.executor = None;
            let r = self
                .validate_task(fid, agent, &plain, &left)
                .map_err(|e| format!("Task '{id}' is invalid: {e}"))?;
            left.subtract(&r);
            out.push(r);
        }
        Ok((charge, out))
    }

    /// Mesos' task validation (the parts that apply to command tasks), with its texts.
    fn validate_task(
        &self,
        fid: &str,
        agent: &str,
        task: &v1::TaskInfo,
        available: &Resources,
    ) -> Result<Resources, String> {
        let fw = &self.frameworks[fid];
        let id = &task.task_id.value;
        validate_id(id)?;
        if fw.tasks.contains_key(id) {
            return Err(format!("Task has duplicate ID: {id}"));
        }
        if fw.unreachable_tasks.contains_key(id) {
            return Err(format!("Task reuses the ID of an unreachable task: {id}"));
        }
        if task.agent_id.value != agent {
            return Err(format!(
                "Task uses invalid agent {} while agent {agent} is expected",
                task.agent_id.value
            ));
        }
        if task.executor.is_some() == task.command.is_some() {
            return Err(
                "Task should have at least one (but not both) of CommandInfo or ExecutorInfo present"
                    .into(),
            );
        }
        if let Some(e) = &task.executor {
            use v1::executor_info::Type;
            if e.r#type.and_then(|t| Type::try_from(t).ok()) == Some(Type::Default) {
                return Err("The DEFAULT executor runs task groups only (LAUNCH_GROUP)".into());
            }
            let eid = &e.executor_id.value;
            validate_id(eid).map_err(|why| format!("Executor ID '{eid}' is invalid: {why}"))?;
            if let Some(f) = &e.framework_id
                && f.value != fid
            {
                return Err(format!(
                    "ExecutorInfo has an invalid FrameworkID (Actual: {} vs Expected: {fid})",
                    f.value
                ));
            }
            if e.command.as_ref().and_then(|c| c.value.as_ref()).is_none() {
                return Err(format!("Executor '{eid}' has no command to run"));
            }
        }
        if let Some(cmd) = &task.command {
            if cmd.shell() && cmd.value.is_none() {
                return Err(
                    "Task's `CommandInfo` is invalid: Shell command of task must be specified"
                        .into(),
                );
            }
            if !cmd.shell() && cmd.value.is_none() {
                return Err(
                    "Task's `CommandInfo` is invalid: Executable of task must be specified".into(),
                );
            }
        }
        if task
            .kill_policy
            .as_ref()
            .and_then(|k| k.grace_period.as_ref())
            .is_some_and(|g| g.nanoseconds < 0)
        {
            return Err("Task's 'kill_policy.grace_period' must be non-negative".into());
        }
        if task.resources.is_empty() {
            return Err("Task uses no resources".into());
        }
        let resources = Resources::from_mesos(&task.resources)
            .map_err(|e| format!("Task uses invalid resources: {e}"))?;
        if resources.is_empty() {
            return Err("Task uses no resources".into());
        }
        for (key, vol) in resources.volumes() {
            if resources.get(key) != available.get(key) {
                return Err(format!(
                    "Task uses persistent volume '{}' partially: a volume is used whole",
                    vol.id
                ));
            }
        }
        if !available.contains(&resources) {
            return Err(format!(
                "Total resources {resources} required by task and its executor is more than available {available}"
            ));
        }
        Ok(resources)
    }

    fn kill(
        &mut self,
        fid: &str,
        task_id: &str,
        agent_id: Option<String>,
        policy: Option<v1::KillPolicy>,
    ) {
        let fw = &self.frameworks[fid];
        if let Some(task) = fw.tasks.get(task_id) {
            if is_terminal(task.state) {
                return;
            }
            let grace = policy
                .or_else(|| task.info().and_then(|i| i.kill_policy))
                .and_then(|k| k.grace_period)
                .map(|d| d.nanoseconds.max(0) as u64);
            let agent = task.agent_id.clone();
            self.send_agent(
                &agent,
                MasterMessage::KillTask {
                    framework_id: fid.to_string(),
                    task_id: task_id.to_string(),
                    grace_period_ns: grace,
                },
            );
            return;
        }
        if fw.unreachable_tasks.contains_key(task_id) {
            tracing::info!(framework = %fid, task = %task_id, "cannot kill a task on an unreachable agent");
            return;
        }
        // Unknown task: answer as explicit reconciliation does.
        self.reconcile(fid, vec![(task_id.to_string(), agent_id)]);
    }

    fn acknowledge(&mut self, fid: &str, agent_id: &str, task_id: &str, uuid: &[u8]) {
        let Ok(uuid16) = <[u8; 16]>::try_from(uuid) else { return };
        let fw = self.frameworks.get_mut(fid).expect("checked by call()");
        let matches = fw.tasks.get(task_id).is_some_and(|t| t.latest_uuid.as_deref() == Some(uuid));
        if matches {
            self.metrics.valid_status_update_acknowledgements += 1;
            let terminal = fw.tasks.get(task_id).is_some_and(|t| is_terminal(t.state));
            if terminal && let Some(task) = fw.tasks.remove(task_id) {
                let agent = task.agent_id.clone();
                if let Some(a) = self.agents.get_mut(&agent) {
                    a.tasks.remove(&(fid.to_string(), task_id.to_string()));
                }
                fw.completed_tasks.push_back(task);
                if fw.completed_tasks.len() > self.config.max_completed_tasks_per_framework {
                    fw.completed_tasks.pop_front();
                }
                self.check_drained(&agent);
            }
        } else {
            self.metrics.invalid_status_update_acknowledgements += 1;
        }
        // The agent matches the uuid itself; forward whatever the scheduler acknowledged.
        self.send_agent(
            agent_id,
            MasterMessage::StatusAck {
                framework_id: fid.to_string(),
                task_id: task_id.to_string(),
                uuid: uuid16,
            },
        );
    }

    /// Implicit (`tasks` empty) or explicit reconciliation, answered as Mesos does.
    /// RECONCILE_OPERATIONS: no offer operation with feedback exists yet, so implicit
    /// reconciliation has nothing to send, and every operation asked about explicitly gets an
    /// UPDATE_OPERATION_STATUS: OPERATION_UNREACHABLE on an unreachable agent, else
    /// OPERATION_UNKNOWN (as Mesos answers for operations it does not know). No uuid: nothing
    /// to acknowledge.
    fn reconcile_operations(&mut self, fid: &str, r: call::ReconcileOperations) {
        use v1::OperationState as S;
        for op in r.operations {
            let agent = op.agent_id.as_ref().and_then(|a| self.agents.get(&a.value));
            let (state, message) = match agent {
                Some(a) if a.state == super::AgentState::Unreachable => {
                    (S::OperationUnreachable, "Reconciliation: Agent is unreachable")
                }
                _ => (S::OperationUnknown, "Reconciliation: Operation is unknown"),
            };
            let status = v1::OperationStatus {
                operation_id: Some(op.operation_id),
                state: state as i32,
                message: Some(message.into()),
                agent_id: op.agent_id,
                resource_provider_id: op.resource_provider_id,
                ..Default::default()
            };
            let event = v1::scheduler::Event {
                r#type: Some(v1::scheduler::event::Type::UpdateOperationStatus as i32),
                update_operation_status: Some(v1::scheduler::event::UpdateOperationStatus {
                    status,
                }),
                ..Default::default()
            };
            self.send_event(fid, event);
        }
    }

    fn reconcile(&mut self, fid: &str, tasks: Vec<(String, Option<String>)>) {
        use v1::task_status::Reason::Reconciliation as R;
        let fw = &self.frameworks[fid];
        let mut out = Vec::new();
        let latest = |t: &Task| {
            (t.state, "Reconciliation: Latest task state".to_string(), Some(t.agent_id.clone()))
        };
        if tasks.is_empty() {
            for t in fw.tasks.values().chain(fw.unreachable_tasks.values()) {
                out.push((t.id.clone(), latest(t)));
            }
        } else {
            for (tid, agent) in tasks {
                if let Some(t) = fw.tasks.get(&tid).or_else(|| fw.unreachable_tasks.get(&tid)) {
                    out.push((tid, latest(t)));
                    continue;
                }
                // After a restart, an agent the registry lists may still hold the task: no
                // answer until it re-registers or its time runs out (as Mesos).
                if agent.as_ref().map_or(self.recovering(), |a| self.is_recovered(a)) {
                    tracing::debug!(framework = %fid, task = %tid, "not reconciling while agents may re-register");
                    continue;
                }
                let answer = match agent.as_ref().and_then(|a| self.agents.get(a)) {
                    Some(a) if a.state == super::AgentState::Unreachable => (
                        fw.lost(v1::TaskState::TaskUnreachable),
                        "Reconciliation: Task is unreachable".to_string(),
                        agent.clone(),
                    ),
                    Some(_) => (
                        fw.lost(v1::TaskState::TaskGone),
                        "Reconciliation: Task is unknown to the agent".to_string(),
                        agent.clone(),
                    ),
                    None => (
                        fw.lost(v1::TaskState::TaskUnknown),
                        "Reconciliation: Task is unknown".to_string(),
                        agent.clone(),
                    ),
                };
                out.push((tid, answer));
            }
        }
        for (tid, (state, message, agent)) in out {
            let status = master_update(&tid, state, R, &message, agent.as_deref(), self.now);
            self.send_event(fid, update_event(status));
        }
    }
}
