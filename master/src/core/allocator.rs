//! The DRF allocator: a sans-I/O state machine over agents, frameworks and roles that decides
//! who is offered which agent's free resources.
//!
//! Two-level Dominant Resource Fairness, as in Mesos' hierarchical allocator: for each agent
//! with allocatable free resources, roles are visited in order of weighted dominant share
//! (share / weight), and within a role frameworks in order of their dominant share in that
//! role; the first framework that is active, not suppressed for the role and not filtered for
//! this agent receives everything free on the agent. Shares are over the cluster's scalar
//! totals (cpus, mem, disk, gpus, ...); ports and other ranges travel with the allocation but
//! do not count towards shares.
//!
//! Allocation runs on events, not in a periodic batch: every change that can make resources
//! offerable (agent added or reactivated, resources recovered, framework added or revived,
//! a filter expiring) marks the affected agents dirty, and the next [`Allocator::allocate`]
//! looks only at dirty agents. Time is passed in; nothing here reads a clock.
//!
//! Invariants (checked by [`Allocator::check_invariants`] in tests): an agent's allocation
//! never exceeds its total; per-agent, per-framework and per-role sums agree.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use corral_wire::resources::{Conversion, Key, ResourceError, Resources, Scalar, Value};

use super::time::Time;

/// Filters longer than this are capped (Mesos: one year).
pub const MAX_REFUSE: Duration = Duration::from_secs(31_536_000);

/// One decision: `resources` of `agent` go to `framework` for `role`.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    pub framework: String,
    pub agent: String,
    pub role: String,
    pub resources: Resources,
    /// Since when these resources were waiting to be offered (freed, added, or newly
    /// eligible): the start of the offer path's first stage.
    pub since: Time,
}

#[derive(Debug, Clone)]
pub struct AllocatorConfig {
    /// Free resources on an agent are offered only if they cover at least one of these
    /// (Mesos' `--min_allocatable_resources`, default `cpus:0.01|mem:32`).
    pub min_allocatable: Vec<Resources>,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        AllocatorConfig {
            min_allocatable: vec![
                Resources::new().with_scalar("cpus", 0.01),
                Resources::new().with_scalar("mem", 32.0),
            ],
        }
    }
}

/// A role's quota (operator UPDATE_QUOTA): scalar quantities by name. `limits` caps what the
/// role holds (offered and used); `guarantees` are held back from other roles while the role
/// holds less. A name without a limit is unlimited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Quota {
    pub guarantees: Resources,
    pub limits: Resources,
}

impl Quota {
    pub fn is_default(&self) -> bool {
        self.guarantees.is_empty() && self.limits.iter().next().is_none()
    }
}

#[derive(Debug)]
struct AgentSlot {
    total: Resources,
    allocated: Resources,
    /// (framework, role) -> what that pair holds on this agent.
    allocations: HashMap<(String, String), Resources>,
    active: bool,
    /// When it was first marked dirty since its last allocation pass.
    dirty_since: Option<Time>,
}

#[derive(Debug)]
struct Filter {
    refused: Resources,
    expires: Time,
}

#[derive(Debug)]
struct FrameworkSlot {
    roles: BTreeSet<String>,
    suppressed: BTreeSet<String>,
    active: bool,
    /// role -> allocation in that role (all agents).
    allocated: HashMap<String, Resources>,
    /// (role, agent) -> filter.
    filters: HashMap<(String, String), Filter>,
}

#[derive(Debug, Default)]
struct RoleSlot {
    frameworks: BTreeSet<String>,
    allocated: Resources,
}

#[derive(Debug)]
enum Dirty {
    All,
    Agents(BTreeSet<String>),
}

/// The allocator. See the module docs.
#[derive(Debug)]
pub struct Allocator {
    config: AllocatorConfig,
    agents: BTreeMap<String, AgentSlot>,
    frameworks: HashMap<String, FrameworkSlot>,
    roles: BTreeMap<String, RoleSlot>,
    weights: HashMap<String, f64>,
    quotas: BTreeMap<String, Quota>,
    /// Sum of all agents' totals: the denominator of every share.
    total: Resources,
    dirty: Dirty,
    /// (expiry, framework, role, agent): lets `next_timeout` and expiry avoid scans.
    expiries: BTreeSet<(Time, String, String, String)>,
    /// The latest time the owner passed in ([`Allocator::set_now`]): when dirt happened.
    now: Time,
    /// When every agent became dirty (a framework became eligible), if since the last pass.
    all_dirty_since: Option<Time>,
}

impl Allocator {
    pub fn new(config: AllocatorConfig) -> Allocator {
        Allocator {
            config,
            agents: BTreeMap::new(),
            frameworks: HashMap::new(),
            roles: BTreeMap::new(),
            weights: HashMap::new(),
            quotas: BTreeMap::new(),
            total: Resources::new(),
            dirty: Dirty::Agents(BTreeSet::new()),
            expiries: BTreeSet::new(),
            now: Time(0),
            all_dirty_since: None,
        }
    }

    /// The current time, for the offer-path instrumentation (when resources became
    /// available). Decisions never depend on it.
    pub fn set_now(&mut self, now: Time) {
        self.now = now;
    }

