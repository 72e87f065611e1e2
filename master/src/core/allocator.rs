//! The DRF allocator: a sans-I/O state machine over agents, frameworks and roles that decides
//! who is offered which agent's free resources.
//!
//! Two-level Dominant Resource Fairness, as in Mesos' hierarchical allocator: for each agent
//! with allocatable free resources, roles are visited in order of weighted dominant share
//! (share / weight; roles below their quota guarantee first), and within a role frameworks in
//! order of their dominant share in that role; the first framework that is active, not
//! suppressed for the role and not filtered for this agent receives everything free on the
//! agent. Shares are over the cluster's scalar totals (cpus, mem, disk, gpus, ...); ports and
//! other ranges travel with the allocation but do not count towards shares.
//!
//! Allocation runs on events, not in a periodic batch: every change that can make resources
//! offerable (agent added or reactivated, resources recovered, framework added or revived,
//! a filter expiring) marks the affected agents dirty, and the next [`Allocator::allocate`]
//! looks only at dirty agents. Time is passed in; nothing here reads a clock.
//!
//! How it stays fast at 10,000s of agents and 1,000s of frameworks and roles: agents,
//! frameworks and roles are interned to indices; the DRF orders are kept sorted at all times
//! (a `BTreeSet` of roles by weighted share and one of frameworks per role by share), and an
//! allocation moves only the framework and role it changed, so a pick is a walk from the front
//! of the orders rather than a sort; decline filters live with their agent, keyed by
//! (framework, role) indices; unmet quota guarantees are summed incrementally. When the
//! cluster's total changes (agents come and go) every share is stale: they are recomputed once,
//! at the next pass. When every agent becomes eligible at once (a framework subscribes or
//! revives, a weight or quota changes), the pass visits only the agents that had something
//! left over after their last pass, plus the dirty ones: on a full cluster of 50,000 agents
//! that is a handful, not 50,000 (every change that frees resources marks its agent dirty).
//!
//! Invariants (checked by [`Allocator::check_invariants`] in tests): an agent's allocation
//! never exceeds its total; per-agent, per-framework and per-role sums agree.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use corral_wire::resources::{Conversion, Key, ResourceError, Resources, Scalar, Value};
use rustc_hash::{FxHashMap, FxHashSet};

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
/// role may hold; `guarantees` is held back from other roles for as long as the role
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

/// An interned agent, framework or role.
type Ix = u32;

/// A non-negative share as an order-preserving integer.
fn bits(share: f64) -> u64 {
    if share.is_finite() && share > 0.0 { share.to_bits() } else { 0 }
}

/// A framework's place in its role's DRF order: share, then registration order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FwKey {
    share: u64,
    ix: Ix,
}

/// A role's place in the DRF order: roles below their guarantee first, then by weighted
/// share, then in order of first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RoleKey {
    satisfied: bool,
    share: u64,
    ix: Ix,
}

#[derive(Debug)]
struct Filter {
    refused: Resources,
    expires: Time,
}

#[derive(Debug)]
struct AgentSlot {
    id: Arc<str>,
    total: Resources,
    allocated: Resources,
    /// (framework, role) -> what that pair holds on this agent.
    allocations: FxHashMap<(Ix, Ix), Resources>,
    /// (framework, role) -> what that pair declined here, until when.
    filters: FxHashMap<(Ix, Ix), Filter>,
    active: bool,
    /// In the dirty list.
    dirty: bool,
    /// When it was first marked dirty since its last allocation pass.
    dirty_since: Option<Time>,
}

#[derive(Debug)]
struct FrameworkSlot {
    id: Arc<str>,
    roles: BTreeSet<String>,
    suppressed: BTreeSet<String>,
    role_ix: Vec<Ix>,
    suppressed_ix: Vec<Ix>,
    active: bool,
    /// role -> (allocation in that role on all agents, scalars only; its share).
    allocated: FxHashMap<Ix, (Resources, f64)>,
    /// (agent, role) pairs this framework has a filter for.
    filtered: FxHashSet<(Ix, Ix)>,
}

#[derive(Debug)]
struct RoleSlot {
    name: Arc<str>,
    frameworks: BTreeSet<String>,
    /// Its frameworks in DRF order.
    order: BTreeSet<FwKey>,
    allocated: Resources,
    /// Its key in `role_order`, while it has frameworks.
    key: Option<RoleKey>,
    /// What of its guarantee it does not hold yet (roles with a quota).
    unmet: Resources,
    /// Its weight and whether it has a quota (cached from `weights` and `quotas`).
    weight: f64,
    has_quota: bool,
}

