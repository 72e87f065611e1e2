//! The legacy JSON views (`/state`, `/state-summary`, `/slaves`, `/frameworks`, `/tasks`,
//! `/roles`, `/flags`, `/metrics/snapshot`, `/version`) in Mesos' shapes, built from the
//! core's read-only accessors. The Mesos web UI and CLI read these field names.

use corral_wire::mesos::json;
use corral_wire::mesos::v1;
use corral_wire::resources::Resources;
use serde_json::{Map, Value, json};

use crate::core::{Agent, AgentState, Framework, Master, Task, by_id};

/// `/version`. The version is Mesos' compatibility version: clients parse it as numbers.
pub fn version() -> Value {
    json!({
        "version": corral_wire::MESOS_COMPAT_VERSION,
        "build_date": option_env!("CORRAL_BUILD_DATE").unwrap_or(""),
        "build_time": 0.0,
        "build_user": "corral",
        "corral_version": env!("CARGO_PKG_VERSION"),
    })
}

/// `VersionInfo` for GET_VERSION (the same facts as `/version`).
pub fn version_info() -> v1::VersionInfo {
    v1::VersionInfo {
        version: corral_wire::MESOS_COMPAT_VERSION.to_string(),
        build_date: Some(option_env!("CORRAL_BUILD_DATE").unwrap_or("").to_string()),
        build_time: Some(0.0),
        build_user: Some("corral".into()),
        git_sha: None,
        git_branch: None,
        git_tag: None,
    }
}

fn task_json(t: &Task) -> Value {
    let mut o = Map::new();
    o.insert("id".into(), json!(t.id));
    o.insert("name".into(), json!(t.name));
    o.insert("framework_id".into(), json!(t.framework_id));
    o.insert("executor_id".into(), json!(""));
    o.insert("slave_id".into(), json!(t.agent_id));
    o.insert("state".into(), json!(t.state.as_str_name()));
    o.insert("resources".into(), t.resources.to_summary_json());
    o.insert("role".into(), json!(t.role));
    let statuses: Vec<Value> = t
        .statuses()
        .iter()
        .map(|s| {
            let mut st = Map::new();
            st.insert("state".into(), json!(s.state().as_str_name()));
            st.insert("timestamp".into(), json!(s.timestamp.unwrap_or(0.0)));
            if let Some(c) = &s.container_status {
                st.insert("container_status".into(), json::to_value(c));
            }
            if let Some(h) = s.healthy {
                st.insert("healthy".into(), json!(h));
            }
            Value::Object(st)
        })
        .collect();
    o.insert("statuses".into(), Value::Array(statuses));
    if let Some(u) = &t.usage {
        o.insert("statistics".into(), json::to_value(&u.to_statistics()));
    }
    if let Some(u) = &t.user {
        o.insert("user".into(), json!(u));
    }
    if let Some(info) = &t.info() {
        if let Some(l) = &info.labels {
            o.insert(
                "labels".into(),
                json::to_value(l).get("labels").cloned().unwrap_or(json!([])),
            );
        }
        if let Some(c) = &info.container {
            o.insert("container".into(), json::to_value(c));
        }
        if let Some(h) = &info.health_check {
            o.insert("health_check".into(), json::to_value(h));
        }
        if let Some(d) = &info.discovery {
            o.insert("discovery".into(), json::to_value(d));
        }
    }
    Value::Object(o)
}

fn used_by(fw: &Framework) -> Resources {
    let mut r = Resources::new();
    for t in fw.tasks.values().filter(|t| !corral_wire::mesos::is_terminal(t.state)) {
        r.add(&t.resources.scalars_only());
    }
    r
}

