//! The v1 operator API (`/api/v1`) as inputs and outputs of the core: the views the
//! synchronous calls answer with (GET_STATE, GET_AGENTS, GET_FRAMEWORKS, GET_TASKS, GET_ROLES,
//! GET_WEIGHTS, GET_MASTER, ...), the calls that change the cluster (UPDATE_WEIGHTS, TEARDOWN,
//! MARK_AGENT_GONE, DEACTIVATE_AGENT, REACTIVATE_AGENT, DRAIN_AGENT), and the operator event
//! stream (SUBSCRIBE: SUBSCRIBED, then TASK_ADDED / TASK_UPDATED, AGENT_ADDED / AGENT_REMOVED,
//! FRAMEWORK_ADDED / UPDATED / REMOVED as they happen).
//!
//! Calls answered outside the core (GET_HEALTH, GET_FLAGS, GET_VERSION, GET_METRICS and the
//! logging level) live in the shell, which owns those facts. Events are built only while some
//! operator is subscribed, so an unwatched master pays nothing for them.

use std::time::Duration;

use corral_wire::mesos::v1::master::{self as op, call, event, response};
use corral_wire::mesos::v1::{self, AgentId, FrameworkId, quota};
use corral_wire::mesos::{IdExt as _, is_terminal, validate_role};
use corral_wire::proto::MasterMessage;
use corral_wire::resources::{Conversion, Key, Resources, Scalar, Value};

use super::{
    Agent, AgentState, CallError, Command, Framework, Master, StreamId, Task, Time, update_event,
};

/// How an operator call succeeded.
#[derive(Debug, Clone, PartialEq)]
pub enum OperatorResponse {
    /// 200 with this body.
    Body(Box<op::Response>),
    /// 200 with an empty body.
    Ok,
    /// 202 with an empty body.
    Accepted,
}

/// An agent's draining state, as DRAIN_AGENT set it.
#[derive(Debug, Clone, PartialEq)]
pub struct Drain {
    pub state: v1::DrainState,
    pub max_grace_period: Option<Duration>,
    pub mark_gone: bool,
}

/// Mesos' `validation::master::call::validate` (the shell answers 400 "Failed to validate
/// master::Call: <text>").
#[allow(deprecated)]
pub fn validate_operator_call(c: &op::Call) -> Result<call::Type, String> {
    let Some(t) = c.r#type else { return Err("Expecting 'type' to be present".into()) };
    let t = call::Type::try_from(t).unwrap_or(call::Type::Unknown);
    let need = |present: bool, name: &str| {
        if present { Ok(t) } else { Err(format!("Expecting '{name}' to be present")) }
    };
    use call::Type as T;
    match t {
        T::GetMetrics => need(c.get_metrics.is_some(), "get_metrics"),
        T::SetLoggingLevel => need(c.set_logging_level.is_some(), "set_logging_level"),
        T::ListFiles => need(c.list_files.is_some(), "list_files"),
        T::ReadFile => need(c.read_file.is_some(), "read_file"),
        T::UpdateWeights => need(c.update_weights.is_some(), "update_weights"),
        T::ReserveResources => need(c.reserve_resources.is_some(), "reserve_resources"),
        T::UnreserveResources => need(c.unreserve_resources.is_some(), "unreserve_resources"),
        T::CreateVolumes => need(c.create_volumes.is_some(), "create_volumes"),
        T::DestroyVolumes => need(c.destroy_volumes.is_some(), "destroy_volumes"),
        T::GrowVolume => need(c.grow_volume.is_some(), "grow_volume"),
        T::ShrinkVolume => need(c.shrink_volume.is_some(), "shrink_volume"),
        T::UpdateMaintenanceSchedule => {
            need(c.update_maintenance_schedule.is_some(), "update_maintenance_schedule")
        }
        T::StartMaintenance => need(c.start_maintenance.is_some(), "start_maintenance"),
        T::StopMaintenance => need(c.stop_maintenance.is_some(), "stop_maintenance"),
        T::DrainAgent => need(c.drain_agent.is_some(), "drain_agent"),
        T::DeactivateAgent => need(c.deactivate_agent.is_some(), "deactivate_agent"),
        T::ReactivateAgent => need(c.reactivate_agent.is_some(), "reactivate_agent"),
        T::UpdateQuota => need(c.update_quota.is_some(), "update_quota"),
        T::SetQuota => need(c.set_quota.is_some(), "set_quota"),
        T::RemoveQuota => need(c.remove_quota.is_some(), "remove_quota"),
        T::Teardown => need(c.teardown.is_some(), "teardown"),
        T::MarkAgentGone => need(c.mark_agent_gone.is_some(), "mark_agent_gone"),
        _ => Ok(t),
    }
}

fn time_info(t: Time) -> v1::TimeInfo {
    v1::TimeInfo { nanoseconds: t.0 as i64 }
}