/// The allocator. See the module docs.
#[derive(Debug)]
pub struct Allocator {
    config: AllocatorConfig,
    agents: Vec<Option<AgentSlot>>,
    agent_ix: FxHashMap<String, Ix>,
    frameworks: Vec<Option<FrameworkSlot>>,
    framework_ix: FxHashMap<String, Ix>,
    /// Role slots are never reused: filters and expiries may name a role index.
    roles: Vec<RoleSlot>,
    role_ix: BTreeMap<String, Ix>,
    role_order: BTreeSet<RoleKey>,
    weights: HashMap<String, f64>,
    quotas: BTreeMap<String, Quota>,
    /// Sum of every role's unmet guarantee.
    unmet_total: Resources,
    /// Sum of all agents' totals: the denominator of every share.
    total: Resources,
    /// Shares were computed against an older total.
    stale: bool,
    dirty_all: bool,
    dirty: Vec<Ix>,
    /// Agents whose last pass left allocatable resources that nobody could take (filtered,
    /// suppressed, quota): with the dirty ones, all a pass over every agent needs to visit.
    /// An agent neither here nor dirty has nothing allocatable.
    leftover: FxHashSet<Ix>,
    /// Agents visited by allocation passes so far (what a pass costs grows with it).
    visited: u64,
    /// (expiry, framework, role, agent): lets `next_timeout` and expiry avoid scans.
    expiries: BTreeSet<(Time, Ix, Ix, Ix)>,
    /// The latest time the owner passed in ([`Allocator::set_now`]): when dirt happened.
    now: Time,
    /// When every agent became dirty (a framework became eligible), if since the last pass.
    all_dirty_since: Option<Time>,
}