fn framework_json(m: &Master, fw: &Framework) -> Value {
    let offers: Vec<Value> = fw
        .offers
        .iter()
        .filter_map(|id| m.offers().get(id))
        .map(|o| {
            json!({
                "id": o.id,
                "framework_id": o.framework_id,
                "slave_id": o.agent_id,
                "allocation_info": {"role": o.role},
                "resources": o.resources.to_summary_json(),
            })
        })
        .collect();
    let mut offered = Resources::new();
    for id in &fw.offers {
        if let Some(o) = m.offers().get(id) {
            offered.add(&o.resources.scalars_only());
        }
    }
    let used = used_by(fw);
    let info = &fw.info;
    let caps: Vec<Value> = info
        .capabilities
        .iter()
        .filter_map(|c| c.r#type)
        .filter_map(|t| v1::framework_info::capability::Type::try_from(t).ok())
        .map(|t| json!(t.as_str_name()))
        .collect();
    let mut o = Map::new();
    o.insert("id".into(), json!(fw.id));
    o.insert("name".into(), json!(info.name));
    o.insert("user".into(), json!(info.user));
    o.insert("hostname".into(), json!(info.hostname.clone().unwrap_or_default()));
    o.insert("webui_url".into(), json!(info.webui_url.clone().unwrap_or_default()));
    o.insert("principal".into(), json!(info.principal.clone().unwrap_or_default()));
    o.insert("capabilities".into(), Value::Array(caps));
    o.insert("active".into(), json!(fw.connected()));
    o.insert("connected".into(), json!(fw.connected()));
    o.insert("recovered".into(), json!(fw.recovered));
    o.insert("failover_timeout".into(), json!(info.failover_timeout.unwrap_or(0.0)));
    o.insert("checkpoint".into(), json!(info.checkpoint.unwrap_or(false)));
    o.insert(
        "registered_time".into(),
        json!(fw.registered_time.map(|t| t.as_secs_f64()).unwrap_or(0.0)),
    );
    o.insert(
        "unregistered_time".into(),
        json!(fw.unregistered_time.map(|t| t.as_secs_f64()).unwrap_or(0.0)),
    );
    if let Some(t) = fw.reregistered_time {
        o.insert("reregistered_time".into(), json!(t.as_secs_f64()));
    }
    o.insert("roles".into(), json!(fw.roles));
    o.insert("suppressed_roles".into(), json!(fw.suppressed));
    o.insert("used_resources".into(), used.to_summary_json());
    o.insert("offered_resources".into(), offered.to_summary_json());
    o.insert("resources".into(), used.plus(&offered).to_summary_json());
    o.insert("max_share".into(), json!(m.allocator().framework_share(&fw.id)));
    o.insert("tasks".into(), Value::Array(by_id(&fw.tasks).map(task_json).collect()));
    o.insert(
        "unreachable_tasks".into(),
        Value::Array(by_id(&fw.unreachable_tasks).map(task_json).collect()),
    );
    o.insert(
        "completed_tasks".into(),
        Value::Array(fw.completed_tasks.iter().map(task_json).collect()),
    );
    o.insert("offers".into(), Value::Array(offers));
    o.insert("executors".into(), json!([]));
    if let Some(l) = &info.labels {
        o.insert("labels".into(), json::to_value(l).get("labels").cloned().unwrap_or(json!([])));
    }
    Value::Object(o)
}

fn agent_json(m: &Master, a: &Agent) -> Value {
    let mut used = Resources::new();
    for (fid, tid) in &a.tasks {
        if let Some(t) = m.frameworks().get(fid).and_then(|f| f.tasks.get(tid))
            && !corral_wire::mesos::is_terminal(t.state)
        {
            used.add(&t.resources);
        }
    }
    let mut offered = Resources::new();
    for id in &a.offers {
        if let Some(o) = m.offers().get(id) {
            offered.add(&o.resources);
        }
    }
    let reg = &a.registration;
    let mut attrs = Map::new();
    for attr in &reg.attributes {
        use corral_wire::proto::AttributeValue as V;
        let v = match &attr.value {
            V::Text(t) => json!(t),
            V::Scalar(s) => json!(s.as_f64()),
            V::Ranges(r) => json!(r.to_string()),
            V::Set(s) => json!(format!("{{{}}}", s.join(", "))),
        };
        attrs.insert(attr.name.clone(), v);
    }
    let mut o = Map::new();
    o.insert("id".into(), json!(a.id));
    o.insert("hostname".into(), json!(reg.hostname));
    o.insert("port".into(), json!(reg.http_port));
    o.insert("pid".into(), json!(a.pid()));
    o.insert("attributes".into(), Value::Object(attrs));
    o.insert("registered_time".into(), json!(a.registered_time.as_secs_f64()));
    if let Some(t) = a.reregistered_time {
        o.insert("reregistered_time".into(), json!(t.as_secs_f64()));
    }
    o.insert("resources".into(), reg.resources.to_summary_json());
    o.insert("used_resources".into(), used.to_summary_json());
    o.insert("offered_resources".into(), offered.to_summary_json());
    let reserved: Map<String, Value> = reg
        .resources
        .reservation_roles()
        .into_iter()
        .map(|role| (role.to_string(), reg.resources.reserved_for(role).to_summary_json()))
        .collect();
    o.insert("reserved_resources".into(), Value::Object(reserved));
    o.insert("unreserved_resources".into(), reg.resources.unreserved().to_summary_json());
    o.insert("active".into(), json!(a.state == AgentState::Connected && !a.deactivated));
    o.insert("deactivated".into(), json!(a.deactivated));
    if let Some(d) = &a.drain {
        let mut config = json!({"mark_gone": d.mark_gone});
        if let Some(g) = d.max_grace_period {
            config["max_grace_period"] = json!({"nanoseconds": g.as_nanos() as u64});
        }
        o.insert("drain_info".into(), json!({"state": d.state.as_str_name(), "config": config}));
    }
    o.insert("connected".into(), json!(a.state == AgentState::Connected));
    o.insert("version".into(), json!(corral_wire::MESOS_COMPAT_VERSION));
    o.insert("corral_version".into(), json!(reg.version));
    o.insert("capabilities".into(), json!(["MULTI_ROLE", "HIERARCHICAL_ROLE"]));
    o.insert("isolation".into(), reg.isolation.to_json());
    Value::Object(o)
}

/// Agents the registry lists that have not re-registered since the master started.
fn recovered_slaves(m: &Master) -> Value {
    Value::Array(m.recovered_agents().map(|a| json::to_value(&a)).collect())
}

/// `/state`.
pub fn state(m: &Master, flags: &[(String, String)]) -> Value {
    let id = m.identity();
    let info = id.master_info();
    let agents = m.agents();
    let count = |s: AgentState| agents.values().filter(|a| a.state == s).count();
    let flags: Map<String, Value> = flags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let mut v = version();
    let o = v.as_object_mut().expect("version() is an object");
    o.insert("start_time".into(), json!(m.start_time().as_secs_f64()));
    o.insert("elected_time".into(), json!(m.start_time().as_secs_f64()));
    o.insert("id".into(), json!(id.id));
    o.insert("pid".into(), json!(id.pid()));
    o.insert("hostname".into(), json!(id.hostname));
    o.insert("capabilities".into(), json!(["AGENT_UPDATE", "AGENT_DRAINING", "QUOTA_V2"]));
    o.insert("activated_slaves".into(), json!(count(AgentState::Connected)));
    o.insert("deactivated_slaves".into(), json!(count(AgentState::Disconnected)));
    o.insert("unreachable_slaves".into(), json!(count(AgentState::Unreachable)));
    o.insert("leader".into(), json!(id.pid()));
    o.insert("leader_info".into(), json::to_value(&info));
    o.insert("flags".into(), Value::Object(flags));
    o.insert(
        "slaves".into(),
        Value::Array(
            agents
                .values()
                .filter(|a| a.state != AgentState::Unreachable)
                .map(|a| agent_json(m, a))
                .collect(),
        ),
    );
    o.insert("recovered_slaves".into(), recovered_slaves(m));
    o.insert(
        "frameworks".into(),
        Value::Array(by_id(m.frameworks()).map(|f| framework_json(m, f)).collect()),
    );
    o.insert(
        "completed_frameworks".into(),
        Value::Array(m.completed_frameworks().iter().map(|f| framework_json(m, f)).collect()),
    );
    o.insert("orphan_tasks".into(), json!([]));
    o.insert("unregistered_frameworks".into(), json!([]));
    v
}

/// `/slaves` (`?slave_id=` keeps that one agent).
pub fn slaves(m: &Master, slave_id: Option<&str>) -> Value {
    let slaves: Vec<Value> = by_id(m.agents())
        .filter(|a| a.state != AgentState::Unreachable)
        .filter(|a| slave_id.is_none_or(|id| a.id == id))
        .map(|a| agent_json(m, a))
        .collect();
    json!({"slaves": slaves, "recovered_slaves": recovered_slaves(m)})
}

/// `/frameworks` (`?framework_id=` keeps that one framework).
pub fn frameworks(m: &Master, framework_id: Option<&str>) -> Value {
    let keep = |f: &&Framework| framework_id.is_none_or(|id| f.id == id);
    json!({
        "frameworks": by_id(m.frameworks()).filter(keep).map(|f| framework_json(m, f)).collect::<Vec<_>>(),
        "completed_frameworks": m.completed_frameworks().iter().filter(keep).map(|f| framework_json(m, f)).collect::<Vec<_>>(),
        "unregistered_frameworks": [],
    })
}

/// The query of `/tasks`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct TasksQuery {
    /// How many (default 100; -1: all).
    pub limit: Option<i64>,
    pub offset: Option<usize>,
    /// `asc` or `des` (default) by the earliest status timestamp.
    pub order: Option<String>,
    pub framework_id: Option<String>,
    pub task_id: Option<String>,
}