/// A response of type `t` with one member set by `fill`.
fn response(t: response::Type, fill: impl FnOnce(&mut op::Response)) -> op::Response {
    let mut r = op::Response { r#type: Some(t as i32), ..Default::default() };
    fill(&mut r);
    r
}

/// Capabilities every Corral agent has (what Mesos 1.11 agents report that applies here).
fn agent_capabilities() -> Vec<v1::agent_info::Capability> {
    use v1::agent_info::capability::Type as C;
    [C::MultiRole, C::HierarchicalRole, C::AgentDraining]
        .into_iter()
        .map(|t| v1::agent_info::Capability { r#type: Some(t as i32) })
        .collect()
}

impl Master {
    // -- views ----------------------------------------------------------------------------------

    /// What the agent's live tasks hold, with their allocation roles.
    fn agent_allocated(&self, a: &Agent) -> Vec<v1::Resource> {
        let mut out = Vec::new();
        for (fid, tid) in &a.tasks {
            if let Some(t) = self.frameworks.get(fid).and_then(|f| f.tasks.get(tid))
                && !is_terminal(t.state)
            {
                out.extend(t.resources.to_mesos(Some(&t.role)));
            }
        }
        out
    }

    /// `Response.GetAgents.Agent`.
    pub fn agent_proto(&self, a: &Agent) -> response::get_agents::Agent {
        let mut offered = Vec::new();
        for o in a.offers.iter().filter_map(|id| self.offers.get(id)) {
            offered.extend(o.resources.to_mesos(Some(&o.role)));
        }
        response::get_agents::Agent {
            agent_info: a.agent_info(),
            active: a.state == AgentState::Connected && !a.deactivated,
            deactivated: Some(a.deactivated),
            version: corral_wire::MESOS_COMPAT_VERSION.to_string(),
            pid: Some(a.pid()),
            registered_time: Some(time_info(a.registered_time)),
            reregistered_time: a.reregistered_time.map(time_info),
            total_resources: a.total().to_mesos(None),
            allocated_resources: self.agent_allocated(a),
            offered_resources: offered,
            capabilities: agent_capabilities(),
            resource_providers: Vec::new(),
            drain_info: a.drain.as_ref().map(|d| v1::DrainInfo {
                state: d.state as i32,
                config: v1::DrainConfig {
                    max_grace_period: d
                        .max_grace_period
                        .map(|g| v1::DurationInfo { nanoseconds: g.as_nanos() as i64 }),
                    mark_gone: Some(d.mark_gone),
                },
            }),
            estimated_drain_start_time: None,
        }
    }

    /// `Response.GetFrameworks.Framework`.
    pub fn framework_proto(&self, f: &Framework) -> response::get_frameworks::Framework {
        let offers: Vec<v1::Offer> = f
            .offers
            .iter()
            .filter_map(|id| self.offers.get(id))
            .map(|o| self.offer_proto(o))
            .collect();
        let offered = offers.iter().flat_map(|o| o.resources.clone()).collect();
        let allocated = f
            .tasks
            .values()
            .filter(|t| !is_terminal(t.state))
            .flat_map(|t| t.resources.to_mesos(Some(&t.role)))
            .collect();
        response::get_frameworks::Framework {
            framework_info: f.info.clone(),
            active: f.connected(),
            connected: f.connected(),
            recovered: f.recovered,
            registered_time: f.registered_time.map(time_info),
            reregistered_time: f.reregistered_time.map(time_info),
            unregistered_time: f.unregistered_time.map(time_info),
            offers,
            inverse_offers: Vec::new(),
            allocated_resources: allocated,
            offered_resources: offered,
            offer_constraints: None,
        }
    }

    /// GET_AGENTS: registered agents (connected or waiting to re-register), as Mesos lists
    /// `slaves.registered`.
    pub fn get_agents(&self) -> response::GetAgents {
        response::GetAgents {
            agents: super::by_id(&self.agents)
                .filter(|a| a.state != AgentState::Unreachable)
                .map(|a| self.agent_proto(a))
                .collect(),
            recovered_agents: self.recovered_agents().collect(),
        }
    }

    /// GET_FRAMEWORKS.
    pub fn get_frameworks(&self) -> response::GetFrameworks {
        #[allow(deprecated)]
        response::GetFrameworks {
            frameworks: super::by_id(&self.frameworks).map(|f| self.framework_proto(f)).collect(),
            completed_frameworks: self
                .completed_frameworks
                .iter()
                .map(|f| self.framework_proto(f))
                .collect(),
            recovered_frameworks: Vec::new(),
        }
    }

    /// GET_EXECUTORS: the task groups' executors (command tasks run under the agent's
    /// built-in command executor, which Mesos does not list either).
    pub fn get_executors(&self) -> response::GetExecutors {
        #[allow(deprecated)]
        response::GetExecutors {
            executors: self
                .frameworks
                .values()
                .flat_map(|f| f.executors.values())
                .map(|e| response::get_executors::Executor {
                    executor_info: e.info.clone(),
                    agent_id: AgentId::from_str(&e.agent_id),
                })
                .collect(),
            orphan_executors: Vec::new(),
        }
    }

    /// GET_TASKS: live, unreachable and completed tasks of every framework.
    pub fn get_tasks(&self) -> response::GetTasks {
        let mut out = response::GetTasks::default();
        for f in super::by_id(&self.frameworks).chain(self.completed_frameworks.iter()) {
            out.tasks.extend(super::by_id(&f.tasks).map(Task::to_mesos));
            out.unreachable_tasks.extend(super::by_id(&f.unreachable_tasks).map(Task::to_mesos));
            out.completed_tasks.extend(f.completed_tasks.iter().map(Task::to_mesos));
        }
        out
    }

    /// GET_STATE.
    pub fn get_state(&self) -> response::GetState {
        response::GetState {
            get_tasks: Some(self.get_tasks()),
            get_executors: Some(self.get_executors()),
            get_frameworks: Some(self.get_frameworks()),
            get_agents: Some(self.get_agents()),
        }
    }

    /// Role weights: configured (`--weights`) and updated (UPDATE_WEIGHTS).
    pub fn weights(&self) -> &std::collections::BTreeMap<String, f64> {
        &self.weights
    }

    /// GET_ROLES: every role with frameworks or a weight, with what it holds.
    pub fn get_roles(&self) -> response::GetRoles {
        let mut roles: std::collections::BTreeMap<String, v1::Role> = Default::default();
        for (name, weight, allocated, frameworks) in self.allocator.roles() {
            roles.insert(
                name.to_string(),
                v1::Role {
                    name: name.to_string(),
                    weight,
                    frameworks: frameworks.iter().map(FrameworkId::from_str).collect(),
                    resources: allocated.to_mesos(Some(name)),
                },
            );
        }
        for (name, weight) in &self.weights {
            roles.entry(name.clone()).or_insert_with(|| v1::Role {
                name: name.clone(),
                weight: *weight,
                ..Default::default()
            });
        }
        for name in self.allocator.quotas().keys() {
            roles.entry(name.clone()).or_insert_with(|| v1::Role {
                name: name.clone(),
                weight: self.allocator.weight(name),
                ..Default::default()
            });
        }
        response::GetRoles { roles: roles.into_values().collect() }
    }

    /// GET_WEIGHTS.
    pub fn get_weights(&self) -> response::GetWeights {
        response::GetWeights {
            weight_infos: self
                .weights
                .iter()
                .map(|(r, w)| v1::WeightInfo { weight: *w, role: Some(r.clone()) })
                .collect(),
        }
    }

    /// GET_MASTER.
    pub fn get_master(&self) -> response::GetMaster {
        response::GetMaster {
            master_info: Some(self.identity.master_info()),
            start_time: Some(self.start_time.as_secs_f64()),
            elected_time: Some(self.start_time.as_secs_f64()),
        }
    }

    // -- calls ----------------------------------------------------------------------------------

    /// An operator call the core answers, already validated with [`validate_operator_call`].
    pub fn operator_call(&mut self, now: Time, c: op::Call) -> Result<OperatorResponse, CallError> {
        self.now = now;
        self.allocator.set_now(now);
        use OperatorResponse::{Body, Ok};
        use call::Type as T;
        use response::Type as R;
        let t = c.r#type.and_then(|t| T::try_from(t).ok()).unwrap_or(T::Unknown);
        let body = |r: op::Response| Result::Ok(Body(Box::new(r)));
        // A GET answered by the view of the same name, in the response member of that name.
        macro_rules! view {
            ($name:ident, $variant:ident) => {{
                let v = self.$name();
                body(response(R::$variant, |r| r.$name = Some(v)))
            }};
        }
        match t {
            T::GetState => view!(get_state, GetState),
            T::GetAgents => view!(get_agents, GetAgents),
            T::GetFrameworks => view!(get_frameworks, GetFrameworks),
            T::GetExecutors => view!(get_executors, GetExecutors),
            T::GetOperations => body(response(R::GetOperations, |r| {
                r.get_operations = Some(response::GetOperations::default())
            })),
            T::GetTasks => view!(get_tasks, GetTasks),
            T::GetRoles => view!(get_roles, GetRoles),
            T::GetWeights => view!(get_weights, GetWeights),
            T::GetMaster => view!(get_master, GetMaster),
            T::UpdateWeights => {
                self.update_weights(c.update_weights.unwrap_or_default().weight_infos)?;
                Result::Ok(Ok)
            }
            T::Teardown => {
                let fid = c.teardown.unwrap_or_default().framework_id.value;
                if !self.frameworks.contains_key(&fid) {
                    return Err(CallError::BadRequest(format!("No framework found with ID {fid}")));
                }
                tracing::info!(framework = %fid, "framework torn down by the operator");
                self.remove_framework(&fid);
                Result::Ok(Ok)
            }
            T::MarkAgentGone => {
                let id = c.mark_agent_gone.unwrap_or_default().agent_id.value;
                self.mark_agent_gone(&id)?;
                Result::Ok(Ok)
            }
            T::DeactivateAgent => {
                let id = c.deactivate_agent.unwrap_or_default().agent_id.value;
                self.known_agent(&id)?;
                self.deactivate_agent(&id);
                Result::Ok(Ok)
            }
            T::ReactivateAgent => {
                let id = c.reactivate_agent.unwrap_or_default().agent_id.value;
                self.reactivate_agent(&id)?;
                Result::Ok(Ok)
            }
            T::DrainAgent => {
                let d = c.drain_agent.unwrap_or_default();
                let grace = match d.max_grace_period {
                    None => None,
                    Some(g) if g.seconds < 0 || g.nanos < 0 => {
                        return Err(CallError::BadRequest(
                            "'max_grace_period' must be non-negative".into(),
                        ));
                    }
                    Some(g) => Some(
                        Duration::new(g.seconds as u64, 0) + Duration::from_nanos(g.nanos as u64),
                    ),
                };
                self.drain_agent(&d.agent_id.value, grace, d.mark_gone.unwrap_or(false))?;
                Result::Ok(Ok)
            }
            T::Subscribe => Err(CallError::BadRequest("SUBSCRIBE opens a stream".into())),
            T::ReserveResources | T::UnreserveResources | T::CreateVolumes | T::DestroyVolumes => {
                let (agent, conv) = operator_conversion(c).map_err(CallError::BadRequest)?;
                self.convert_unallocated(&agent, &conv)?;
                Result::Ok(OperatorResponse::Accepted)
            }
            T::GrowVolume | T::ShrinkVolume => Err(CallError::NotImplemented),
            T::GetQuota => view!(get_quota, GetQuota),
            T::UpdateQuota => {
                let u = c.update_quota.unwrap_or_default();
                self.update_quota(u.force.unwrap_or(false), u.quota_configs)?;
                Result::Ok(Ok)
            }
            #[allow(deprecated)]
            T::SetQuota => {
                // Quota v1: the guarantee is also the limit.
                let q = c.set_quota.unwrap_or_default().quota_request;
                let scalars = quota_map(&q.guarantee).map_err(CallError::BadRequest)?;
                let config = quota::QuotaConfig {
                    role: q.role.unwrap_or_default(),
                    guarantees: scalars.clone(),
                    limits: scalars,
                };
                self.update_quota(q.force.unwrap_or(false), vec![config])?;
                Result::Ok(Ok)
            }
            #[allow(deprecated)]
            T::RemoveQuota => {
                let role = c.remove_quota.unwrap_or_default().role;
                let config = quota::QuotaConfig { role, ..Default::default() };
                self.update_quota(true, vec![config])?;
                Result::Ok(Ok)
            }
            _ => Err(CallError::NotImplemented),
        }
    }

    /// A RESERVE, UNRESERVE, CREATE or DESTROY inside an ACCEPT: applied to what remains of
    /// the offers, to the allocation (the converted resources stay with the framework until
    /// it uses or declines them), to the agent's total, and sent to the agent.
    pub(super) fn convert_offered(
        &mut self,
        fid: &str,
        agent: &str,
        role: &str,
        conv: &Conversion,
        remaining: &mut Resources,
    ) -> Result<(), String> {
        self.check_conversion(Some(fid), role, conv)?;
        let converted = remaining.apply(conv).map_err(|e| e.to_string())?;
        self.allocator.convert(agent, Some((fid, role)), conv).map_err(|e| e.to_string())?;
        *remaining = converted;
        self.converted(agent, conv);
        Ok(())
    }

    /// The operator's RESERVE_RESOURCES, UNRESERVE_RESOURCES, CREATE_VOLUMES and
    /// DESTROY_VOLUMES: applied to an agent's unallocated resources, rescinding its
    /// outstanding offers first if they hold what is needed (409 if still short).
    fn convert_unallocated(&mut self, agent: &str, conv: &Conversion) -> Result<(), CallError> {
        let a = self.known_agent(agent)?;
        if a.state != AgentState::Connected {
            return Err(CallError::Conflict(format!("Agent {agent} is not connected")));
        }
        // Operator reservations name their role; the allocation role check does not apply.
        for (key, _) in conv.resources().iter() {
            if let Some(role) = key.role() {
                validate_role(role)
                    .map_err(|e| CallError::BadRequest(format!("Invalid role: {e}")))?;
            }
        }
        let (consumed, _) =
            conv.consumed_and_converted().map_err(|e| CallError::BadRequest(e.to_string()))?;
        let free =
            |m: &Master| m.allocator.agent(agent).map(|(t, a)| t.minus(a)).unwrap_or_default();
        if !free(self).contains(&consumed) {
            self.rescind_agent_offers(agent);
        }
        if !free(self).contains(&consumed) {
            return Err(CallError::Conflict(format!(
                "Invalid {} Operation: the agent's unallocated resources {} do not contain {}",
                conv.name(),
                free(self),
                consumed
            )));
        }
        self.allocator
            .convert(agent, None, conv)
            .map_err(|e| CallError::Conflict(e.to_string()))?;
        self.converted(agent, conv);
        Ok(())
    }

    /// Mesos' checks on who may convert what: reservations only for the offers' allocation
    /// role, by the framework's own principal.
    fn check_conversion(
        &self,
        fid: Option<&str>,
        role: &str,
        conv: &Conversion,
    ) -> Result<(), String> {
        let principal =
            fid.and_then(|f| self.frameworks.get(f)).and_then(|f| f.info.principal.clone());
        for (key, _) in conv.resources().iter() {
            let Some(r) = &key.reservation else { continue };
            if r.role != role {
                return Err(format!(
                    "Invalid {} Operation: the reserved role '{}' is not the offers' allocation role '{role}'",
                    conv.name(),
                    r.role
                ));
            }
            if matches!(conv, Conversion::Reserve(_))
                && let (Some(p), Some(want)) = (&r.principal, &principal)
                && p != want
            {
                return Err(format!(
                    "Invalid RESERVE Operation: the reservation's principal '{p}' is not the framework's principal '{want}'"
                ));
            }
        }
        Ok(())
    }

    /// The master's view of the agent follows a conversion, and the agent is told.
    fn converted(&mut self, agent: &str, conv: &Conversion) {
        if let Some(a) = self.agents.get_mut(agent) {
            match a.registration.resources.apply(conv) {
                Result::Ok(total) => a.registration.resources = total,
                Err(e) => {
                    tracing::error!(agent, error = %e, "agent total out of step with the allocator")
                }
            }
        }
        tracing::info!(agent, operation = conv.name(), resources = %conv.resources(), "resources converted");
        self.send_agent(agent, MasterMessage::Convert(conv.clone()));
        self.emit_agent_added(agent);
    }

    /// UPDATE_OPERATION_STATUS for an offer operation that carried an id: OPERATION_FINISHED,
    /// or OPERATION_ERROR with the reason. Master-generated: no uuid, nothing to acknowledge.
    pub(super) fn operation_feedback(
        &mut self,
        fid: &str,
        agent: &str,
        id: v1::OperationId,
        result: Result<(), String>,
    ) {
        let (state, message) = match result {
            Result::Ok(()) => (v1::OperationState::OperationFinished, None),
            Err(e) => (v1::OperationState::OperationError, Some(e)),
        };
        let status = v1::OperationStatus {
            operation_id: Some(id),
            state: state as i32,
            message,
            agent_id: Some(AgentId::from_str(agent)),
            ..Default::default()
        };
        let event = v1::scheduler::Event {
            r#type: Some(v1::scheduler::event::Type::UpdateOperationStatus as i32),
            update_operation_status: Some(v1::scheduler::event::UpdateOperationStatus { status }),
            ..Default::default()
        };
        self.send_event(fid, event);
    }

    /// GET_QUOTA: every role's quota, as configs and (deprecated) infos.
    pub fn get_quota(&self) -> response::GetQuota {
        let mut status = quota::QuotaStatus::default();
        for (role, q) in self.allocator.quotas() {
            let map = |r: &Resources| {
                r.scalars()
                    .map(|(n, v)| (n.to_string(), v1::value::Scalar { value: v.as_f64() }))
                    .collect()
            };
            status.configs.push(quota::QuotaConfig {
                role: role.clone(),
                guarantees: map(&q.guarantees),
                limits: map(&q.limits),
            });
            #[allow(deprecated)]
            status.infos.push(quota::QuotaInfo {
                role: Some(role.clone()),
                principal: None,
                guarantee: q.guarantees.to_mesos(None),
            });
        }
        response::GetQuota { status }
    }

    /// UPDATE_QUOTA (Mesos' quota v2): validated as a whole, then applied; a config with no
    /// guarantees and no limits resets its role. Without `force`, the guarantees together
    /// may not exceed what the cluster has.
    fn update_quota(
        &mut self,
        force: bool,
        configs: Vec<quota::QuotaConfig>,
    ) -> Result<(), CallError> {
        let bad = |m: String| CallError::BadRequest(m);
        let mut seen = std::collections::BTreeSet::new();
        let mut parsed = Vec::new();
        for c in configs {
            validate_role(&c.role).map_err(|e| bad(format!("Invalid role '{}': {e}", c.role)))?;
            if c.role == "*" {
                return Err(bad(
                    "Invalid QuotaConfig: setting quota for the default '*' role is not supported"
                        .into(),
                ));
            }
            if !seen.insert(c.role.clone()) {
                return Err(bad(format!(
                    "Invalid QuotaConfig: duplicate config for role '{}'",
                    c.role
                )));
            }
            let to_resources = |m: &std::collections::HashMap<String, v1::value::Scalar>| {
                let mut r = Resources::new();
                for (name, v) in m {
                    if !(v.value.is_finite() && v.value >= 0.0) {
                        return Err(bad(format!(
                            "Invalid QuotaConfig for role '{}': '{name}' has an invalid value {}",
                            c.role, v.value
                        )));
                    }
                    r.insert(Key::unreserved(name), Value::Scalar(Scalar::from_f64(v.value)));
                }
                Result::Ok(r)
            };
            let guarantees = to_resources(&c.guarantees)?;
            let limits = to_resources(&c.limits)?;
            for (key, g) in guarantees.iter() {
                if let Some(l) = limits.get(key)
                    && let (Value::Scalar(g), Value::Scalar(l)) = (g, l)
                    && g > l
                {
                    return Err(bad(format!(
                        "Invalid QuotaConfig for role '{}': the guarantee of '{}' ({g}) is greater than its limit ({l})",
                        c.role, key.name
                    )));
                }
            }
            parsed.push((c.role, super::allocator::Quota { guarantees, limits }));
        }
        if !force {
            let mut all: std::collections::BTreeMap<String, Resources> = self
                .allocator
                .quotas()
                .iter()
                .map(|(r, q)| (r.clone(), q.guarantees.clone()))
                .collect();
            for (role, q) in &parsed {
                all.insert(role.clone(), q.guarantees.clone());
            }
            let mut sum = Resources::new();
            for g in all.values() {
                sum.add(g);
            }
            let total = self.allocator.total();
            if !total.contains(&sum) {
                return Err(bad(format!(
                    "Invalid QuotaConfig: total quota guarantees '{sum}' exceed cluster capacity '{total}' (use 'force' to set them anyway)"
                )));
            }
        }
        for (role, q) in parsed {
            tracing::info!(%role, guarantees = %q.guarantees, limits = %q.limits, "quota updated");
            self.allocator.set_quota(&role, q);
        }
        self.persist();
        Ok(())
    }

    fn update_weights(&mut self, infos: Vec<v1::WeightInfo>) -> Result<(), CallError> {
        let mut seen = std::collections::BTreeSet::new();
        for w in &infos {
            let Some(role) = &w.role else {
                return Err(CallError::BadRequest("Role must be set in every weight".into()));
            };
            validate_role(role).map_err(|e| CallError::BadRequest(format!("Invalid role: {e}")))?;
            if !(w.weight.is_finite() && w.weight > 0.0) {
                return Err(CallError::BadRequest(format!(
                    "Invalid weight '{}' for role '{role}': weights must be positive",
                    w.weight
                )));
            }
            if !seen.insert(role.clone()) {
                return Err(CallError::BadRequest(format!("Duplicate weight for role '{role}'")));
            }
        }
        for w in infos {
            let role = w.role.unwrap_or_default();
            tracing::info!(%role, weight = w.weight, "role weight updated");
            self.allocator.set_weight(&role, w.weight);
            self.weights.insert(role, w.weight);
        }
        self.persist();
        Ok(())
    }

    fn known_agent(&self, id: &str) -> Result<&Agent, CallError> {
        self.agents.get(id).ok_or_else(|| CallError::BadRequest("Unknown agent".into()))
    }

    /// Stops offering an agent's resources (its tasks keep running).
    fn deactivate_agent(&mut self, id: &str) {
        let Some(a) = self.agents.get_mut(id) else { return };
        if !a.deactivated {
            tracing::info!(agent = %id, "agent deactivated");
        }
        a.deactivated = true;
        self.allocator.deactivate_agent(id);
        self.rescind_agent_offers(id);
        self.emit_agent_added(id);
        self.persist();
    }

    fn reactivate_agent(&mut self, id: &str) -> Result<(), CallError> {
        let a = self.known_agent(id)?;
        if !a.deactivated {
            return Err(CallError::BadRequest(format!("Agent {id} is not deactivated")));
        }
        let connected = a.state == AgentState::Connected;
        let a = self.agents.get_mut(id).expect("checked above");
        a.deactivated = false;
        a.drain = None;
        tracing::info!(agent = %id, "agent reactivated");
        if connected {
            self.allocator.activate_agent(id);
        }
        self.emit_agent_added(id);
        self.persist();
        Ok(())
    }

    fn drain_agent(
        &mut self,
        id: &str,
        max_grace_period: Option<Duration>,
        mark_gone: bool,
    ) -> Result<(), CallError> {
        let a = self.known_agent(id)?;
        if a.drain.as_ref().is_some_and(|d| d.state == v1::DrainState::Drained) && !mark_gone {
            return Ok(());
        }
        tracing::info!(agent = %id, ?max_grace_period, mark_gone, "draining agent");
        let tasks: Vec<(String, String)> = a.tasks.iter().cloned().collect();
        self.agents.get_mut(id).expect("checked above").drain =
            Some(Drain { state: v1::DrainState::Draining, max_grace_period, mark_gone });
        self.deactivate_agent(id);
        for (fid, tid) in tasks {
            let Some(task) = self.frameworks.get(&fid).and_then(|f| f.tasks.get(&tid)) else {
                continue;
            };
            if is_terminal(task.state) {
                continue;
            }
            let policy = task
                .info()
                .as_ref()
                .and_then(|i| i.kill_policy.as_ref())
                .and_then(|k| k.grace_period.as_ref())
                .map(|d| Duration::from_nanos(d.nanoseconds.max(0) as u64));
            let grace = match (policy, max_grace_period) {
                (Some(p), Some(m)) => Some(p.min(m)),
                (p, m) => m.or(p),
            };
            self.send_agent(
                id,
                MasterMessage::KillTask {
                    framework_id: fid,
                    task_id: tid,
                    grace_period_ns: grace.map(|g| g.as_nanos() as u64),
                },
            );
        }
        self.check_drained(id);
        Ok(())
    }

    /// A draining agent whose every task is terminal and acknowledged is DRAINED (and gone,
    /// if the drain asked for it).
    pub(super) fn check_drained(&mut self, id: &str) {
        let Some(a) = self.agents.get(id) else { return };
        let Some(drain) = &a.drain else { return };
        if drain.state != v1::DrainState::Draining || !a.tasks.is_empty() {
            return;
        }
        let mark_gone = drain.mark_gone;
        tracing::info!(agent = %id, "agent drained");
        if let Some(d) = self.agents.get_mut(id).and_then(|a| a.drain.as_mut()) {
            d.state = v1::DrainState::Drained;
        }
        self.emit_agent_added(id);
        self.persist();
        if mark_gone {
            let _ = self.mark_agent_gone(id);
        }
    }

    /// MARK_AGENT_GONE: the agent's tasks are gone (TASK_GONE_BY_OPERATOR, or TASK_LOST for
    /// frameworks that are not partition aware), the agent is told to shut down, and it may
    /// never register again.
    fn mark_agent_gone(&mut self, id: &str) -> Result<(), CallError> {
        if self.gone_agents.contains(id) {
            return Ok(());
        }
        let Some(a) = self.agents.get(id) else {
            return Err(CallError::BadRequest(format!("Agent {id} not found")));
        };
        tracing::warn!(agent = %id, "agent marked gone by the operator");
        // First, so that the task transitions below (which may complete a drain that asked
        // for this) do not mark it gone a second time.
        self.gone_agents.insert(id.to_string());
        let tasks: Vec<(String, String)> = a.tasks.iter().cloned().collect();
        let mut unreachable = Vec::new();
        for f in self.frameworks.values() {
            for t in f.unreachable_tasks.values().filter(|t| t.agent_id == id) {
                unreachable.push((f.id.clone(), t.id.clone()));
            }
        }
        let frameworks: std::collections::BTreeSet<String> =
            tasks.iter().map(|(f, _)| f.clone()).collect();
        self.rescind_agent_offers(id);
        for fw in self.frameworks.values_mut() {
            fw.executors.retain(|_, e| e.agent_id != id);
        }
        for (fid, tid) in tasks {
            let Some(state) =
                self.frameworks.get(&fid).map(|f| f.lost(v1::TaskState::TaskGoneByOperator))
            else {
                continue;
            };
            self.master_task_transition(
                &fid,
                &tid,
                state,
                v1::task_status::Reason::AgentRemovedByOperator,
                "Agent has been marked gone",
            );
        }
        for (fid, tid) in unreachable {
            if let Some(f) = self.frameworks.get_mut(&fid)
                && let Some(task) = f.unreachable_tasks.remove(&tid)
            {
                f.tasks.insert(tid.clone(), task);
                let state = f.lost(v1::TaskState::TaskGoneByOperator);
                self.master_task_transition(
                    &fid,
                    &tid,
                    state,
                    v1::task_status::Reason::AgentRemovedByOperator,
                    "Agent has been marked gone",
                );
            }
        }
        for fid in frameworks {
            self.send_agent(id, MasterMessage::ShutdownFramework { framework_id: fid });
        }
        self.send_agent(id, MasterMessage::Refused { reason: "Agent has been marked gone".into() });
        if let Some(mut a) = self.agents.remove(id) {
            if let Some(conn) = a.conn.take() {
                self.conns.remove(&conn);
                self.commands
                    .push_back(Command::CloseAgent { conn, reason: "agent marked gone".into() });
            }
            if a.state != AgentState::Unreachable {
                self.allocator.remove_agent(id);
            }
        }
        self.emit(|_| agent_removed(id));
        self.persist();
        Ok(())
    }

    // -- the event stream -------------------------------------------------------------------------

    /// An operator SUBSCRIBE: `stream` gets SUBSCRIBED (the whole state) and a HEARTBEAT now,
    /// then every event until it closes ([`Master::stream_closed`]).
    pub fn operator_subscribe(&mut self, now: Time, stream: StreamId) {
        self.now = now;
        self.allocator.set_now(now);
        self.operator_streams.insert(stream);
        let state = self.get_state();
        let subscribed = event_of(event::Type::Subscribed, |e| {
            e.subscribed = Some(event::Subscribed {
                get_state: Some(state),
                heartbeat_interval_seconds: Some(self.config.heartbeat_interval.as_secs_f64()),
            })
        });
        self.commands.push_back(Command::OperatorEvent {
            stream: Some(stream),
            event: Box::new(subscribed),
        });
        self.commands.push_back(Command::OperatorEvent {
            stream: Some(stream),
            event: Box::new(operator_heartbeat()),
        });
    }

    /// Queues an event for every operator subscriber (built only if there is one).
    pub(super) fn emit(&mut self, build: impl FnOnce(&Master) -> op::Event) {
        if self.operator_streams.is_empty() {
            return;
        }
        let event = build(self);
        self.commands.push_back(Command::OperatorEvent { stream: None, event: Box::new(event) });
    }

    /// AGENT_ADDED (also sent, as Mesos does, when an agent's activation or drain changes).
    pub(super) fn emit_agent_added(&mut self, id: &str) {
        self.emit(|m| {
            let agent = m.agents.get(id).map(|a| m.agent_proto(a));
            event_of(event::Type::AgentAdded, |e| {
                e.agent_added = agent.map(|agent| event::AgentAdded { agent })
            })
        });
    }

    pub(super) fn emit_task_added(&mut self, fid: &str, tid: &str) {
        self.emit(|m| {
            let task = m.frameworks.get(fid).and_then(|f| f.tasks.get(tid)).map(Task::to_mesos);
            event_of(event::Type::TaskAdded, |e| {
                e.task_added = task.map(|task| event::TaskAdded { task })
            })
        });
    }

    pub(super) fn emit_task_updated(&mut self, fid: &str, status: &v1::TaskStatus) {
        self.emit(|m| {
            let latest = m
                .frameworks
                .get(fid)
                .and_then(|f| {
                    f.tasks
                        .get(&status.task_id.value)
                        .or_else(|| f.unreachable_tasks.get(&status.task_id.value))
                        .or_else(|| {
                            f.completed_tasks.iter().rev().find(|t| t.id == status.task_id.value)
                        })
                })
                .map(|t| t.state as i32)
                .unwrap_or(status.state);
            event_of(event::Type::TaskUpdated, |e| {
                e.task_updated = Some(event::TaskUpdated {
                    framework_id: FrameworkId::from_str(fid),
                    status: status.clone(),
                    state: latest,
                })
            })
        });
    }

    /// FRAMEWORK_ADDED (`added`) or FRAMEWORK_UPDATED.
    pub(super) fn emit_framework(&mut self, fid: &str, added: bool) {
        self.emit(|m| {
            let fw = m.frameworks.get(fid).map(|f| m.framework_proto(f));
            if added {
                event_of(event::Type::FrameworkAdded, |e| {
                    e.framework_added = fw.map(|framework| event::FrameworkAdded { framework })
                })
            } else {
                event_of(event::Type::FrameworkUpdated, |e| {
                    e.framework_updated = fw.map(|framework| event::FrameworkUpdated { framework })
                })
            }
        });
    }

    pub(super) fn emit_framework_removed(&mut self, info: &v1::FrameworkInfo) {
        self.emit(|_| {
            event_of(event::Type::FrameworkRemoved, |e| {
                e.framework_removed = Some(event::FrameworkRemoved { framework_info: info.clone() })
            })
        });
    }

    /// Sends a master-generated update to the framework and the operator stream.
    pub(super) fn send_update(&mut self, fid: &str, status: v1::TaskStatus) {
        self.emit_task_updated(fid, &status);
        self.send_event(fid, update_event(status));
    }
}

/// A quota v1 guarantee (`Resource`s) as the v2 map of scalars.
fn quota_map(
    resources: &[v1::Resource],
) -> Result<std::collections::HashMap<String, v1::value::Scalar>, String> {
    let r = Resources::from_mesos(resources).map_err(|e| e.to_string())?;
    Ok(r.scalars().map(|(n, v)| (n.to_string(), v1::value::Scalar { value: v.as_f64() })).collect())
}

/// The [`Conversion`] an offer operation asks for.
pub(super) fn conversion_of(op: &v1::offer::Operation) -> Result<Conversion, String> {
    use v1::offer::operation::Type as T;
    let t = op.r#type.and_then(|t| T::try_from(t).ok()).unwrap_or(T::Unknown);
    let missing = |name: &str| format!("Expecting '{name}' to be present");
    let parse = |r: &[v1::Resource]| Resources::from_mesos(r).map_err(|e| e.to_string());
    let conv = match t {
        T::Reserve => Conversion::Reserve(parse(
            &op.reserve.as_ref().ok_or_else(|| missing("reserve"))?.resources,
        )?),
        T::Unreserve => Conversion::Unreserve(parse(
            &op.unreserve.as_ref().ok_or_else(|| missing("unreserve"))?.resources,
        )?),
        T::Create => Conversion::Create(parse(
            &op.create.as_ref().ok_or_else(|| missing("create"))?.volumes,
        )?),
        T::Destroy => Conversion::Destroy(parse(
            &op.destroy.as_ref().ok_or_else(|| missing("destroy"))?.volumes,
        )?),
        other => return Err(format!("{} is not a conversion", other.as_str_name())),
    };
    conv.consumed_and_converted().map_err(|e| e.to_string())?;
    Ok(conv)
}

/// The agent and [`Conversion`] of an operator RESERVE_RESOURCES, UNRESERVE_RESOURCES,
/// CREATE_VOLUMES or DESTROY_VOLUMES.
fn operator_conversion(c: op::Call) -> Result<(String, Conversion), String> {
    let parse = |r: &[v1::Resource]| Resources::from_mesos(r).map_err(|e| e.to_string());
    let (agent, conv) = if let Some(r) = c.reserve_resources {
        (r.agent_id.value, Conversion::Reserve(parse(&r.resources)?))
    } else if let Some(r) = c.unreserve_resources {
        (r.agent_id.value, Conversion::Unreserve(parse(&r.resources)?))
    } else if let Some(r) = c.create_volumes {
        (r.agent_id.value, Conversion::Create(parse(&r.volumes)?))
    } else if let Some(r) = c.destroy_volumes {
        (r.agent_id.value, Conversion::Destroy(parse(&r.volumes)?))
    } else {
        return Err("no operation".into());
    };
    Ok((agent, conv))
}

/// An event of type `t` with one member set by `fill`.
fn event_of(t: event::Type, fill: impl FnOnce(&mut op::Event)) -> op::Event {
    let mut e = op::Event { r#type: Some(t as i32), ..Default::default() };
    fill(&mut e);
    e
}

/// AGENT_REMOVED.
pub(super) fn agent_removed(id: &str) -> op::Event {
    event_of(event::Type::AgentRemoved, |e| {
        e.agent_removed = Some(event::AgentRemoved { agent_id: AgentId::from_str(id) })
    })
}

/// The operator stream's HEARTBEAT.
pub fn operator_heartbeat() -> op::Event {
    event_of(event::Type::Heartbeat, |_| {})
}
