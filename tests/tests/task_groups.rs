//! LAUNCH_GROUP end to end on a real agent: the group's tasks share the executor's sandbox
//! (one task sees the file another wrote; each has its own `tasks/<id>/stdout`), GET_EXECUTORS
//! lists the executor while the group lives, and when one task fails the rest of its group
//! is killed.

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use corral_tests::{Cluster, ClusterOptions, block_on, require_agent_host};
use corral_tools::client::Scheduler;
use corral_wire::mesos::v1::{self, scheduler::event};
use corral_wire::mesos::{IdExt as _, is_terminal};
use corral_wire::resources::Resources;

const TEST: &str = "a_task_group_shares_its_sandbox_and_fails_together";

fn task(offer: &v1::Offer, id: &str, script: &str) -> v1::TaskInfo {
    v1::TaskInfo {
        name: id.into(),
        task_id: v1::TaskId::from_str(id),
        agent_id: offer.agent_id.clone(),
        resources: Resources::parse("cpus:0.1;mem:32").unwrap().to_mesos(None),
        command: Some(v1::CommandInfo { value: Some(script.into()), ..Default::default() }),
        ..Default::default()
    }
}

/// The next offer big enough for a group (executor and two tasks); smaller ones (what one
/// finished task gave back) are declined, so they come back merged.
async fn next_offer(s: &mut Scheduler) -> v1::Offer {
    let want = Resources::parse("cpus:0.3;mem:96").unwrap();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), s.next_event())
            .await
            .expect("an offer within 30 s")
            .unwrap()
            .unwrap();
        for o in ev.offers.map(|o| o.offers).unwrap_or_default() {
            if Resources::from_mesos(&o.resources).unwrap().contains(&want) {
                return o;
            }
            s.decline(vec![o.id.clone()], Some(0.0)).await.unwrap();
        }
    }
}

/// Launches `tasks` as one group under executor `eid`; returns each task's terminal state.
async fn run_group(
    s: &mut Scheduler,
    offer: &v1::Offer,
    eid: &str,
    tasks: Vec<v1::TaskInfo>,
) -> BTreeMap<String, v1::TaskStatus> {
    let ids: Vec<String> = tasks.iter().map(|t| t.task_id.value.clone()).collect();
    let executor = v1::ExecutorInfo {
        r#type: Some(v1::executor_info::Type::Default as i32),
        executor_id: v1::ExecutorId::from_str(eid),
        resources: Resources::parse("cpus:0.1;mem:32").unwrap().to_mesos(None),
        ..Default::default()
    };
    let mut c = v1::scheduler::Call {
        framework_id: Some(v1::FrameworkId::from_str(s.framework_id())),
        r#type: Some(v1::scheduler::call::Type::Accept as i32),
        ..Default::default()
    };
    c.accept = Some(v1::scheduler::call::Accept {
        offer_ids: vec![offer.id.clone()],
        operations: vec![v1::offer::Operation {
            r#type: Some(v1::offer::operation::Type::LaunchGroup as i32),
            launch_group: Some(v1::offer::operation::LaunchGroup {
                executor,
                task_group: v1::TaskGroupInfo { tasks },
            }),
            ..Default::default()
        }],
        filters: Some(v1::Filters { refuse_seconds: Some(60.0) }),
    });
    s.call(c).await.unwrap();
    let mut done = BTreeMap::new();
    while done.len() < ids.len() {
        let ev = tokio::time::timeout(Duration::from_secs(60), s.next_event())
            .await
            .expect("updates within 60 s")
            .unwrap()
            .unwrap();
        if let Some(offers) = ev.offers {
            // Not needed now: give them back for a moment, to be offered merged later.
            let ids = offers.offers.into_iter().map(|o| o.id).collect();
            s.decline(ids, Some(1.0)).await.unwrap();
            continue;
        }
        if ev.r#type() != event::Type::Update {
            continue;
        }
        let st = ev.update.unwrap().status;
        s.acknowledge(&st).await.unwrap();
        assert_eq!(st.executor_id.as_ref().map(|e| e.value.as_str()), Some(eid), "{st:?}");
        if is_terminal(st.state()) {
            done.insert(st.task_id.value.clone(), st);
        }
    }
    done
}

#[test]
fn a_task_group_shares_its_sandbox_and_fails_together() {
    if !require_agent_host(TEST) {
        return;
    }
    let c = Cluster::start(ClusterOptions::default());
    let addr = c.master_addr();
    let info =
        v1::FrameworkInfo { user: "root".into(), name: "groups".into(), ..Default::default() };
    block_on(async {
        let mut s = Scheduler::subscribe(&addr, info).await.unwrap();
        let offer = next_offer(&mut s).await;
        let tasks = vec![
            task(&offer, "writer", "echo from-writer > shared.txt; echo wrote"),
            task(
                &offer,
                "reader",
                "for i in $(seq 100); do [ -f shared.txt ] && exec cat shared.txt; sleep 0.1; done; exit 1",
            ),
        ];
        let done = run_group(&mut s, &offer, "e1", tasks).await;
        for (id, st) in &done {
            assert_eq!(st.state(), v1::TaskState::TaskFinished, "{id}: {st:?}");
        }

        let offer = next_offer(&mut s).await;
        let tasks =
            vec![task(&offer, "bad", "sleep 0.5; exit 3"), task(&offer, "long", "sleep 600")];
        let done = run_group(&mut s, &offer, "e2", tasks).await;
        assert_eq!(done["bad"].state(), v1::TaskState::TaskFailed, "{:?}", done["bad"]);
        assert_eq!(done["long"].state(), v1::TaskState::TaskKilled, "{:?}", done["long"]);
        s.teardown().await.unwrap();
    });
    // The layout: one executor sandbox, a stdout per task in it.
    let runs = c.dir.path().join("agent-0/slaves").join(c.agent_id(0)).join("frameworks");
    let fw = std::fs::read_dir(&runs).unwrap().next().unwrap().unwrap().path();
    let e1 = fw.join("executors/e1/runs");
    let run = std::fs::read_dir(&e1).unwrap().next().unwrap().unwrap().path();
    assert_eq!(std::fs::read_to_string(run.join("shared.txt")).unwrap(), "from-writer\n");
    assert_eq!(std::fs::read_to_string(run.join("tasks/writer/stdout")).unwrap(), "wrote\n");
    assert_eq!(std::fs::read_to_string(run.join("tasks/reader/stdout")).unwrap(), "from-writer\n");
}