    fn mark_dirty(&mut self, agent: &str) {
        let now = self.now;
        if let Some(a) = self.agents.get_mut(agent) {
            a.dirty_since.get_or_insert(now);
        }
        if let Dirty::Agents(set) = &mut self.dirty {
            set.insert(agent.to_string());
        }
    }

    fn mark_all_dirty(&mut self) {
        self.all_dirty_since.get_or_insert(self.now);
        self.dirty = Dirty::All;
    }

    /// Whether an [`Allocator::allocate`] call could produce anything new.
    pub fn has_pending(&self) -> bool {
        match &self.dirty {
            Dirty::All => !self.agents.is_empty(),
            Dirty::Agents(set) => !set.is_empty(),
        }
    }

    // -- agents -----------------------------------------------------------------------------

    /// Adds an agent with its total resources and what is already in use on it (tasks it
    /// reported when re-registering), as `(framework, role, resources)`.
    pub fn add_agent(&mut self, id: &str, total: Resources, used: &[(String, String, Resources)]) {
        if self.agents.contains_key(id) {
            self.remove_agent(id);
        }
        self.total.add(&total.scalars_only());
        self.agents.insert(
            id.to_string(),
            AgentSlot {
                total,
                allocated: Resources::new(),
                allocations: HashMap::new(),
                active: true,
                dirty_since: None,
            },
        );
        for (fw, role, r) in used {
            self.allocate_to(fw, id, role, r);
        }
        self.mark_dirty(id);
    }

    /// Forgets an agent and everything allocated on it.
    pub fn remove_agent(&mut self, id: &str) {
        let Some(slot) = self.agents.remove(id) else { return };
        self.total.subtract(&slot.total.scalars_only());
        for ((fw, role), r) in slot.allocations {
            let r = r.scalars_only();
            if let Some(f) = self.frameworks.get_mut(&fw)
                && let Some(a) = f.allocated.get_mut(&role)
            {
                a.subtract(&r);
            }
            if let Some(rs) = self.roles.get_mut(&role) {
                rs.allocated.subtract(&r);
            }
        }
        for f in self.frameworks.values_mut() {
            f.filters.retain(|(_, agent), _| agent != id);
        }
        self.expiries.retain(|(_, _, _, agent)| agent != id);
        if let Dirty::Agents(set) = &mut self.dirty {
            set.remove(id);
        }
    }

    /// Applies a RESERVE, UNRESERVE, CREATE or DESTROY to an agent: to its total, and, when
    /// `held` names a (framework, role), to what that pair holds there (the converted
    /// resources were offered to it); else the converted resources must be unallocated.
    /// Quantities do not change, so neither do shares.
    pub fn convert(
        &mut self,
        agent: &str,
        held: Option<(&str, &str)>,
        conv: &Conversion,
    ) -> Result<(), ResourceError> {
        let Some(a) = self.agents.get_mut(agent) else {
            return Err(ResourceError::Invalid(format!("unknown agent {agent}")));
        };
        let total = a.total.apply(conv)?;
        let allocated = match held {
            Some(_) => a.allocated.apply(conv)?,
            None => {
                let free = a.total.minus(&a.allocated);
                free.apply(conv)?;
                a.allocated.clone()
            }
        };
        let pair = match held {
            Some((fw, role)) => {
                let key = (fw.to_string(), role.to_string());
                let converted = a.allocations.get(&key).cloned().unwrap_or_default().apply(conv)?;
                Some((key, converted))
            }
            None => None,
        };
        a.total = total;
        a.allocated = allocated;
        if let Some((key, converted)) = pair {
            a.allocations.insert(key, converted);
        }
        self.mark_dirty(agent);
        Ok(())
    }

    /// An agent's total and what is allocated on it.
    pub fn agent(&self, id: &str) -> Option<(&Resources, &Resources)> {
        self.agents.get(id).map(|a| (&a.total, &a.allocated))
    }

    /// Stops offering an agent (disconnected, draining) without forgetting its allocations.
    pub fn deactivate_agent(&mut self, id: &str) {
        if let Some(a) = self.agents.get_mut(id) {
            a.active = false;
        }
    }

    pub fn activate_agent(&mut self, id: &str) {
        if let Some(a) = self.agents.get_mut(id) {
            a.active = true;
            self.mark_dirty(id);
        }
    }

    // -- frameworks -------------------------------------------------------------------------

    pub fn add_framework(
        &mut self,
        id: &str,
        roles: &[String],
        suppressed: &[String],
        active: bool,
    ) {
        if self.frameworks.contains_key(id) {
            self.update_framework(id, roles, suppressed);
            if active {
                self.activate_framework(id);
            } else {
                self.deactivate_framework(id);
            }
            return;
        }
        let slot = FrameworkSlot {
            roles: roles.iter().cloned().collect(),
            suppressed: suppressed.iter().cloned().collect(),
            active,
            allocated: HashMap::new(),
            filters: HashMap::new(),
        };
        for role in &slot.roles {
            self.roles.entry(role.clone()).or_default().frameworks.insert(id.to_string());
        }
        self.frameworks.insert(id.to_string(), slot);
        self.mark_all_dirty();
    }