impl Allocator {
    pub fn new(config: AllocatorConfig) -> Allocator {
        Allocator {
            config,
            agents: Vec::new(),
            agent_ix: FxHashMap::default(),
            frameworks: Vec::new(),
            framework_ix: FxHashMap::default(),
            roles: Vec::new(),
            role_ix: BTreeMap::new(),
            role_order: BTreeSet::new(),
            weights: HashMap::new(),
            quotas: BTreeMap::new(),
            unmet_total: Resources::new(),
            total: Resources::new(),
            stale: false,
            dirty_all: false,
            dirty: Vec::new(),
            leftover: FxHashSet::default(),
            visited: 0,
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

    // -- interning --------------------------------------------------------------------------

    fn agent_slot(&self, a: Ix) -> Option<&AgentSlot> {
        self.agents.get(a as usize).and_then(Option::as_ref)
    }

    fn agent_mut(&mut self, a: Ix) -> Option<&mut AgentSlot> {
        self.agents.get_mut(a as usize).and_then(Option::as_mut)
    }

    fn fw_slot(&self, f: Ix) -> Option<&FrameworkSlot> {
        self.frameworks.get(f as usize).and_then(Option::as_ref)
    }

    fn fw_mut(&mut self, f: Ix) -> Option<&mut FrameworkSlot> {
        self.frameworks.get_mut(f as usize).and_then(Option::as_mut)
    }

    fn role(&mut self, name: &str) -> Ix {
        if let Some(&r) = self.role_ix.get(name) {
            return r;
        }
        let r = self.roles.len() as Ix;
        self.roles.push(RoleSlot {
            name: Arc::from(name),
            frameworks: BTreeSet::new(),
            order: BTreeSet::new(),
            allocated: Resources::new(),
            key: None,
            unmet: Resources::new(),
            weight: self.weights.get(name).copied().unwrap_or(1.0),
            has_quota: self.quotas.contains_key(name),
        });
        self.role_ix.insert(name.to_string(), r);
        self.refresh_unmet(r);
        r
    }

    /// The framework `id`, made as an inactive placeholder without roles if unknown (an agent
    /// reported its tasks before it subscribed).
    fn framework(&mut self, id: &str) -> Ix {
        if let Some(&f) = self.framework_ix.get(id) {
            return f;
        }
        let f = self.frameworks.len() as Ix;
        self.frameworks.push(Some(FrameworkSlot {
            id: Arc::from(id),
            roles: BTreeSet::new(),
            suppressed: BTreeSet::new(),
            role_ix: Vec::new(),
            suppressed_ix: Vec::new(),
            active: false,
            allocated: FxHashMap::default(),
            filtered: FxHashSet::default(),
        }));
        self.framework_ix.insert(id.to_string(), f);
        f
    }

    // -- dirt -------------------------------------------------------------------------------

    fn mark_dirty(&mut self, a: Ix) {
        let now = self.now;
        let Some(slot) = self.agents.get_mut(a as usize).and_then(Option::as_mut) else {
            return;
        };
        slot.dirty_since.get_or_insert(now);
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(a);
        }
    }

    fn mark_all_dirty(&mut self) {
        self.all_dirty_since.get_or_insert(self.now);
        self.dirty_all = true;
    }

    /// Whether an [`Allocator::allocate`] call could produce anything new.
    pub fn has_pending(&self) -> bool {
        (self.dirty_all && !self.agent_ix.is_empty()) || !self.dirty.is_empty()
    }

    // -- shares and orders ------------------------------------------------------------------

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

    fn below_guarantee(&self, r: Ix) -> bool {
        let role = &self.roles[r as usize];
        role.has_quota
            && self.quotas.get(&*role.name).is_some_and(|q| {
                !q.guarantees.is_empty() && !role.allocated.contains(&q.guarantees)
            })
    }

    /// Puts role `r` where its share, weight and guarantee now place it (or takes it out of
    /// the order when it has no frameworks).
    fn refresh_role(&mut self, r: Ix) {
        let new = if self.roles[r as usize].frameworks.is_empty() {
            None
        } else {
            let role = &self.roles[r as usize];
            let share = self.share(&role.allocated) / role.weight;
            Some(RoleKey { satisfied: !self.below_guarantee(r), share: bits(share), ix: r })
        };
        let role = &mut self.roles[r as usize];
        if role.key == new {
            return;
        }
        if let Some(old) = role.key.take() {
            self.role_order.remove(&old);
        }
        if let Some(k) = new {
            self.role_order.insert(k);
            role.key = Some(k);
        }
    }

    /// Recomputes framework `f`'s share in role `r` and its place in the role's order.
    fn refresh_fw(&mut self, f: Ix, r: Ix) {
        let Some(fw) = self.fw_slot(f) else { return };
        let (old, new) = match fw.allocated.get(&r) {
            Some((res, old)) => (*old, self.share(res)),
            None => (0.0, 0.0),
        };
        if bits(old) == bits(new) {
            return;
        }
        if let Some(fw) = self.fw_mut(f)
            && let Some(entry) = fw.allocated.get_mut(&r)
        {
            entry.1 = new;
        }
        let role = &mut self.roles[r as usize];
        if role.order.remove(&FwKey { share: bits(old), ix: f }) {
            role.order.insert(FwKey { share: bits(new), ix: f });
        }
    }

    /// Recomputes every share against the current total (after agents came or went).
    fn rebuild(&mut self) {
        self.stale = false;
        for f in 0..self.frameworks.len() as Ix {
            let Some(fw) = self.fw_slot(f) else { continue };
            let roles: Vec<Ix> = fw.allocated.keys().copied().collect();
            for r in roles {
                self.refresh_fw(f, r);
            }
        }
        for r in 0..self.roles.len() as Ix {
            self.refresh_role(r);
        }
    }

    fn refresh_unmet(&mut self, r: Ix) {
        let role = &self.roles[r as usize];
        if !role.has_quota && role.unmet.is_empty() {
            return;
        }
        let unmet = match self.quotas.get(&*role.name) {
            Some(q) => q.guarantees.minus(&role.allocated),
            None => Resources::new(),
        };
        if unmet == role.unmet {
            return;
        }
        let role = &mut self.roles[r as usize];
        self.unmet_total.subtract(&role.unmet);
        self.unmet_total.add(&unmet);
        role.unmet = unmet;
    }

    // -- agents -----------------------------------------------------------------------------

    /// Adds an agent with its total resources and what is already in use on it (tasks it
    /// reported when re-registering), as `(framework, role, resources)`.
    pub fn add_agent(&mut self, id: &str, total: Resources, used: &[(String, String, Resources)]) {
        if self.agent_ix.contains_key(id) {
            self.remove_agent(id);
        }
        self.total.add(&total.scalars_only());
        self.stale = true;
        let a = self.agents.len() as Ix;
        self.agents.push(Some(AgentSlot {
            id: Arc::from(id),
            total,
            allocated: Resources::new(),
            allocations: FxHashMap::default(),
            filters: FxHashMap::default(),
            active: true,
            dirty: false,
            dirty_since: None,
        }));
        self.agent_ix.insert(id.to_string(), a);
        for (fw, role, r) in used {
            let (f, r_ix) = (self.framework(fw), self.role(role));
            self.allocate_to(f, a, r_ix, r);
        }
        self.mark_dirty(a);
    }

    /// Forgets an agent and everything allocated on it.
    pub fn remove_agent(&mut self, id: &str) {
        let Some(a) = self.agent_ix.remove(id) else { return };
        let Some(slot) = self.agents[a as usize].take() else { return };
        self.total.subtract(&slot.total.scalars_only());
        self.stale = true;
        for ((f, r), res) in slot.allocations {
            let res = res.scalars_only();
            if let Some(fw) = self.fw_mut(f)
                && let Some(held) = fw.allocated.get_mut(&r)
            {
                held.0.subtract(&res);
            }
            self.roles[r as usize].allocated.subtract(&res);
            self.refresh_unmet(r);
        }
        for (f, r) in slot.filters.keys() {
            if let Some(fw) = self.fw_mut(*f) {
                fw.filtered.remove(&(a, *r));
            }
        }
        self.expiries.retain(|(_, _, _, agent)| *agent != a);
        self.dirty.retain(|d| *d != a);
        self.leftover.remove(&a);
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
        let Some(&a) = self.agent_ix.get(agent) else {
            return Err(ResourceError::Invalid(format!("unknown agent {agent}")));
        };
        let pair = held.map(|(fw, role)| (self.framework(fw), self.role(role)));
        let Some(slot) = self.agent_mut(a) else {
            return Err(ResourceError::Invalid(format!("unknown agent {agent}")));
        };
        let total = slot.total.apply(conv)?;
        let allocated = match pair {
            Some(_) => slot.allocated.apply(conv)?,
            None => {
                let free = slot.total.minus(&slot.allocated);
                free.apply(conv)?;
                slot.allocated.clone()
            }
        };
        let converted = match pair {
            Some(key) => {
                Some((key, slot.allocations.get(&key).cloned().unwrap_or_default().apply(conv)?))
            }
            None => None,
        };
        slot.total = total;
        slot.allocated = allocated;
        if let Some((key, c)) = converted {
            slot.allocations.insert(key, c);
        }
        self.mark_dirty(a);
        Ok(())
    }

    /// An agent's total and what is allocated on it.
    pub fn agent(&self, id: &str) -> Option<(&Resources, &Resources)> {
        let a = self.agent_slot(*self.agent_ix.get(id)?)?;
        Some((&a.total, &a.allocated))
    }

    /// Stops offering an agent (disconnected, draining) without forgetting its allocations.
    pub fn deactivate_agent(&mut self, id: &str) {
        if let Some(&a) = self.agent_ix.get(id)
            && let Some(slot) = self.agent_mut(a)
        {
            slot.active = false;
        }
    }

    pub fn activate_agent(&mut self, id: &str) {
        if let Some(&a) = self.agent_ix.get(id)
            && let Some(slot) = self.agent_mut(a)
        {
            slot.active = true;
            self.mark_dirty(a);
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
        if self.framework_ix.contains_key(id) {
            self.update_framework(id, roles, suppressed);
            if active {
                self.activate_framework(id);
            } else {
                self.deactivate_framework(id);
            }
            return;
        }
        let f = self.framework(id);
        if let Some(fw) = self.fw_mut(f) {
            fw.active = active;
        }
        self.set_roles(f, roles, suppressed);
        self.mark_all_dirty();
    }

    /// Makes `roles` the framework's roles (joining and leaving role orders) and `suppressed`
    /// its suppressed ones.
    fn set_roles(&mut self, f: Ix, roles: &[String], suppressed: &[String]) {
        let Some(fw) = self.fw_slot(f) else { return };
        let old: Vec<Ix> = fw.role_ix.clone();
        let id = fw.id.clone();
        for r in old {
            let share = self.fw_slot(f).and_then(|fw| fw.allocated.get(&r)).map_or(0.0, |e| e.1);
            let role = &mut self.roles[r as usize];
            role.frameworks.remove(&*id);
            role.order.remove(&FwKey { share: bits(share), ix: f });
            self.refresh_role(r);
        }
        let role_ix: Vec<Ix> = roles.iter().map(|r| self.role(r)).collect();
        let suppressed_ix: Vec<Ix> = suppressed.iter().map(|r| self.role(r)).collect();
        for &r in &role_ix {
            let share = match self.fw_slot(f).and_then(|fw| fw.allocated.get(&r)) {
                Some((res, _)) => self.share(res),
                None => 0.0,
            };
            if let Some(fw) = self.fw_mut(f)
                && let Some(e) = fw.allocated.get_mut(&r)
            {
                e.1 = share;
            }
            let role = &mut self.roles[r as usize];
            role.frameworks.insert(id.to_string());
            role.order.insert(FwKey { share: bits(share), ix: f });
            self.refresh_role(r);
        }
        if let Some(fw) = self.fw_mut(f) {
            fw.roles = roles.iter().cloned().collect();
            fw.suppressed = suppressed.iter().cloned().collect();
            fw.role_ix = role_ix;
            fw.suppressed_ix = suppressed_ix;
        }
    }

    /// Changes a framework's roles and suppressed roles (UPDATE_FRAMEWORK, re-subscription).
    pub fn update_framework(&mut self, id: &str, roles: &[String], suppressed: &[String]) {
        let Some(&f) = self.framework_ix.get(id) else { return };
        self.set_roles(f, roles, suppressed);
        self.mark_all_dirty();
    }

    /// Forgets a framework, releasing whatever it still holds.
    pub fn remove_framework(&mut self, id: &str) {
        let Some(&f) = self.framework_ix.get(id) else { return };
        self.set_roles(f, &[], &[]);
        self.framework_ix.remove(id);
        let Some(fw) = self.frameworks[f as usize].take() else { return };
        let held_roles: Vec<Ix> = fw.allocated.keys().copied().collect();
        let mut freed = Vec::new();
        for (a, slot) in self.agents.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            for &r in &held_roles {
                if let Some(res) = slot.allocations.remove(&(f, r)) {
                    slot.allocated.subtract(&res);
                    self.roles[r as usize].allocated.subtract(&res.scalars_only());
                    freed.push(a as Ix);
                }
            }
        }
        for (a, r) in fw.filtered {
            if let Some(slot) = self.agent_mut(a) {
                slot.filters.remove(&(f, r));
            }
        }
        for r in held_roles {
            self.refresh_unmet(r);
            self.refresh_role(r);
        }
        for a in freed {
            self.mark_dirty(a);
        }
        self.expiries.retain(|(_, fw, _, _)| *fw != f);
    }

    pub fn activate_framework(&mut self, id: &str) {
        if let Some(&f) = self.framework_ix.get(id)
            && let Some(fw) = self.fw_mut(f)
        {
            fw.active = true;
            self.mark_all_dirty();
        }
    }

    pub fn deactivate_framework(&mut self, id: &str) {
        if let Some(&f) = self.framework_ix.get(id)
            && let Some(fw) = self.fw_mut(f)
        {
            fw.active = false;
        }
    }

    /// Stops offers to the framework for `roles` (all of its roles when empty).
    pub fn suppress(&mut self, id: &str, roles: &[String]) {
        let Some(&f) = self.framework_ix.get(id) else { return };
        let add: Vec<(String, Ix)> = if roles.is_empty() {
            let fw = self.fw_slot(f).map(|fw| fw.roles.iter().cloned().collect::<Vec<_>>());
            fw.unwrap_or_default().into_iter().map(|r| (r.clone(), self.role(&r))).collect()
        } else {
            roles.iter().map(|r| (r.clone(), self.role(r))).collect()
        };
        if let Some(fw) = self.fw_mut(f) {
            for (name, r) in add {
                fw.suppressed.insert(name);
                if !fw.suppressed_ix.contains(&r) {
                    fw.suppressed_ix.push(r);
                }
            }
        }
    }

    /// Resumes offers for `roles` (all when empty) and clears their decline filters.
    pub fn revive(&mut self, id: &str, roles: &[String]) {
        let Some(&f) = self.framework_ix.get(id) else { return };
        let all = roles.is_empty();
        let role_ix: Vec<Ix> = roles.iter().filter_map(|r| self.role_ix.get(r).copied()).collect();
        let Some(fw) = self.fw_mut(f) else { return };
        if all {
            fw.suppressed.clear();
            fw.suppressed_ix.clear();
        } else {
            fw.suppressed.retain(|r| !roles.contains(r));
            fw.suppressed_ix.retain(|r| !role_ix.contains(r));
        }
        let cleared: Vec<(Ix, Ix)> =
            fw.filtered.iter().filter(|(_, r)| all || role_ix.contains(r)).copied().collect();
        for pair in &cleared {
            fw.filtered.remove(pair);
        }
        for (a, r) in cleared {
            if let Some(slot) = self.agent_mut(a) {
                slot.filters.remove(&(f, r));
            }
        }
        self.expiries.retain(|(_, fw, role, _)| !(*fw == f && (all || role_ix.contains(role))));
        self.mark_all_dirty();
    }

    pub fn set_weight(&mut self, role: &str, weight: f64) {
        if weight > 0.0 && weight.is_finite() {
            self.weights.insert(role.to_string(), weight);
            if let Some(&r) = self.role_ix.get(role) {
                self.roles[r as usize].weight = weight;
                self.refresh_role(r);
            }
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
        let r = self.role(role);
        self.roles[r as usize].has_quota = self.quotas.contains_key(role);
        self.refresh_unmet(r);
        self.refresh_role(r);
        self.mark_all_dirty();
    }

    pub fn quotas(&self) -> &BTreeMap<String, Quota> {
        &self.quotas
    }

    /// What a role holds (offered and used), by name.
    pub fn role_allocated(&self, role: &str) -> Resources {
        self.role_ix
            .get(role)
            .map(|&r| self.roles[r as usize].allocated.clone())
            .unwrap_or_default()
    }

    /// Unreserved resources free on active agents, by name: what guarantees are held from.
    fn free_unreserved(&self) -> Resources {
        let mut free = Resources::new();
        for a in self.agents.iter().flatten().filter(|a| a.active) {
            free.add(&a.total.minus(&a.allocated).unreserved().scalars_only());
        }
        free
    }

    /// `offer` cut to role `r`'s limits and to what other roles' unmet guarantees leave
    /// (`free`: the cluster's free unreserved resources, when some guarantee exists).
    fn fit_quota(&self, r: Ix, offer: Resources, free: Option<&Resources>) -> Resources {
        let mut offer = offer;
        let role = &self.roles[r as usize];
        if let Some(q) = self.quotas.get(&*role.name) {
            for (key, v) in q.limits.iter() {
                let Value::Scalar(limit) = v else { continue };
                let room = Scalar((limit.0 - role.allocated.scalar(&key.name).0).max(0));
                offer = cap(offer, &key.name, room, false);
            }
        }
        if let Some(free) = free {
            let need = self.unmet_total.minus(&role.unmet);
            for (name, want) in need.scalars() {
                let spare = Scalar((free.scalar(name).0 - want.0).max(0));
                offer = cap(offer, name, spare, true);
            }
        }
        offer
    }

    // -- resources --------------------------------------------------------------------------

    fn allocate_to(&mut self, f: Ix, a: Ix, r: Ix, res: &Resources) {
        if let Some(slot) = self.agent_mut(a) {
            slot.allocated.add(res);
            slot.allocations.entry((f, r)).or_default().add(res);
        }
        let scalars = res.scalars_only();
        if let Some(fw) = self.fw_mut(f) {
            fw.allocated.entry(r).or_insert_with(|| (Resources::new(), 0.0)).0.add(&scalars);
        }
        self.refresh_fw(f, r);
        self.roles[r as usize].allocated.add(&scalars);
        self.refresh_unmet(r);
        self.refresh_role(r);
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
        let (Some(&f), Some(&r)) = (self.framework_ix.get(framework), self.role_ix.get(role))
        else {
            // Nothing of an unknown framework or role is held; still, the agent may offer.
            if let Some(&a) = self.agent_ix.get(agent) {
                if let Some(slot) = self.agent_mut(a) {
                    slot.allocated.subtract(resources);
                }
                self.mark_dirty(a);
            }
            return;
        };
        let a = self.agent_ix.get(agent).copied();
        if let Some(slot) = a.and_then(|a| self.agent_mut(a)) {
            slot.allocated.subtract(resources);
            if let Some(held) = slot.allocations.get_mut(&(f, r)) {
                held.subtract(resources);
                if held.is_empty() {
                    slot.allocations.remove(&(f, r));
                }
            }
        }
        let scalars = resources.scalars_only();
        if let Some(fw) = self.fw_mut(f)
            && let Some(held) = fw.allocated.get_mut(&r)
        {
            held.0.subtract(&scalars);
        }
        self.refresh_fw(f, r);
        self.roles[r as usize].allocated.subtract(&scalars);
        self.refresh_unmet(r);
        self.refresh_role(r);
        let Some(a) = a else { return };
        if let Some(d) = refuse.filter(|d| !d.is_zero() && !resources.is_empty()) {
            let expires = now + d.min(MAX_REFUSE);
            let old = self.agent_mut(a).and_then(|slot| {
                slot.filters.insert((f, r), Filter { refused: resources.clone(), expires })
            });
            if let Some(old) = old {
                self.expiries.remove(&(old.expires, f, r, a));
            }
            self.expiries.insert((expires, f, r, a));
            if let Some(fw) = self.fw_mut(f) {
                fw.filtered.insert((a, r));
            }
        }
        self.mark_dirty(a);
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
            let Some((_, f, r, a)) = self.expiries.pop_first() else { break };
            if let Some(slot) = self.agent_mut(a) {
                slot.filters.remove(&(f, r));
            }
            if let Some(fw) = self.fw_mut(f) {
                fw.filtered.remove(&(a, r));
            }
            self.mark_dirty(a);
        }
    }

    /// Whether `r` is worth offering: its quantities (reserved or not) cover one minimum.
    fn allocatable(&self, r: &Resources) -> bool {
        self.config
            .min_allocatable
            .iter()
            .any(|min| min.scalars().all(|(name, want)| r.scalar(name) >= want))
    }

    /// Runs allocation over the dirty agents and returns the decisions, already recorded as
    /// allocated.
    pub fn allocate(&mut self, now: Time) -> Vec<Allocation> {
        self.now = now;
        self.expire_filters(now);
        if self.stale {
            self.rebuild();
        }
        let all_since = self.all_dirty_since.take();
        let mut agents = std::mem::take(&mut self.dirty);
        if std::mem::take(&mut self.dirty_all) {
            // Everyone is eligible again, but only these can have anything to give.
            agents.extend(self.leftover.iter().copied());
        }
        agents.sort_unstable();
        agents.dedup();
        self.visited += agents.len() as u64;
        let mut out = Vec::new();
        let mut free =
            self.quotas.values().any(|q| !q.guarantees.is_empty()).then(|| self.free_unreserved());
        for a in agents {
            let Some(slot) = self.agent_mut(a) else { continue };
            slot.dirty = false;
            let since = match (slot.dirty_since.take(), all_since) {
                (Some(x), Some(y)) => x.min(y),
                (x, y) => x.or(y).unwrap_or(now),
            };
            if !slot.active {
                continue;
            }
            // One agent can go to several roles: what is reserved for one role is offered
            // only to it, and what the first pick leaves (others' reservations, quota cuts)
            // goes on.
            let mut available = slot.total.minus(&slot.allocated);
            while self.allocatable(&available) {
                let Some((f, r, cut)) = self.pick(a, &available, free.as_ref()) else { break };
                // `None`: all of it (the common case, without a copy).
                let offer = match cut {
                    None => std::mem::take(&mut available),
                    Some(part) => {
                        available.subtract(&part);
                        part
                    }
                };
                self.allocate_to(f, a, r, &offer);
                if let Some(free) = free.as_mut() {
                    free.subtract(&offer.unreserved().scalars_only());
                }
                let (Some(fw), Some(agent)) = (self.fw_slot(f), self.agent_slot(a)) else {
                    continue;
                };
                out.push(Allocation {
                    framework: fw.id.to_string(),
                    agent: agent.id.to_string(),
                    role: self.roles[r as usize].name.to_string(),
                    resources: offer,
                    since,
                });
            }
            if self.allocatable(&available) {
                self.leftover.insert(a);
            } else {
                self.leftover.remove(&a);
            }
        }
        out
    }

    /// The (framework, role) that gets what it may be offered of `available` on agent `a`
    /// (unreserved and reserved for the role, within the role's quota), by two-level DRF;
    /// with that part of `available`, or `None` for all of it.
    fn pick(
        &self,
        a: Ix,
        available: &Resources,
        free: Option<&Resources>,
    ) -> Option<(Ix, Ix, Option<Resources>)> {
        let agent = self.agent_slot(a)?;
        // The common case (nothing reserved, no quota) offers `available` as it is, without a
        // copy per role.
        let any_reserved = available.iter().any(|(k, _)| k.reservation.is_some());
        for rk in &self.role_order {
            let r = rk.ix;
            let role = &self.roles[r as usize];
            let mut offerable = if any_reserved {
                Cow::Owned(available.offerable_to(&role.name))
            } else {
                Cow::Borrowed(available)
            };
            if free.is_some() || role.has_quota {
                offerable = Cow::Owned(self.fit_quota(r, offerable.into_owned(), free));
            }
            if !self.allocatable(&offerable) {
                continue;
            }
            for fk in &role.order {
                let Some(fw) = self.fw_slot(fk.ix) else { continue };
                if !fw.active || fw.suppressed_ix.contains(&r) {
                    continue;
                }
                if !agent.filters.is_empty()
                    && let Some(filter) = agent.filters.get(&(fk.ix, r))
                    && filter.refused.contains(&offerable)
                {
                    continue;
                }
                let part = match offerable {
                    Cow::Borrowed(_) => None,
                    Cow::Owned(res) => Some(res),
                };
                return Some((fk.ix, r, part));
            }
        }
        None
    }

    // -- views ------------------------------------------------------------------------------

    /// How many agents allocation passes have visited so far.
    pub fn agents_visited(&self) -> u64 {
        self.visited
    }

    /// What is allocated (offered or used) on an agent.
    pub fn agent_allocated(&self, agent: &str) -> Option<&Resources> {
        self.agent_slot(*self.agent_ix.get(agent)?).map(|a| &a.allocated)
    }

    /// A framework's allocation across all agents and roles (scalars only).
    pub fn framework_allocated(&self, framework: &str) -> Resources {
        let mut r = Resources::new();
        if let Some(f) = self.framework_ix.get(framework).and_then(|&f| self.fw_slot(f)) {
            for (a, _) in f.allocated.values() {
                r.add(a);
            }
        }
        r
    }

    /// A framework's dominant share (the web UI's "max share").
    pub fn framework_share(&self, framework: &str) -> f64 {
        self.share(&self.framework_allocated(framework))
    }

    /// Roles known to the allocator with (weight, allocation, frameworks): those with a
    /// framework or an allocation.
    pub fn roles(&self) -> impl Iterator<Item = (&str, f64, &Resources, &BTreeSet<String>)> {
        self.role_ix
            .iter()
            .map(|(n, &r)| (n, &self.roles[r as usize]))
            .filter(|(_, r)| !r.frameworks.is_empty() || !r.allocated.is_empty())
            .map(|(n, r)| (n.as_str(), self.weight(n), &r.allocated, &r.frameworks))
    }

    pub fn total(&self) -> &Resources {
        &self.total
    }

    /// Checks the bookkeeping invariants; returns a description of the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut by_fw: FxHashMap<(Ix, Ix), Resources> = FxHashMap::default();
        for (ix, a) in self.agents.iter().enumerate() {
            let Some(a) = a else { continue };
            // A pass over every agent visits only the dirty and the leftover ones.
            let leftover = self.leftover.contains(&(ix as Ix));
            if a.active && !a.dirty && !leftover && self.allocatable(&a.total.minus(&a.allocated)) {
                return Err(format!(
                    "agent {} has {} unallocated but is neither dirty nor leftover",
                    a.id,
                    a.total.minus(&a.allocated)
                ));
            }
            if !a.total.contains(&a.allocated) {
                return Err(format!(
                    "agent {} over-committed: {} > {}",
                    a.id, a.allocated, a.total
                ));
            }
            let mut sum = Resources::new();
            for (k, r) in &a.allocations {
                sum.add(r);
                by_fw.entry(*k).or_default().add(&r.scalars_only());
            }
            if sum != a.allocated && !(sum.is_empty() && a.allocated.is_empty()) {
                return Err(format!(
                    "agent {}: allocations sum {sum} != allocated {}",
                    a.id, a.allocated
                ));
            }
        }
        for ((f, r), res) in &by_fw {
            let held = self.fw_slot(*f).and_then(|fw| fw.allocated.get(r)).map(|e| &e.0);
            if held.is_some_and(|h| !h.contains(res) || !res.contains(h)) {
                return Err(format!("framework {f} role {r}: {res} on agents vs {held:?}"));
            }
        }
        let mut total_alloc = Scalar::ZERO;
        for a in self.agents.iter().flatten() {
            total_alloc.0 += a.allocated.scalar("cpus").0;
        }
        let role_alloc: i64 = self.roles.iter().map(|r| r.allocated.scalar("cpus").0).sum();
        if total_alloc.0 != role_alloc {
            return Err(format!(
                "cpus allocated on agents {total_alloc:?} != in roles {role_alloc}"
            ));
        }
        // The orders hold exactly the members, at their current shares.
        for (r, role) in self.roles.iter().enumerate() {
            if role.order.len() != role.frameworks.len() {
                return Err(format!("role {}: order and members differ", role.name));
            }
            if !self.stale {
                for k in &role.order {
                    let want = self
                        .fw_slot(k.ix)
                        .and_then(|fw| fw.allocated.get(&(r as Ix)))
                        .map_or(0, |(res, _)| bits(self.share(res)));
                    if k.share != want {
                        return Err(format!(
                            "role {}: stale share for framework {}",
                            role.name, k.ix
                        ));
                    }
                }
            }
        }
        let mut unmet = Resources::new();
        for role in &self.roles {
            unmet.add(&role.unmet);
        }
        if unmet != self.unmet_total && !(unmet.is_empty() && self.unmet_total.is_empty()) {
            return Err(format!("unmet guarantees {unmet} != total {}", self.unmet_total));
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
    fn a_pass_over_a_full_cluster_visits_only_agents_with_something_left() {
        let mut a = new();
        a.add_framework("f1", &roles(&["*"]), &[], true);
        for i in 0..1000 {
            a.add_agent(&format!("a{i}"), r("cpus:2;mem:1024"), &[]);
        }
        let first = a.allocate(t(0));
        assert_eq!(first.len(), 1000);
        // f1 declines one agent for a minute: that one is left over.
        let back = first.iter().find(|g| g.agent == "a7").unwrap();
        a.recover(t(0), "f1", "a7", "*", &back.resources, Some(Duration::from_secs(60)));
        assert!(a.allocate(t(0)).is_empty());
        a.check_invariants().unwrap();
        // A new framework makes every agent eligible, but only a7 has anything to give.
        let before = a.agents_visited();
        a.add_framework("f2", &roles(&["*"]), &[], true);
        let got = a.allocate(t(1));
        assert_eq!(a.agents_visited() - before, 1);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].framework.as_str(), got[0].agent.as_str()), ("f2", "a7"));
        // Nothing is left anywhere now: a revive visits nobody.
        let before = a.agents_visited();
        a.revive("f1", &[]);
        assert!(a.allocate(t(2)).is_empty());
        assert_eq!(a.agents_visited() - before, 0);
        a.check_invariants().unwrap();
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
                        prop_assert!(a.framework_ix.contains_key(&got.framework));
                        held.push(got);
                    }
                    prop_assert!(a.check_invariants().is_ok(), "{:?}", a.check_invariants());
                    // What the test believes is held equals what the allocator says.
                    for agent in a.agent_ix.keys() {
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
