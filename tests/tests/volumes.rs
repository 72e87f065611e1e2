//! Dynamic reservations and persistent volumes end to end: the operator reserves resources
//! for a role and creates a volume on a real agent; a framework of that role is offered the
//! volume, a first task writes into it, a second task (after the first is gone) reads it
//! back; the agent keeps the reservation and the volume across its own restart; and the
//! framework destroys the volume and unreserves through ACCEPT.

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use corral_tests::rawhttp::request;
use corral_tests::{Cluster, ClusterOptions, block_on, require_agent_host};
use corral_tools::client::Scheduler;
use corral_wire::mesos::v1::{self, scheduler::event};
use corral_wire::mesos::{IdExt as _, is_terminal};
use corral_wire::resources::Resources;
use serde_json::{Value, json};

const TEST: &str = "a_volume_outlives_its_tasks_and_the_agent_restart";

fn operator(port: u16, body: Value) -> (u16, String) {
    let r = request(
        port,
        "POST",
        "/api/v1",
        &[("Content-Type", "application/json"), ("Accept", "application/json")],
        &body.to_string(),
    );
    let status = r.status;
    (status, r.body())
}

fn reserved(name: &str, v: f64) -> Value {
    json!({"name": name, "type": "SCALAR", "scalar": {"value": v},
           "reservations": [{"type": "DYNAMIC", "role": "eng", "principal": "ops"}]})
}

fn volume() -> Value {
    let mut v = reserved("disk", 64.0);
    v["disk"] =
        json!({"persistence": {"id": "data1"}, "volume": {"container_path": "data", "mode": "RW"}});
    v
}

/// Waits for an offer holding the volume; returns it.
async fn offer_with_volume(s: &mut Scheduler) -> v1::Offer {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, s.next_event()).await.expect("an offer within 30 s");
        let ev = ev.expect("stream open").expect("event");
        if let Some(offers) = ev.offers {
            for o in offers.offers {
                let r = Resources::from_mesos(&o.resources).unwrap();
                if r.volumes().count() == 1 {
                    return o;
                }
                s.decline(vec![o.id.clone()], Some(0.5)).await.unwrap();
            }
        }
    }
}

/// Runs `script` with everything `offer` holds reserved for eng (the volume whole); returns
/// its terminal status.
async fn run_on(s: &mut Scheduler, offer: &v1::Offer, id: &str, script: &str) -> v1::TaskStatus {
    let all = Resources::from_mesos(&offer.resources).unwrap();
    let mut mine = all.reserved_for("eng");
    mine.subtract(&mine.filter(|k| k.name == "disk" && k.volume.is_none()));
    let task = v1::TaskInfo {
        name: id.into(),
        task_id: v1::TaskId::from_str(id),
        agent_id: offer.agent_id.clone(),
        resources: mine.to_mesos(None),
        command: Some(v1::CommandInfo { value: Some(script.into()), ..Default::default() }),
        ..Default::default()
    };
    s.launch(vec![offer.id.clone()], vec![task], Some(0.0)).await.unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), s.next_event())
            .await
            .expect("an update within 60 s")
            .unwrap()
            .unwrap();
        if ev.r#type() == event::Type::Update {
            let st = ev.update.unwrap().status;
            s.acknowledge(&st).await.unwrap();
            if st.task_id.value == id && is_terminal(st.state()) {
                return st;
            }
        }
    }
}