/// `/tasks`: active, unreachable and completed tasks of active and completed frameworks,
/// ordered by their first status's timestamp, then paged. `Err` is a 400 text.
pub fn tasks(m: &Master, q: &TasksQuery) -> Result<Value, String> {
    let limit = match q.limit.unwrap_or(100) {
        -1 => usize::MAX,
        n if n >= 0 => n as usize,
        n => return Err(format!("Failed to parse 'limit': {n} is not -1 or a count")),
    };
    let descending = match q.order.as_deref() {
        None | Some("des") => true,
        Some("asc") => false,
        Some(o) => return Err(format!("Failed to parse 'order': '{o}' is not 'asc' or 'des'")),
    };
    let mut all: Vec<&Task> = Vec::new();
    for f in m.frameworks().values().chain(m.completed_frameworks().iter()) {
        if q.framework_id.as_deref().is_some_and(|id| f.id != id) {
            continue;
        }
        all.extend(f.tasks.values());
        all.extend(f.unreachable_tasks.values());
        all.extend(f.completed_tasks.iter());
    }
    if let Some(id) = q.task_id.as_deref() {
        all.retain(|t| t.id == id);
    }
    let started = |t: &Task| t.first_status().and_then(|s| s.timestamp).unwrap_or(0.0);
    all.sort_by(|a, b| started(a).total_cmp(&started(b)).then_with(|| a.id.cmp(&b.id)));
    if descending {
        all.reverse();
    }
    let page: Vec<Value> =
        all.into_iter().skip(q.offset.unwrap_or(0)).take(limit).map(task_json).collect();
    Ok(json!({"tasks": page}))
}