    /// Changes a framework's roles and suppressed roles (UPDATE_FRAMEWORK, re-subscription).
    pub fn update_framework(&mut self, id: &str, roles: &[String], suppressed: &[String]) {
        let Some(f) = self.frameworks.get_mut(id) else { return };
        for old in f.roles.iter() {
            if let Some(r) = self.roles.get_mut(old) {
                r.frameworks.remove(id);
            }
        }
        f.roles = roles.iter().cloned().collect();
        f.suppressed = suppressed.iter().cloned().collect();
        for role in &f.roles {
            self.roles.entry(role.clone()).or_default().frameworks.insert(id.to_string());
        }
        self.gc_roles();
        self.mark_all_dirty();
    }

    /// Forgets a framework, releasing whatever it still holds.
    pub fn remove_framework(&mut self, id: &str) {
        let Some(f) = self.frameworks.remove(id) else { return };
        for role in &f.roles {
            if let Some(r) = self.roles.get_mut(role) {
                r.frameworks.remove(id);
            }
        }
        let mut freed = Vec::new();
        for (agent_id, agent) in self.agents.iter_mut() {
            let keys: Vec<_> =
                agent.allocations.keys().filter(|(fw, _)| fw == id).cloned().collect();
            for key in keys {
                if let Some(r) = agent.allocations.remove(&key) {
                    agent.allocated.subtract(&r);
                    if let Some(rs) = self.roles.get_mut(&key.1) {
                        rs.allocated.subtract(&r.scalars_only());
                    }
                    freed.push(agent_id.clone());
                }
            }
        }
        for a in freed {
            self.mark_dirty(&a);
        }
        self.expiries.retain(|(_, fw, _, _)| fw != id);
        self.gc_roles();
    }

    pub fn activate_framework(&mut self, id: &str) {
        if let Some(f) = self.frameworks.get_mut(id) {
            f.active = true;
            self.mark_all_dirty();
        }
    }

    pub fn deactivate_framework(&mut self, id: &str) {
        if let Some(f) = self.frameworks.get_mut(id) {
            f.active = false;
        }
    }

    /// Stops offers to the framework for `roles` (all of its roles when empty).
    pub fn suppress(&mut self, id: &str, roles: &[String]) {
        if let Some(f) = self.frameworks.get_mut(id) {
            if roles.is_empty() {
                f.suppressed = f.roles.clone();
            } else {
                f.suppressed.extend(roles.iter().cloned());
            }
        }
    }

    /// Resumes offers for `roles` (all when empty) and clears their decline filters.
    pub fn revive(&mut self, id: &str, roles: &[String]) {
        let Some(f) = self.frameworks.get_mut(id) else { return };
        let all = roles.is_empty();
        if all {
            f.suppressed.clear();
        } else {
            for r in roles {
                f.suppressed.remove(r);
            }
        }
        f.filters.retain(|(role, _), _| !(all || roles.contains(role)));
        self.expiries.retain(|(_, fw, role, _)| !(fw == id && (all || roles.contains(role))));
        self.mark_all_dirty();
    }

    pub fn set_weight(&mut self, role: &str, weight: f64) {
        if weight > 0.0 && weight.is_finite() {
            self.weights.insert(role.to_string(), weight);
            self.mark_all_dirty();
        }
    }

    pub fn weight(&self, role: &str) -> f64 {
        self.weights.get(role).copied().unwrap_or(1.0)
    }

    /// Sets a role's quota (the default quota removes it).
    pub fn set_quota(&mut self, role: &str, quota: Quota) {
        if quota.is_default() {
            self.quotas.remove(role);
        } else {
            self.quotas.insert(role.to_string(), quota);
        }
        self.mark_all_dirty();
    }

    pub fn quotas(&self) -> &BTreeMap<String, Quota> {
        &self.quotas
    }

    /// What a role holds (offered and used), by name.
    pub fn role_allocated(&self, role: &str) -> Resources {
        self.roles.get(role).map(|r| r.allocated.clone()).unwrap_or_default()
    }

    /// Unreserved resources free on active agents, by name: what guarantees are held from.
    fn free_unreserved(&self) -> Resources {
        let mut free = Resources::new();
        for a in self.agents.values().filter(|a| a.active) {
            free.add(&a.total.minus(&a.allocated).unreserved().scalars_only());
        }
        free
    }

    /// What guarantees hold back from `role`: for every other role with a guarantee, what it
    /// still lacks of it.
    fn headroom_for_others(&self, role: &str) -> Resources {
        let mut need = Resources::new();
        for (r, q) in &self.quotas {
            if r == role {
                continue;
            }
            let held = self.role_allocated(r);
            need.add(&q.guarantees.minus(&held));
        }
        need
    }

    /// Whether `role` holds less than its guarantee of some resource.
    fn below_guarantee(&self, role: &str) -> bool {
        self.quotas.get(role).is_some_and(|q| !self.role_allocated(role).contains(&q.guarantees))
    }

    /// `offer` cut to `role`'s limits and to what other roles' guarantees leave (`free`: the
    /// cluster's free unreserved resources, when some guarantee exists).
    fn fit_quota(&self, role: &str, offer: Resources, free: Option<&Resources>) -> Resources {
        let mut offer = offer;
        if let Some(q) = self.quotas.get(role) {
            let held = self.role_allocated(role);
            for (key, v) in q.limits.iter() {
                let Value::Scalar(limit) = v else { continue };
                let room = Scalar((limit.0 - held.scalar(&key.name).0).max(0));
                offer = cap(offer, &key.name, room, false);
            }
        }
        if let Some(free) = free {
            let need = self.headroom_for_others(role);
            for (name, want) in need.scalars() {
                let spare = Scalar((free.scalar(name).0 - want.0).max(0));
                offer = cap(offer, name, spare, true);
            }
        }
        offer
    }

