//! The master's registry: what must outlive the master process (Mesos' registry) — the agents
//! it admitted, the agents marked gone, operator settings on agents (deactivated, draining),
//! role weights and quotas — as one versioned document.
//!
//! The core owns it: every change that affects it queues a
//! [`Command::Persist`](super::Command::Persist) (at most one pending at a time, so a burst of
//! admissions costs one write) before whatever the change makes the master say (a
//! `Registered` to an agent, a 200 to the operator). The shell answers it by taking
//! [`Master::take_registry`] — the document as of then, which includes every change queued
//! so far — and writing it crash-atomically before it performs the commands after it. At start the shell hands the last document to [`Master::recover`]: agents it lists are
//! *recovered* until they re-register or `agent_reregister_timeout` passes, and while any
//! are, reconciliation does not answer for tasks it cannot know about (as Mesos). With HA, the
//! same document goes into the replicated log.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use corral_wire::mesos::v1;
use corral_wire::resources::{Key, Resources, Scalar, Value};
use serde::{Deserialize, Serialize};

use super::allocator::Quota;
use super::{AgentState, Drain, Master, Time, Timer};

/// The registry document's format version.
pub const REGISTRY_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub version: u32,
    /// Admitted agents by id.
    pub agents: BTreeMap<String, AgentEntry>,
    /// Agents marked gone: refused for good.
    pub gone: BTreeSet<String>,
    pub weights: BTreeMap<String, f64>,
    pub quotas: BTreeMap<String, QuotaEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentEntry {
    pub hostname: String,
    pub port: u16,
    pub deactivated: bool,
    pub drain: Option<DrainEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainEntry {
    /// `DRAINING` or `DRAINED`.
    pub state: String,
    pub max_grace_period_ns: Option<u64>,
    pub mark_gone: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuotaEntry {
    pub guarantees: BTreeMap<String, f64>,
    pub limits: BTreeMap<String, f64>,
}

fn scalars(r: &Resources) -> BTreeMap<String, f64> {
    r.scalars().map(|(n, v)| (n.to_string(), v.as_f64())).collect()
}

fn resources(m: &BTreeMap<String, f64>) -> Resources {
    let mut r = Resources::new();
    for (n, v) in m {
        r.insert(Key::unreserved(n), Value::Scalar(Scalar::from_f64(*v)));
    }
    r
}

fn drain_entry(d: &Drain) -> DrainEntry {
    DrainEntry {
        state: d.state.as_str_name().to_string(),
        max_grace_period_ns: d.max_grace_period.map(|g| g.as_nanos() as u64),
        mark_gone: d.mark_gone,
    }
}

fn drain_of(e: &DrainEntry) -> Drain {
    Drain {
        state: v1::DrainState::from_str_name(&e.state).unwrap_or(v1::DrainState::Draining),
        max_grace_period: e.max_grace_period_ns.map(Duration::from_nanos),
        mark_gone: e.mark_gone,
    }
}

/// An agent the registry lists that has not re-registered with this master yet.
#[derive(Debug, Clone)]
pub struct RecoveredAgent {
    pub entry: AgentEntry,
    pub deadline: Time,
}

impl Master {
    /// The registry as of now.
    pub fn registry(&self) -> Registry {
        let mut agents: BTreeMap<String, AgentEntry> =
            self.recovered_agents.iter().map(|(id, r)| (id.clone(), r.entry.clone())).collect();
        for (id, a) in &self.agents {
            agents.insert(
                id.clone(),
                AgentEntry {
                    hostname: a.registration.hostname.clone(),
                    port: a.registration.http_port,
                    deactivated: a.deactivated,
                    drain: a.drain.as_ref().map(drain_entry),
                },
            );
        }
        Registry {
            version: REGISTRY_VERSION,
            agents,
            gone: self.gone_agents.clone(),
            weights: self.weights.clone(),
            quotas: self
                .allocator
                .quotas()
                .iter()
                .map(|(r, q)| {
                    (
                        r.clone(),
                        QuotaEntry {
                            guarantees: scalars(&q.guarantees),
                            limits: scalars(&q.limits),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The registry changed: it must be written before anything queued after this. O(1): the
    /// document is built when the shell takes it.
    pub(super) fn persist(&mut self) {
        if !self.persist_pending {
            self.persist_pending = true;
            self.commands.push_back(super::Command::Persist);
        }
    }

    /// The document to write for a [`Command::Persist`](super::Command::Persist), or `None`
    /// when nothing changed since the last one taken.
    pub fn take_registry(&mut self) -> Option<Registry> {
        self.persist_pending = false;
        let registry = self.registry();
        if self.persisted.as_ref() == Some(&registry) {
            return None;
        }
        self.persisted = Some(registry.clone());
        Some(registry)
    }

    /// Starts from the registry a previous master persisted.
    pub fn recover(&mut self, now: Time, registry: Registry) {
        self.now = now;
        self.allocator.set_now(now);
        for (role, w) in &registry.weights {
            self.allocator.set_weight(role, *w);
            self.weights.insert(role.clone(), *w);
        }
        for (role, q) in &registry.quotas {
            let quota =
                Quota { guarantees: resources(&q.guarantees), limits: resources(&q.limits) };
            self.allocator.set_quota(role, quota);
        }
        self.gone_agents = registry.gone.clone();
        let deadline = now + self.config.agent_reregister_timeout;
        for (id, entry) in &registry.agents {
            self.recovered_agents
                .insert(id.clone(), RecoveredAgent { entry: entry.clone(), deadline });
        }
        if !registry.agents.is_empty() {
            self.schedule(deadline, Timer::RecoveredAgents);
            tracing::info!(
                agents = registry.agents.len(),
                timeout = ?self.config.agent_reregister_timeout,
                "recovered the registry; waiting for its agents to re-register"
            );
        }
        self.persisted = Some(registry);
    }

    /// An admitted agent re-registered: what the operator set on it carries over.
    pub(super) fn take_recovered(&mut self, id: &str) -> Option<(bool, Option<Drain>)> {
        let r = self.recovered_agents.remove(id)?;
        Some((r.entry.deactivated, r.entry.drain.as_ref().map(drain_of)))
    }

    /// The re-registration window closed: agents that did not come back are forgotten.
    pub(super) fn recovered_agents_expired(&mut self, now: Time) {
        let expired: Vec<String> = self
            .recovered_agents
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            tracing::warn!(agent = %id, "agent did not re-register after the master's restart; removing it");
            self.recovered_agents.remove(id);
        }
        if !expired.is_empty() {
            self.persist();
        }
    }

    /// Whether the registry lists agents that have not re-registered yet.
    pub fn recovering(&self) -> bool {
        !self.recovered_agents.is_empty()
    }

    /// Agents listed by the registry that have not re-registered (GET_AGENTS'
    /// `recovered_agents`, `/slaves`' `recovered_slaves`).
    pub fn recovered_agents(&self) -> impl Iterator<Item = v1::AgentInfo> + '_ {
        self.recovered_agents.iter().map(|(id, r)| v1::AgentInfo {
            hostname: r.entry.hostname.clone(),
            port: Some(i32::from(r.entry.port)),
            id: Some(v1::AgentId { value: id.clone() }),
            ..Default::default()
        })
    }

    /// Whether `id` is an agent known only from the registry, not yet re-registered.
    pub fn is_recovered(&self, id: &str) -> bool {
        self.recovered_agents.contains_key(id)
            && !self.agents.get(id).is_some_and(|a| a.state == AgentState::Connected)
    }
}