/// `/flags`.
pub fn flags(flags: &[(String, String)]) -> Value {
    let f: Map<String, Value> = flags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    json!({"flags": f})
}

/// The per-state task counters of `/state-summary`, over `tasks`.
fn state_counts<'a>(tasks: impl Iterator<Item = &'a Task>) -> Map<String, Value> {
    const STATES: [v1::TaskState; 10] = [
        v1::TaskState::TaskStaging,
        v1::TaskState::TaskStarting,
        v1::TaskState::TaskRunning,
        v1::TaskState::TaskKilling,
        v1::TaskState::TaskFinished,
        v1::TaskState::TaskKilled,
        v1::TaskState::TaskFailed,
        v1::TaskState::TaskLost,
        v1::TaskState::TaskError,
        v1::TaskState::TaskUnreachable,
    ];
    let mut counts = [0u64; 10];
    for t in tasks {
        if let Some(i) = STATES.iter().position(|s| *s == t.state) {
            counts[i] += 1;
        }
    }
    STATES.iter().zip(counts).map(|(s, n)| (s.as_str_name().to_string(), json!(n))).collect()
}

/// Every task a framework has (active, unreachable, completed).
fn all_tasks(f: &Framework) -> impl Iterator<Item = &Task> {
    f.tasks.values().chain(f.unreachable_tasks.values()).chain(f.completed_tasks.iter())
}