    fn gc_roles(&mut self) {
        self.roles.retain(|_, r| !r.frameworks.is_empty() || !r.allocated.is_empty());
    }

    // -- resources --------------------------------------------------------------------------

    fn allocate_to(&mut self, fw: &str, agent: &str, role: &str, r: &Resources) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.allocated.add(r);
            a.allocations.entry((fw.to_string(), role.to_string())).or_default().add(r);
        }
        let scalars = r.scalars_only();
        if let Some(f) = self.frameworks.get_mut(fw) {
            f.allocated.entry(role.to_string()).or_default().add(&scalars);
        }
        self.roles.entry(role.to_string()).or_default().allocated.add(&scalars);
    }

    /// Gives back resources that `framework` held on `agent` for `role` (an offer declined or
    /// rescinded, the unused part of an accept, a finished task). With `refuse`, the
    /// framework is not offered these resources on this agent again for that long.
    pub fn recover(
        &mut self,
        now: Time,
        framework: &str,
        agent: &str,
        role: &str,
        resources: &Resources,
        refuse: Option<Duration>,
    ) {
        self.now = self.now.max(now);
        if let Some(a) = self.agents.get_mut(agent) {
            a.allocated.subtract(resources);
            let key = (framework.to_string(), role.to_string());
            if let Some(held) = a.allocations.get_mut(&key) {
                held.subtract(resources);
                if held.is_empty() {
                    a.allocations.remove(&key);
                }
            }
        }
        let scalars = resources.scalars_only();
        if let Some(f) = self.frameworks.get_mut(framework) {
            if let Some(held) = f.allocated.get_mut(role) {
                held.subtract(&scalars);
            }
            if let Some(d) = refuse.filter(|d| !d.is_zero() && !resources.is_empty()) {
                let expires = now + d.min(MAX_REFUSE);
                let key = (role.to_string(), agent.to_string());
                if let Some(old) =
                    f.filters.insert(key, Filter { refused: resources.clone(), expires })
                {
                    self.expiries.remove(&(
                        old.expires,
                        framework.to_string(),
                        role.to_string(),
                        agent.to_string(),
                    ));
                }
                self.expiries.insert((
                    expires,
                    framework.to_string(),
                    role.to_string(),
                    agent.to_string(),
                ));
            }
        }
        if let Some(r) = self.roles.get_mut(role) {
            r.allocated.subtract(&scalars);
        }
        self.gc_roles();
        self.mark_dirty(agent);
    }

    /// The earliest filter expiry, if any.
    pub fn next_timeout(&self) -> Option<Time> {
        self.expiries.first().map(|e| e.0)
    }

    /// Drops filters that expired by `now`, marking their agents dirty.
    pub fn expire_filters(&mut self, now: Time) {
        while let Some(first) = self.expiries.first() {
            if first.0 > now {
                break;
            }
            let Some((_, fw, role, agent)) = self.expiries.pop_first() else { break };
            if let Some(f) = self.frameworks.get_mut(&fw) {
                f.filters.remove(&(role, agent.clone()));
            }
            self.mark_dirty(&agent);
        }
    }

    /// Whether `r` is worth offering: its quantities (reserved or not) cover one minimum.
    fn allocatable(&self, r: &Resources) -> bool {
        self.config
            .min_allocatable
            .iter()
            .any(|min| min.scalars().all(|(name, want)| r.scalar(name) >= want))
    }

    /// Dominant share of `alloc` in the cluster.
    fn share(&self, alloc: &Resources) -> f64 {
        let mut max = 0.0f64;
        for (name, total) in self.total.scalars() {
            if total.0 > 0 {
                max = max.max(alloc.scalar(name).0 as f64 / total.0 as f64);
            }
        }
        max
    }

    /// Runs allocation over the dirty agents and returns the decisions, already recorded as
    /// allocated.
    pub fn allocate(&mut self, now: Time) -> Vec<Allocation> {
        self.now = now;
        self.expire_filters(now);
        let all_since = self.all_dirty_since.take();
        let agents: Vec<String> =
            match std::mem::replace(&mut self.dirty, Dirty::Agents(BTreeSet::new())) {
                Dirty::All => self.agents.keys().cloned().collect(),
                Dirty::Agents(set) => set.into_iter().collect(),
            };
        let mut out = Vec::new();
        let mut free =
            self.quotas.values().any(|q| !q.guarantees.is_empty()).then(|| self.free_unreserved());
        for agent_id in agents {
            // One agent can go to several roles: what is reserved for one role is offered
            // only to it, and what the first pick leaves (others' reservations, quota cuts)
            // goes on.
            let Some(agent) = self.agents.get_mut(&agent_id) else { continue };
            let since = match (agent.dirty_since.take(), all_since) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(now),
            };
            if !agent.active {
                continue;
            }
            let mut available = agent.total.minus(&agent.allocated);
            while self.allocatable(&available) {
                let Some((fw, role, cut)) = self.pick(&agent_id, &available, free.as_ref()) else {
                    break;
                };
                // `None`: all of it (the common case, without a copy).
                let offer = match cut {
                    None => std::mem::take(&mut available),
                    Some(part) => {
                        available.subtract(&part);
                        part
                    }
                };
                self.allocate_to(&fw, &agent_id, &role, &offer);
                if let Some(free) = free.as_mut() {
                    free.subtract(&offer.unreserved().scalars_only());
                }
                out.push(Allocation {
                    framework: fw,
                    agent: agent_id.clone(),
                    role,
                    resources: offer,
                    since,
                });
            }
        }
        out
    }

    /// The (framework, role) that gets what it may be offered of `available` on `agent`
    /// (unreserved and reserved for the role, within the role's quota), by two-level DRF;
    /// with that part of `available`, or `None` for all of it.
    fn pick(
        &self,
        agent: &str,
        available: &Resources,
        free: Option<&Resources>,
    ) -> Option<(String, String, Option<Resources>)> {
        // Roles below their guarantee first (Mesos' quota stage), then by weighted share.
        let mut roles: Vec<(bool, f64, &String)> = self
            .roles
            .iter()
            .filter(|(_, r)| !r.frameworks.is_empty())
            .map(|(name, r)| {
                (!self.below_guarantee(name), self.share(&r.allocated) / self.weight(name), name)
            })
            .collect();
        roles.sort_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| a.1.total_cmp(&b.1)).then_with(|| a.2.cmp(b.2))
        });
        // The common case (nothing reserved, no quota) offers `available` as it is, without a
        // copy per role.
        let any_reserved = available.iter().any(|(k, _)| k.reservation.is_some());
        for (_, _, role) in roles {
            let mut offerable = if any_reserved {
                Cow::Owned(available.offerable_to(role))
            } else {
                Cow::Borrowed(available)
            };
            if free.is_some() || self.quotas.contains_key(role.as_str()) {
                offerable = Cow::Owned(self.fit_quota(role, offerable.into_owned(), free));
            }
            if !self.allocatable(&offerable) {
                continue;
            }
            let mut fws: Vec<(f64, &String)> = self.roles[role]
                .frameworks
                .iter()
                .filter_map(|id| {
                    let f = self.frameworks.get(id)?;
                    if !f.active || f.suppressed.contains(role) {
                        return None;
                    }
                    if let Some(filter) = f.filters.get(&(role.clone(), agent.to_string()))
                        && filter.refused.contains(&offerable)
                    {
                        return None;
                    }
                    let held = f.allocated.get(role).map(|r| self.share(r)).unwrap_or(0.0);
                    Some((held, id))
                })
                .collect();
            fws.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            if let Some((_, fw)) = fws.first() {
                let part = match offerable {
                    Cow::Borrowed(_) => None,
                    Cow::Owned(r) => Some(r),
                };
                return Some(((*fw).clone(), role.clone(), part));
            }
        }
        None
    }

    // -- views ------------------------------------------------------------------------------

    /// What is allocated (offered or used) on an agent.
    pub fn agent_allocated(&self, agent: &str) -> Option<&Resources> {
        self.agents.get(agent).map(|a| &a.allocated)
    }

    /// A framework's allocation across all agents and roles (scalars only).
    pub fn framework_allocated(&self, framework: &str) -> Resources {
        let mut r = Resources::new();
        if let Some(f) = self.frameworks.get(framework) {
            for a in f.allocated.values() {
                r.add(a);
            }
        }
        r
    }

    /// A framework's dominant share (the web UI's "max share").
    pub fn framework_share(&self, framework: &str) -> f64 {
        self.share(&self.framework_allocated(framework))
    }

    /// Roles known to the allocator with (weight, allocation, frameworks).
    pub fn roles(&self) -> impl Iterator<Item = (&str, f64, &Resources, &BTreeSet<String>)> {
        self.roles.iter().map(|(n, r)| (n.as_str(), self.weight(n), &r.allocated, &r.frameworks))
    }

    pub fn total(&self) -> &Resources {
        &self.total
    }

    /// Checks the bookkeeping invariants; returns a description of the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut by_fw: HashMap<(String, String), Resources> = HashMap::new();
        for (id, a) in &self.agents {
            if !a.total.contains(&a.allocated) {
                return Err(format!("agent {id} over-committed: {} > {}", a.allocated, a.total));
            }
            let mut sum = Resources::new();
            for (k, r) in &a.allocations {
                sum.add(r);
                by_fw.entry(k.clone()).or_default().add(&r.scalars_only());
            }
            if sum != a.allocated && !(sum.is_empty() && a.allocated.is_empty()) {
                return Err(format!(
                    "agent {id}: allocations sum {sum} != allocated {}",
                    a.allocated
                ));
            }
        }
        for ((fw, role), r) in &by_fw {
            let held = self.frameworks.get(fw).and_then(|f| f.allocated.get(role));
            if held.is_some_and(|h| !h.contains(r) || !r.contains(h)) {
                return Err(format!("framework {fw} role {role}: {r} on agents vs {held:?}"));
            }
        }
        let mut total_alloc = Scalar::ZERO;
        for a in self.agents.values() {
            total_alloc.0 += a.allocated.scalar("cpus").0;
        }
        let role_alloc: i64 = self.roles.values().map(|r| r.allocated.scalar("cpus").0).sum();
        if total_alloc.0 != role_alloc {
            return Err(format!(
                "cpus allocated on agents {total_alloc:?} != in roles {role_alloc}"
            ));
        }
        Ok(())
    }
}

