//! The legacy JSON views (`/state`, `/version`) in Mesos' shapes, built from the core's
//! read-only accessors. The Mesos web UI and CLI read these field names.

use corral_wire::mesos::json;
use corral_wire::mesos::v1;
use corral_wire::resources::Resources;
use serde_json::{Map, Value, json};

use crate::core::{Agent, AgentState, Framework, Master, Task};

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
        .statuses
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
    if let Some(u) = &t.user {
        o.insert("user".into(), json!(u));
    }
    if let Some(info) = &t.info {
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
    o.insert("tasks".into(), Value::Array(fw.tasks.values().map(task_json).collect()));
    o.insert(
        "unreachable_tasks".into(),
        Value::Array(fw.unreachable_tasks.values().map(task_json).collect()),
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
    o.insert("reserved_resources".into(), json!({}));
    o.insert("unreserved_resources".into(), reg.resources.to_summary_json());
    o.insert("active".into(), json!(a.state == AgentState::Connected));
    o.insert("deactivated".into(), json!(false));
    o.insert("connected".into(), json!(a.state == AgentState::Connected));
    o.insert("version".into(), json!(corral_wire::MESOS_COMPAT_VERSION));
    o.insert("corral_version".into(), json!(reg.version));
    o.insert("capabilities".into(), json!(["MULTI_ROLE", "HIERARCHICAL_ROLE"]));
    o.insert("isolation".into(), reg.isolation.to_json());
    Value::Object(o)
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
    o.insert("recovered_slaves".into(), json!([]));
    o.insert(
        "frameworks".into(),
        Value::Array(m.frameworks().values().map(|f| framework_json(m, f)).collect()),
    );
    o.insert(
        "completed_frameworks".into(),
        Value::Array(m.completed_frameworks().iter().map(|f| framework_json(m, f)).collect()),
    );
    o.insert("orphan_tasks".into(), json!([]));
    o.insert("unregistered_frameworks".into(), json!([]));
    v
}