/// `/state-summary`: agents and frameworks with per-state task counts, without the tasks.
pub fn state_summary(m: &Master) -> Value {
    let frameworks: Vec<&Framework> =
        by_id(m.frameworks()).chain(m.completed_frameworks().iter()).collect();
    let slaves: Vec<Value> = by_id(m.agents())
        .filter(|a| a.state != AgentState::Unreachable)
        .map(|a| {
            let mut o = match agent_json(m, a) {
                Value::Object(o) => o,
                _ => Map::new(),
            };
            let on_agent =
                || frameworks.iter().flat_map(|f| all_tasks(f)).filter(|t| t.agent_id == a.id);
            o.extend(state_counts(on_agent()));
            let mut ids: Vec<&str> = on_agent().map(|t| t.framework_id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            o.insert("framework_ids".into(), json!(ids));
            Value::Object(o)
        })
        .collect();
    let summaries: Vec<Value> = frameworks
        .iter()
        .map(|f| {
            let full = framework_json(m, f);
            let mut o = Map::new();
            for k in [
                "id",
                "name",
                "used_resources",
                "offered_resources",
                "capabilities",
                "hostname",
                "webui_url",
                "active",
                "connected",
                "recovered",
            ] {
                o.insert(k.into(), full[k].clone());
            }
            o.extend(state_counts(all_tasks(f)));
            let mut ids: Vec<&str> = all_tasks(f).map(|t| t.agent_id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            o.insert("slave_ids".into(), json!(ids));
            Value::Object(o)
        })
        .collect();
    json!({"hostname": m.identity().hostname, "slaves": slaves, "frameworks": summaries})
}

/// Only the named scalars, as `{name: number}` (quota guarantees and limits).
fn scalars_json(r: &Resources) -> Value {
    Value::Object(r.scalars().map(|(n, v)| (n.to_string(), json!(v.as_f64()))).collect())
}

/// `/roles`: every role the allocator knows, has a weight or a quota, with its weight, quota,
/// what it holds and offers, and its frameworks.
pub fn roles(m: &Master) -> Value {
    let empty = (Resources::new(), std::collections::BTreeSet::new());
    let known: Vec<&str> = m.allocator().roles().map(|(name, ..)| name).collect();
    // Roles with a configured weight are listed even without frameworks (as Mesos does).
    let weighted = m
        .weights()
        .iter()
        .filter(|(r, _)| !known.contains(&r.as_str()))
        .map(|(r, w)| (r.as_str(), *w, &empty.0, &empty.1));
    // So are roles with a quota.
    let listed: Vec<&str> =
        known.iter().copied().chain(m.weights().keys().map(String::as_str)).collect();
    let with_quota = m
        .allocator()
        .quotas()
        .keys()
        .filter(|r| !listed.contains(&r.as_str()))
        .map(|r| (r.as_str(), m.allocator().weight(r), &empty.0, &empty.1));
    let roles: Vec<Value> = m
        .allocator()
        .roles()
        .chain(weighted)
        .chain(with_quota)
        .map(|(name, weight, allocated, frameworks)| {
            let quota = m.allocator().quotas().get(name);
            let mut offered = Resources::new();
            for o in m.offers().values().filter(|o| o.role == name) {
                offered.add(&o.resources.scalars_only());
            }
            json!({
                "name": name,
                "weight": weight,
                "quota": {
                    "role": name,
                    "guarantee": quota.map(|q| scalars_json(&q.guarantees)).unwrap_or(json!({})),
                    "limit": quota.map(|q| scalars_json(&q.limits)).unwrap_or(json!({})),
                    "consumed": allocated.to_summary_json(),
                },
                "resources": allocated.to_summary_json(),
                "allocated": allocated.to_summary_json(),
                "offered": offered.to_summary_json(),
                "reserved": {},
                "frameworks": frameworks,
            })
        })
        .collect();
    json!({"roles": roles})
}

/// `/metrics/snapshot`: Mesos' metric names wherever the same quantity exists here.
pub fn metrics_snapshot(m: &Master) -> Value {
    let mut o = Map::new();
    let mut put = |k: &str, v: f64| {
        o.insert(format!("master/{k}"), json!(v));
    };
    put("elected", 1.0);
    put("uptime_secs", m.now().as_secs_f64() - m.start_time().as_secs_f64());
    let agents = m.agents();
    let n = |s: AgentState| agents.values().filter(|a| a.state == s).count() as f64;
    let inactive =
        agents.values().filter(|a| a.state == AgentState::Connected && a.deactivated).count()
            as f64;
    put("slaves_active", n(AgentState::Connected) - inactive);
    put("slaves_inactive", inactive);
    put("slaves_connected", n(AgentState::Connected));
    put("slaves_disconnected", n(AgentState::Disconnected));
    put("slaves_unreachable", n(AgentState::Unreachable));
    let fws = m.frameworks();
    let connected = fws.values().filter(|f| f.connected()).count() as f64;
    put("frameworks_active", connected);
    put("frameworks_inactive", fws.len() as f64 - connected);
    put("frameworks_connected", connected);
    put("frameworks_disconnected", fws.len() as f64 - connected);
    let counts =
        state_counts(fws.values().chain(m.completed_frameworks().iter()).flat_map(all_tasks));
    for (state, count) in &counts {
        let name = state.trim_start_matches("TASK_").to_lowercase();
        put(&format!("tasks_{name}"), count.as_f64().unwrap_or(0.0));
    }
    // Resources: total over connected agents, used by live tasks.
    let mut total = Resources::new();
    for a in agents.values().filter(|a| a.state == AgentState::Connected) {
        total.add(&a.registration.resources.scalars_only());
    }
    let mut used = Resources::new();
    for f in fws.values() {
        used.add(&used_by(f));
    }
    for r in ["cpus", "mem", "disk", "gpus"] {
        let (t, u) = (total.scalar(r).as_f64(), used.scalar(r).as_f64());
        put(&format!("{r}_total"), t);
        put(&format!("{r}_used"), u);
        put(&format!("{r}_percent"), if t > 0.0 { u / t } else { 0.0 });
    }
    put("outstanding_offers", m.offers().len() as f64);
    let c = &m.metrics;
    put("valid_status_updates", c.valid_status_updates as f64);
    put("invalid_status_updates", c.invalid_status_updates as f64);
    put("valid_status_update_acknowledgements", c.valid_status_update_acknowledgements as f64);
    put("invalid_status_update_acknowledgements", c.invalid_status_update_acknowledgements as f64);
    put("messages_decline_offers", c.offers_declined as f64);
    put("messages_launch_tasks", c.offers_accepted as f64);
    put("slave_registrations", c.agent_registrations as f64);
    put("slave_reregistrations", c.agent_reregistrations as f64);
    put("slave_unreachable_completed", c.agents_unreachable as f64);
    let mut all: Map<String, Value> = o;
    all.insert("allocator/mesos/allocation_runs".into(), json!(c.allocation_runs as f64));
    all.insert("master/offers_sent".into(), json!(c.offers_sent as f64));
    all.insert("master/offers_rescinded".into(), json!(c.offers_rescinded as f64));
    all.insert("master/tasks_launched".into(), json!(c.tasks_launched as f64));
    timer(&mut all, "allocator/mesos/allocation_run_ms", &m.allocation_run);
    for (stage, lat) in offer_path_totals(m).named() {
        timer(&mut all, &format!("master/offer_path/{stage}_ms"), lat);
    }
    Value::Object(all)
}

/// Every framework's offer-path histograms merged (frameworks live and completed).
pub fn offer_path_totals(m: &Master) -> crate::core::offer_path::Stages {
    let mut total = crate::core::offer_path::Stages::default();
    for f in m.frameworks().values().chain(m.completed_frameworks().iter()) {
        for s in f.offer_path.values() {
            total.merge(s);
        }
    }
    total
}

/// A histogram as a Mesos timer: `NAME` (the last... here the median), `NAME/count`,
/// `/min`-less percentiles `p50`, `p90`, `p95`, `p99`, `p999`, `p9999` and `max`, in ms.
fn timer(o: &mut Map<String, Value>, name: &str, l: &crate::core::offer_path::Latency) {
    let ms = |d: std::time::Duration| json!(d.as_secs_f64() * 1e3);
    o.insert(name.to_string(), ms(l.quantile(0.5)));
    o.insert(format!("{name}/count"), json!(l.count() as f64));
    for (suffix, q) in [
        ("p50", 0.5),
        ("p90", 0.9),
        ("p95", 0.95),
        ("p99", 0.99),
        ("p999", 0.999),
        ("p9999", 0.9999),
    ] {
        o.insert(format!("{name}/{suffix}"), ms(l.quantile(q)));
    }
    o.insert(format!("{name}/max"), ms(l.max()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Identity, MasterConfig, Time};

    fn master(weights: Vec<(String, f64)>) -> Master {
        let identity = Identity {
            id: "m".into(),
            hostname: "localhost".into(),
            ip: std::net::Ipv4Addr::LOCALHOST,
            port: 5050,
            version: "1.11.0".into(),
        };
        Master::new(MasterConfig { weights, ..MasterConfig::default() }, identity, Time(1))
    }

    #[test]
    fn roles_with_a_configured_weight_are_listed_without_frameworks() {
        assert_eq!(roles(&master(Vec::new())), json!({"roles": []}));
        let v = roles(&master(vec![("analytics".into(), 2.5)]));
        let r = &v["roles"][0];
        assert_eq!(r["name"], "analytics");
        assert_eq!(r["weight"], 2.5);
        assert_eq!(r["frameworks"], json!([]));
        assert_eq!(r["allocated"]["cpus"], 0.0);
    }

    #[test]
    fn task_queries_are_validated() {
        let m = master(Vec::new());
        let q = |limit: Option<i64>, order: Option<&str>| TasksQuery {
            limit,
            order: order.map(String::from),
            ..TasksQuery::default()
        };
        assert_eq!(tasks(&m, &q(None, None)).unwrap(), json!({"tasks": []}));
        assert!(tasks(&m, &q(Some(-1), Some("asc"))).is_ok());
        assert!(tasks(&m, &q(Some(-2), None)).unwrap_err().contains("limit"));
        assert!(tasks(&m, &q(None, Some("up"))).unwrap_err().contains("order"));
    }
}