#[test]
fn a_volume_outlives_its_tasks_and_the_agent_restart() {
    if !require_agent_host(TEST) {
        return;
    }
    let mut c = Cluster::start(ClusterOptions::default());
    let port = c.master_port;
    let agent = c.agent_id(0);
    let aid = json!({"value": agent});
    let (status, body) = operator(
        port,
        json!({"type": "RESERVE_RESOURCES", "reserve_resources": {"agent_id": aid,
               "resources": [reserved("cpus", 1.0), reserved("mem", 128.0), reserved("disk", 64.0)]}}),
    );
    assert_eq!((status, body.as_str()), (202, ""));
    let (status, body) = operator(
        port,
        json!({"type": "CREATE_VOLUMES", "create_volumes": {"agent_id": aid, "volumes": [volume()]}}),
    );
    assert_eq!((status, body.as_str()), (202, ""));
    // More than is unreserved: 409, nothing changes.
    let (status, _) = operator(
        port,
        json!({"type": "RESERVE_RESOURCES", "reserve_resources": {"agent_id": aid,
               "resources": [reserved("cpus", 100.0)]}}),
    );
    assert_eq!(status, 409);
    let volume_dir = c.dir.path().join("agent-0/volumes/roles/eng/data1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !volume_dir.is_dir() {
        assert!(Instant::now() < deadline, "{} was not created", volume_dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    let checkpoint = std::fs::read_to_string(c.dir.path().join("agent-0/resources.json")).unwrap();
    assert!(checkpoint.contains("\"data1\""), "{checkpoint}");

    let addr = c.master_addr();
    #[allow(deprecated)]
    let info = v1::FrameworkInfo {
        user: "root".into(),
        name: "volume-test".into(),
        role: Some("eng".into()),
        ..Default::default()
    };
    block_on(async {
        let mut s = Scheduler::subscribe(&addr, info.clone()).await.unwrap();
        let offer = offer_with_volume(&mut s).await;
        let st = run_on(&mut s, &offer, "writer", "echo kept > data/f && test -w data").await;
        assert_eq!(st.state(), v1::TaskState::TaskFinished, "{st:?}");
        let offer = offer_with_volume(&mut s).await;
        let st = run_on(&mut s, &offer, "reader", "grep -qx kept data/f").await;
        assert_eq!(st.state(), v1::TaskState::TaskFinished, "{st:?}");
        s.teardown().await.unwrap();
    });
    assert_eq!(std::fs::read_to_string(volume_dir.join("f")).unwrap(), "kept\n");

    // The agent restarts: its reservations and the volume come back from its checkpoint.
    c.restart_agent(0);
    c.wait_agents(1, Duration::from_secs(30));
    let agents = operator(port, json!({"type": "GET_AGENTS"})).1;
    let v: Value = serde_json::from_str(&agents).unwrap();
    let live: Vec<&Value> = v["get_agents"]["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["active"] == true)
        .collect();
    let total = Resources::from_mesos(
        &serde_json::from_value::<Vec<Value>>(live[0]["total_resources"].clone())
            .unwrap()
            .iter()
            .map(|r| corral_wire::mesos::json::from_value::<v1::Resource>(r).unwrap())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert_eq!(total.volumes().count(), 1, "{total}");
    assert_eq!(total.reserved_for("eng").scalar("cpus").as_f64(), 1.0, "{total}");
    let st = c.state();
    let slave =
        st["slaves"].as_array().unwrap().iter().find(|s| s["active"] == true).unwrap().clone();
    assert_eq!(slave["reserved_resources"]["eng"]["cpus"], 1.0, "{slave}");
    assert_eq!(slave["reserved_resources"]["eng"]["disk"], 64.0, "{slave}");

    // The framework destroys the volume and unreserves, in one ACCEPT.
    let info = v1::FrameworkInfo { name: "volume-cleanup".into(), ..info };
    block_on(async {
        let mut s = Scheduler::subscribe(&addr, info).await.unwrap();
        let offer = offer_with_volume(&mut s).await;
        let all = Resources::from_mesos(&offer.resources).unwrap();
        let vol = all.filter(|k| k.volume.is_some());
        let op = |t: v1::offer::operation::Type, r: &Resources| {
            use v1::offer::operation as o;
            let mut op = v1::offer::Operation { r#type: Some(t as i32), ..Default::default() };
            match t {
                o::Type::Destroy => op.destroy = Some(o::Destroy { volumes: r.to_mesos(None) }),
                _ => op.unreserve = Some(o::Unreserve { resources: r.to_mesos(None) }),
            }
            op
        };
        let mut c = corral_wire::mesos::v1::scheduler::Call {
            framework_id: Some(v1::FrameworkId::from_str(s.framework_id())),
            r#type: Some(v1::scheduler::call::Type::Accept as i32),
            ..Default::default()
        };
        let mut unreserve = all.reserved_for("eng");
        unreserve.subtract(&vol);
        unreserve.add(&vol.filter(|_| true).iter().fold(Resources::new(), |mut acc, (k, v)| {
            acc.insert(corral_wire::resources::Key { volume: None, ..k.clone() }, v.clone());
            acc
        }));
        c.accept = Some(v1::scheduler::call::Accept {
            offer_ids: vec![offer.id.clone()],
            operations: vec![
                op(v1::offer::operation::Type::Destroy, &vol),
                op(v1::offer::operation::Type::Unreserve, &unreserve),
            ],
            filters: None,
        });
        s.call(c).await.unwrap();
        s.teardown().await.unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while volume_dir.exists() {
        assert!(Instant::now() < deadline, "the destroyed volume's directory is still there");
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = c.state();
    let slave =
        st["slaves"].as_array().unwrap().iter().find(|s| s["active"] == true).unwrap().clone();
    assert_eq!(slave["reserved_resources"], json!({}), "{slave}");
}
