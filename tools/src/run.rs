//! `corral run`: a one-task framework over the v1 scheduler API, like mesos-execute.
//!
//! Subscribes, takes the first offer that fits, launches the command, prints each state
//! transition to stderr as it happens, acknowledges every update, then prints the task's
//! stdout (to stdout) and stderr (to stderr) from the agent's sandbox and exits with the
//! task's exit code. Ctrl-C kills the task and waits for TASK_KILLED.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use corral_tools::client::{self, MasterAddr, Scheduler, command_task};
use corral_wire::mesos::is_terminal;
use corral_wire::mesos::v1::scheduler::event;
use corral_wire::mesos::v1::{self, TaskState};
use corral_wire::resources::Resources;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The master: HOST:PORT or http://HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:5050", value_parser = crate::parse_master)]
    master: MasterAddr,
    /// CPUs for the task.
    #[arg(long, default_value_t = 0.1)]
    cpus: f64,
    /// Memory for the task, in MB.
    #[arg(long, default_value_t = 32.0)]
    mem: f64,
    /// Disk for the task, in MB (0: none).
    #[arg(long, default_value_t = 0.0)]
    disk: f64,
    /// Task name (the task id is NAME-<random>).
    #[arg(long, default_value = "corral-run")]
    name: String,
    /// Role to run under.
    #[arg(long, default_value = "*")]
    role: String,
    /// User to run the task as (default: the user running `corral run`).
    #[arg(long)]
    user: Option<String>,
    /// Extra environment for the task, NAME=VALUE; repeatable.
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Run the arguments joined by spaces with `sh -c` instead of exec'ing them.
    #[arg(long)]
    shell: bool,
    /// Time between SIGTERM and SIGKILL when the task is killed (Ctrl-C); default: the
    /// agent's.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    kill_grace_period: Option<Duration>,
    /// Don't print the task's output at the end.
    #[arg(long)]
    no_output: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got '{s}'"))
}

fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "root".into())
}

fn say(msg: impl AsRef<str>) {
    eprintln!("[corral run] {}", msg.as_ref());
}