/// `offer` with at most `max` of scalar `name`: unreserved quantities are cut first, then
/// (unless `unreserved_only`) reserved ones; a volume that does not fit whole is left out.
fn cap(offer: Resources, name: &str, max: Scalar, unreserved_only: bool) -> Resources {
    let counted = |k: &Key| k.name == name && (!unreserved_only || k.reservation.is_none());
    let total: i64 = offer.filter(counted).scalar(name).0;
    if total <= max.0 {
        return offer;
    }
    let mut excess = total - max.0;
    let mut out = offer.filter(|k| !counted(k));
    // Volumes last: they are cut whole.
    let mut parts: Vec<(Key, Value)> =
        offer.filter(counted).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    parts.sort_by_key(|(k, _)| (k.volume.is_some(), k.reservation.is_some()));
    let mut kept = Vec::new();
    for (k, v) in parts {
        let Value::Scalar(s) = v else {
            kept.push((k, v));
            continue;
        };
        if excess <= 0 {
            kept.push((k, Value::Scalar(s)));
        } else if k.volume.is_some() || s.0 <= excess {
            excess -= s.0;
        } else {
            kept.push((k, Value::Scalar(Scalar(s.0 - excess))));
            excess = 0;
        }
    }
    for (k, v) in kept {
        out.insert(k, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Resources {
        Resources::parse(s).unwrap()
    }

    fn t(secs: u64) -> Time {
        Time::from_secs(1_000 + secs)
    }

    fn new() -> Allocator {
        Allocator::new(AllocatorConfig::default())
    }

    fn roles(rs: &[&str]) -> Vec<String> {
        rs.iter().map(|s| s.to_string()).collect()
    }

    fn one(a: &mut Allocator, now: Time) -> Option<Allocation> {
        let mut v = a.allocate(now);
        assert!(v.len() <= 1, "{v:?}");
        a.check_invariants().unwrap();
        v.pop()
    }

    /// Mesos `HierarchicalAllocatorTest.UnreservedDRF`, adapted: each new agent goes to the
    /// framework with the lowest dominant share.
    #[test]
    fn drf_between_frameworks() {
        let mut a = new();
        a.add_framework("f1", &roles(&["r"]), &[], true);
        a.add_framework("f2", &roles(&["r"]), &[], true);
        a.add_agent("a1", r("cpus:2;mem:1024"), &[]);
        assert_eq!(one(&mut a, t(0)).unwrap().framework, "f1"); // tie -> by id
        a.add_agent("a2", r("cpus:1;mem:512"), &[]);
        // f1 holds 2/3 cpus; f2 nothing.
        assert_eq!(one(&mut a, t(0)).unwrap().framework, "f2");
        a.add_agent("a3", r("cpus:3;mem:2048"), &[]);
        // Totals cpus 6, mem 3584. f1: max(2/6, 1024/3584)=0.33; f2: max(1/6, 512/3584)=0.17.
        assert_eq!(one(&mut a, t(0)).unwrap().framework, "f2");
        a.add_agent("a4", r("cpus:4;mem:4096"), &[]);
        // f2 now holds 4/10 cpus, 2560/7680 mem -> 0.4; f1 holds 0.2.
        assert_eq!(one(&mut a, t(0)).unwrap().framework, "f1");
    }

    /// Weighted roles: with weights 2:1 and identical agents, role shares settle at 2:1.
    #[test]
    fn drf_between_weighted_roles() {
        let mut a = new();
        a.set_weight("heavy", 2.0);
        a.add_framework("fh", &roles(&["heavy"]), &[], true);
        a.add_framework("fl", &roles(&["light"]), &[], true);
        let mut count: HashMap<String, u32> = HashMap::new();
        for i in 0..30 {
            a.add_agent(&format!("a{i:02}"), r("cpus:1;mem:1024"), &[]);
            let got = one(&mut a, t(0)).unwrap();
            *count.entry(got.role).or_default() += 1;
        }
        assert_eq!(count["heavy"], 20);
        assert_eq!(count["light"], 10);
    }

    #[test]
    fn frameworks_in_multiple_roles_are_offered_per_role() {
        let mut a = new();
        a.add_framework("f", &roles(&["x", "y"]), &[], true);
        a.add_agent("a1", r("cpus:1;mem:64"), &[]);
        a.add_agent("a2", r("cpus:1;mem:64"), &[]);
        let got = a.allocate(t(0));
        let mut rs: Vec<_> = got.iter().map(|g| g.role.clone()).collect();
        rs.sort();
        assert_eq!(rs, vec!["x", "y"], "role shares alternate");
    }

    /// Mesos `HierarchicalAllocatorTest.RefusedOfferFilter`, adapted.
    #[test]
    fn declined_resources_are_filtered_until_expiry() {
        let mut a = new();
        a.add_framework("f1", &roles(&["*"]), &[], true);
        a.add_agent("a1", r("cpus:2;mem:1024"), &[]);
        let got = one(&mut a, t(0)).unwrap();
        a.recover(t(0), "f1", "a1", "*", &got.resources, Some(Duration::from_secs(5)));
        assert!(a.has_pending());
        assert_eq!(one(&mut a, t(1)), None, "filtered");
        assert_eq!(a.next_timeout(), Some(t(5)));
        assert_eq!(one(&mut a, t(4)), None);
        // The filter expires at t(5): the agent is dirty again and offered.
        a.expire_filters(t(5));
        assert!(a.has_pending());
        assert_eq!(one(&mut a, t(5)).unwrap().framework, "f1");
        assert_eq!(a.next_timeout(), None);
    }

    #[test]
    fn a_filter_does_not_hide_more_resources_than_were_refused() {
        let mut a = new();
        a.add_framework("f1", &roles(&["*"]), &[], true);
        a.add_agent("a1", r("cpus:2;mem:1024"), &[]);
        let got = one(&mut a, t(0)).unwrap();
        // f1 uses half and declines the rest for a minute.
        let used = r("cpus:1;mem:512");
        a.recover(
            t(0),
            "f1",
            "a1",
            "*",
            &got.resources.minus(&used),
            Some(Duration::from_secs(60)),
        );
        assert_eq!(one(&mut a, t(1)), None);
        // The task ends: now more is free than was refused, so it is offered again.
        a.recover(t(2), "f1", "a1", "*", &used, None);
        assert_eq!(one(&mut a, t(2)).unwrap().resources, r("cpus:2;mem:1024"));
    }

    #[test]
    fn declined_resources_go_to_the_next_framework() {
        let mut a = new();
        a.add_framework("f1", &roles(&["*"]), &[], true);
        a.add_framework("f2", &roles(&["*"]), &[], true);
        a.add_agent("a1", r("cpus:2;mem:1024"), &[]);
        let got = one(&mut a, t(0)).unwrap();
        assert_eq!(got.framework, "f1");
        a.recover(t(0), "f1", "a1", "*", &got.resources, Some(Duration::from_secs(5)));
        assert_eq!(one(&mut a, t(0)).unwrap().framework, "f2");
    }

    #[test]
    fn suppress_and_revive() {
        let mut a = new();
        a.add_framework("f1", &roles(&["*"]), &[], true);
        a.suppress("f1", &[]);
        a.add_agent("a1", r("cpus:2;mem:1024"), &[]);
        assert_eq!(one(&mut a, t(0)), None);
        a.revive("f1", &[]);
        assert_eq!(one(&mut a, t(0)).unwrap().framework, "f1");
    }

    #[test]
    fn revive_clears_filters() {
        let mut a = new();
        a.add_framework("f1", &roles(&["*"]), &[], true);
        a.add_agent("a1", r("cpus:2;mem:1024"), &[]);
        let got = one(&mut a, t(0)).unwrap();
        a.recover(t(0), "f1", "a1", "*", &got.resources, Some(Duration::from_secs(3600)));
        assert_eq!(one(&mut a, t(1)), None);
        a.revive("f1", &[]);
        assert_eq!(one(&mut a, t(1)).unwrap().framework, "f1");
        assert_eq!(a.next_timeout(), None);
    }

    #[test]
    fn inactive_frameworks_and_agents_get_nothing() {
        let mut a = new();
        a.add_framework("f1", &roles(&["*"]), &[], false);
        a.add_agent("a1", r("cpus:2;mem:1024"), &[]);
        assert_eq!(one(&mut a, t(0)), None);
        a.activate_framework("f1");
        let got = one(&mut a, t(0)).unwrap();
        a.deactivate_agent("a1");
        a.recover(t(0), "f1", "a1", "*", &got.resources, None);
        assert_eq!(one(&mut a, t(0)), None);
        a.activate_agent("a1");
        assert!(one(&mut a, t(0)).is_some());
    }

    #[test]
    fn leftovers_below_the_minimum_are_not_offered() {
        let mut a = new();
        a.add_framework("f1", &roles(&["*"]), &[], true);
        a.add_agent(
            "a1",
            r("cpus:1;mem:1024"),
            &[("f1".into(), "*".into(), r("cpus:0.995;mem:1000"))],
        );
        assert_eq!(one(&mut a, t(0)), None, "0.005 cpus and 24 MB is not allocatable");
    }

    #[test]
    fn used_resources_reported_at_registration_count() {
        let mut a = new();
        a.add_framework("f1", &roles(&["*"]), &[], true);
        a.add_agent(
            "a1",
            r("cpus:2;mem:1024;ports:[1-10]"),
            &[("f1".into(), "*".into(), r("cpus:1;mem:512;ports:[3-4]"))],
        );
        let got = one(&mut a, t(0)).unwrap();
        assert_eq!(got.resources, r("cpus:1;mem:512;ports:[1-2,5-10]"));
    }

    #[test]
    fn removing_an_agent_or_framework_releases_everything() {
        let mut a = new();
        a.add_framework("f1", &roles(&["*"]), &[], true);
        a.add_agent("a1", r("cpus:2;mem:1024"), &[]);
        a.add_agent("a2", r("cpus:2;mem:1024"), &[]);
        assert_eq!(a.allocate(t(0)).len(), 2);
        a.remove_agent("a1");
        a.check_invariants().unwrap();
        assert_eq!(a.framework_allocated("f1"), r("cpus:2;mem:1024"));
        a.remove_framework("f1");
        a.check_invariants().unwrap();
        assert!(a.agent_allocated("a2").unwrap().is_empty());
        a.add_framework("f2", &roles(&["*"]), &[], true);
        assert_eq!(one(&mut a, t(0)).unwrap().resources, r("cpus:2;mem:1024"));
    }

    /// Randomised sequences of every operation: no agent is ever over-committed, and nothing
    /// is allocated twice (each allocation is within what was free at that moment).
    #[test]
    fn random_operations_keep_invariants() {
        use proptest::prelude::*;
        use proptest::test_runner::TestRunner;
        let ops = proptest::collection::vec((0u8..9, 0u8..4, 0u8..4, 0u64..20), 1..200);
        TestRunner::default()
            .run(&ops, |ops| {
                let mut a = new();
                let mut held: Vec<Allocation> = Vec::new();
                let mut now = t(0);
                for (op, x, y, dt) in ops {
                    now = now + Duration::from_secs(dt);
                    let (fw, agent) = (format!("f{x}"), format!("a{y}"));
                    match op {
                        0 => {
                            // Re-adding an agent replaces it and drops what was held there.
                            held.retain(|h| h.agent != agent);
                            a.add_agent(&agent, r("cpus:4;mem:4096;ports:[1-100]"), &[]);
                        }
                        1 => {
                            a.remove_agent(&agent);
                            held.retain(|h| h.agent != agent);
                        }
                        2 => a.add_framework(&fw, &roles(&["r1", "r2"]), &[], true),
                        3 => {
                            a.remove_framework(&fw);
                            held.retain(|h| h.framework != fw);
                        }
                        4 => {
                            if let Some(i) = held.iter().position(|h| h.framework == fw) {
                                let h = held.remove(i);
                                a.recover(
                                    now,
                                    &h.framework,
                                    &h.agent,
                                    &h.role,
                                    &h.resources,
                                    Some(Duration::from_secs(dt)),
                                );
                            }
                        }
                        5 => a.suppress(&fw, &[]),
                        6 => a.revive(&fw, &[]),
                        7 => a.deactivate_agent(&agent),
                        _ => a.activate_agent(&agent),
                    }
                    for got in a.allocate(now) {
                        prop_assert!(a.frameworks.contains_key(&got.framework));
                        held.push(got);
                    }
                    prop_assert!(a.check_invariants().is_ok(), "{:?}", a.check_invariants());
                    // What the test believes is held equals what the allocator says.
                    for agent in a.agents.keys() {
                        let mut sum = Resources::new();
                        for h in held.iter().filter(|h| &h.agent == agent) {
                            sum.add(&h.resources);
                        }
                        let alloc = a.agent_allocated(agent).unwrap();
                        prop_assert!(
                            sum.contains(alloc) && alloc.contains(&sum),
                            "{sum} vs {alloc}"
                        );
                    }
                }
                Ok(())
            })
            .unwrap();
    }

    fn quota(guarantees: &str, limits: &str) -> Quota {
        Quota { guarantees: r(guarantees), limits: r(limits) }
    }

    #[test]
    fn a_quota_limit_caps_what_a_role_is_offered() {
        let mut a = new();
        a.set_quota("eng", quota("", "cpus:3"));
        a.add_framework("f1", &roles(&["eng"]), &[], true);
        a.add_agent("a1", r("cpus:2;mem:1024"), &[]);
        a.add_agent("a2", r("cpus:2;mem:1024"), &[]);
        let got = a.allocate(t(0));
        a.check_invariants().unwrap();
        let cpus: i64 = got.iter().map(|x| x.resources.scalar("cpus").0).sum();
        assert_eq!(cpus, 3000, "{got:?}");
        assert_eq!(got.iter().map(|x| x.resources.scalar("mem").0).sum::<i64>(), 2_048_000);
        // Giving 1 cpu back frees room for exactly that.
        let first = &got[0];
        a.recover(t(1), "f1", &first.agent, "eng", &r("cpus:1"), None);
        let again = a.allocate(t(1));
        assert_eq!(again.iter().map(|x| x.resources.scalar("cpus").0).sum::<i64>(), 1000);
    }

    #[test]
    fn a_guarantee_is_held_back_from_other_roles_and_served_first() {
        let mut a = new();
        a.set_quota("eng", quota("cpus:4", ""));
        a.add_framework("ops", &roles(&["ops"]), &[], true);
        a.add_agent("a1", r("cpus:4;mem:1024"), &[]);
        a.add_agent("a2", r("cpus:4;mem:1024"), &[]);
        // eng has no framework yet: ops may take only what leaves eng's 4 cpus free.
        let got = a.allocate(t(0));
        a.check_invariants().unwrap();
        assert_eq!(got.iter().map(|x| x.resources.scalar("cpus").0).sum::<i64>(), 4000, "{got:?}");
        // eng's framework arrives; ops gives back one agent's worth, and eng gets it first.
        a.add_framework("eng1", &roles(&["eng"]), &[], true);
        let a1 = got.iter().find(|x| x.resources.scalar("cpus").0 > 0).unwrap().clone();
        a.recover(t(1), "ops", &a1.agent, "ops", &a1.resources, None);
        let next = a.allocate(t(1));
        let eng: i64 =
            next.iter().filter(|x| x.role == "eng").map(|x| x.resources.scalar("cpus").0).sum();
        assert!(eng >= 4000, "eng gets at least its guarantee: {next:?}");
        assert_eq!(next[0].role, "eng", "below its guarantee, eng is served first");
    }
}