/// The task's exit code as `corral run`'s own.
fn exit_code(status: &v1::TaskStatus, interrupted: bool) -> u8 {
    match status.state() {
        TaskState::TaskFinished => 0,
        TaskState::TaskFailed => {
            client::exit_code_of(status.message()).map(|c| c.clamp(0, 255) as u8).unwrap_or(1)
        }
        TaskState::TaskKilled if interrupted => 130,
        TaskState::TaskKilled => 137,
        _ => 1,
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let user = args.user.clone().unwrap_or_else(current_user);
    #[allow(deprecated)]
    let info = v1::FrameworkInfo {
        user: user.clone(),
        name: format!("corral-run: {}", args.command.join(" ")),
        role: Some(args.role.clone()),
        failover_timeout: Some(0.0),
        hostname: nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()),
        ..Default::default()
    };
    let mut sched = Scheduler::subscribe(&args.master, info)
        .await
        .with_context(|| format!("subscribing to the master at {}", args.master))?;
    say(format!("subscribed to {} as framework {}", args.master, sched.framework_id()));

    let mut wanted = Resources::new().with_scalar("cpus", args.cpus).with_scalar("mem", args.mem);
    if args.disk > 0.0 {
        wanted = wanted.with_scalar("disk", args.disk);
    }
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let task_id = format!("{}-{}", args.name, &suffix[..8]);
    let argv: Vec<String> = if args.shell {
        vec!["sh".into(), "-c".into(), args.command.join(" ")]
    } else {
        args.command.clone()
    };

    let mut launched: Option<(v1::AgentId, String)> = None; // agent id, agent http base
    let mut last: Option<v1::TaskStatus> = None;
    let mut interrupted = false;
    let mut waited = 0u32;
    let ctrl_c = crate::shutdown_signal();
    tokio::pin!(ctrl_c);
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                match &launched {
                    Some((agent, _)) => {
                        say(format!("interrupted: killing task {task_id}"));
                        sched.kill(&task_id, Some(&agent.value)).await?;
                    }
                    None => {
                        say("interrupted before the task was launched");
                        let _ = sched.teardown().await;
                        return Ok(ExitCode::from(130));
                    }
                }
            }
            _ = ticker.tick(), if launched.is_none() => {
                waited += 10;
                say(format!("still waiting for an offer with {wanted} ({waited} s)"));
            }
            ev = sched.next_event() => {
                let ev = match ev {
                    Some(Ok(ev)) => ev,
                    Some(Err(e)) => bail!("{e}"),
                    None => bail!("the master closed the event stream"),
                };
                match ev.r#type() {
                    event::Type::Offers => {
                        let offers = ev.offers.map(|o| o.offers).unwrap_or_default();
                        let mut decline = Vec::new();
                        for offer in offers {
                            let fits = Resources::from_mesos(&offer.resources).map(|r| r.contains(&wanted)).unwrap_or(false);
                            if launched.is_none() && fits && !interrupted {
                                let task = {
                                    let mut t = command_task(&task_id, &args.name, &offer.agent_id, &argv, &wanted);
                                    if let Some(cmd) = t.command.as_mut() && !args.env.is_empty() {
                                        cmd.environment = Some(v1::Environment {
                                            variables: args.env.iter().map(|(k, v)| v1::environment::Variable {
                                                name: k.clone(),
                                                value: Some(v.clone()),
                                                ..Default::default()
                                            }).collect(),
                                        });
                                    }
                                    if let Some(g) = args.kill_grace_period {
                                        t.kill_policy = Some(v1::KillPolicy {
                                            grace_period: Some(v1::DurationInfo { nanoseconds: g.as_nanos() as i64 }),
                                        });
                                    }
                                    t
                                };
                                sched.launch(vec![offer.id.clone()], vec![task], Some(3600.0)).await?;
                                let base = offer.url.as_ref().map(|u| {
                                    let host = u.address.ip.clone().or_else(|| u.address.hostname.clone()).unwrap_or_else(|| offer.hostname.clone());
                                    format!("http://{host}:{}", u.address.port)
                                }).unwrap_or_else(|| format!("http://{}:5051", offer.hostname));
                                say(format!("launching task {task_id} on agent {} ({})", offer.agent_id.value, offer.hostname));
                                launched = Some((offer.agent_id.clone(), base));
                                let _ = sched.suppress().await;
                            } else {
                                decline.push(offer.id);
                            }
                        }
                        if !decline.is_empty() {
                            sched.decline(decline, Some(if launched.is_some() { 3600.0 } else { 1.0 })).await?;
                        }
                    }
                    event::Type::Update => {
                        let Some(status) = ev.update.map(|u| u.status) else { continue };
                        if status.task_id.value != task_id {
                            sched.acknowledge(&status).await?;
                            continue;
                        }
                        let mut line = format!("task {task_id} {}", status.state().as_str_name());
                        if status.reason.is_some() {
                            line.push_str(&format!(" ({})", status.reason().as_str_name()));
                        }
                        if let Some(m) = status.message.as_ref().filter(|m| !m.is_empty()) {
                            line.push_str(&format!(": {m}"));
                        }
                        let repeat = last.as_ref().is_some_and(|l| l.uuid.is_some() && l.uuid == status.uuid);
                        if !repeat {
                            say(line);
                        }
                        sched.acknowledge(&status).await?;
                        let terminal = is_terminal(status.state());
                        last = Some(status);
                        if terminal {
                            break;
                        }
                    }
                    event::Type::Error => {
                        bail!("the master sent an error: {}", ev.error.map(|e| e.message).unwrap_or_default());
                    }
                    event::Type::Failure => {
                        if let (Some(f), Some((agent, _))) = (&ev.failure, &launched)
                            && f.agent_id.as_ref() == Some(agent) && f.executor_id.is_none()
                        {
                            say(format!("agent {} was lost", agent.value));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let status = last.expect("the loop only ends on a terminal update");
    if !args.no_output
        && let Some((agent, base)) = &launched
    {
        print_output(base, sched.framework_id(), &task_id, agent).await;
    }
    let _ = sched.teardown().await;
    Ok(ExitCode::from(exit_code(&status, interrupted)))
}

/// Finds the task's sandbox through the agent's /state and prints stdout and stderr.
async fn print_output(agent_base: &str, framework_id: &str, task_id: &str, agent: &v1::AgentId) {
    let dir = match client::sandbox_of(agent_base, framework_id, task_id).await {
        Ok(d) => d,
        Err(e) => {
            say(format!("cannot read the task's output from agent {}: {e}", agent.value));
            return;
        }
    };
    let Some(dir) = dir else {
        say(format!("agent {} does not list a sandbox for task {task_id}", agent.value));
        return;
    };
    for (name, to_stdout) in [("stdout", true), ("stderr", false)] {
        match client::read_agent_file(agent_base, &format!("{dir}/{name}")).await {
            Ok(bytes) if to_stdout => {
                let _ = std::io::stdout().write_all(&bytes);
                let _ = std::io::stdout().flush();
            }
            Ok(bytes) => {
                let _ = std::io::stderr().write_all(&bytes);
            }
            Err(e) => say(format!("cannot read {name}: {e}")),
        }
    }
}
