//! A Rust client of the master's HTTP API: master addresses, the read-only endpoints, agent
//! sandbox files, and [`Scheduler`], a v1 scheduler-API framework driver (SUBSCRIBE stream
//! decoding plus the calls). `corral run`, the CLI tables, the integration tests and the bench
//! driver all use it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use corral_wire::mesos::IdExt as _;
use corral_wire::mesos::json;
use corral_wire::mesos::v1::scheduler::{Call, Event, call, event};
use corral_wire::mesos::v1::{self};
use corral_wire::recordio;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid master address '{0}': expected HOST:PORT or http://HOST:PORT")]
    BadAddress(String),
    #[error("'{0}': zk:// master addresses need ZooKeeper support, which comes with HA")]
    ZooKeeper(String),
    #[error("cannot reach {url}: {}", root_cause(source))]
    Http { url: String, source: reqwest::Error },
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("the master refused the subscription: {0}")]
    Refused(String),
    #[error("event stream: {0}")]
    Stream(String),
}

/// The innermost cause of an error ("Connection refused (os error 111)"), which is what a
/// user needs; the outer layers repeat the URL.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Where the master is: `host:port` or `http://host:port` (default `127.0.0.1:5050`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterAddr {
    base: String,
}

impl MasterAddr {
    /// `http://host:port`, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `host:port`.
    pub fn host_port(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Default for MasterAddr {
    fn default() -> Self {
        MasterAddr { base: "http://127.0.0.1:5050".into() }
    }
}

impl fmt::Display for MasterAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

impl FromStr for MasterAddr {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.starts_with("zk://") {
            return Err(ClientError::ZooKeeper(s.into()));
        }
        let rest = s.strip_prefix("http://").unwrap_or(s);
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.is_empty() {
            return Err(ClientError::BadAddress(s.into()));
        }
        let (host, port) =
            rest.rsplit_once(':').ok_or_else(|| ClientError::BadAddress(s.into()))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(ClientError::BadAddress(s.into()));
        }
        Ok(MasterAddr { base: format!("http://{rest}") })
    }
}

/// Sends a request; a non-2xx answer becomes [`ClientError::Status`] with its body.
async fn send(url: &str, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
    let resp = req.send().await.map_err(|source| ClientError::Http { url: url.into(), source })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    Err(ClientError::Status { url: url.into(), status: status.as_u16(), body })
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("a client without TLS always builds")
}

/// GETs a JSON document.
pub async fn get_json(url: &str) -> Result<serde_json::Value, ClientError> {
    let resp = send(url, http().get(url).timeout(Duration::from_secs(30))).await?;
    let text = resp.text().await.map_err(|source| ClientError::Http { url: url.into(), source })?;
    serde_json::from_str(&text).map_err(|e| ClientError::Stream(format!("{url}: {e}")))
}

/// The master's `/state`.
pub async fn state(master: &MasterAddr) -> Result<serde_json::Value, ClientError> {
    get_json(&master.url("/state")).await
}

/// Reads a whole file from an agent's sandbox (its `/files/download` endpoint: raw bytes).
pub async fn read_agent_file(agent_base: &str, path: &str) -> Result<Vec<u8>, ClientError> {
    let url = format!("{agent_base}/files/download?path={}", urlencode(path));
    let resp = send(&url, http().get(&url).timeout(Duration::from_secs(60))).await?;
    resp.bytes().await.map(|b| b.to_vec()).map_err(|source| ClientError::Http { url, source })
}

/// The sandbox directory an agent lists for a task (its command executor's `directory` in the
/// agent's `/state`, running or completed).
pub async fn sandbox_of(
    agent_base: &str,
    framework_id: &str,
    task_id: &str,
) -> Result<Option<String>, ClientError> {
    let state = get_json(&format!("{agent_base}/state")).await?;
    Ok(state["frameworks"]
        .as_array()
        .into_iter()
        .chain(state["completed_frameworks"].as_array())
        .flatten()
        .filter(|f| f["id"] == framework_id)
        .flat_map(|f| {
            f["executors"]
                .as_array()
                .into_iter()
                .chain(f["completed_executors"].as_array())
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
        })
        .find(|e| e["id"] == task_id)
        .and_then(|e| e["directory"].as_str().map(String::from)))
}

/// Percent-encodes a query value (a path: `/` stays).
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A framework connected to the master through the v1 scheduler API.
#[derive(Debug)]
pub struct Scheduler {
    caller: Caller,
    events: mpsc::Receiver<Result<Event, ClientError>>,
    reader: tokio::task::JoinHandle<()>,
    master_info: Option<v1::MasterInfo>,
}

/// Makes calls for one subscribed framework (cheap to clone).
#[derive(Debug, Clone)]
pub struct Caller {
    http: reqwest::Client,
    master: MasterAddr,
    framework_id: String,
    stream_id: String,
}

impl Caller {
    /// Sends a call (framework id filled in) and checks for 200/202.
    pub async fn call(&self, mut c: Call) -> Result<(), ClientError> {
        c.framework_id = Some(v1::FrameworkId::from_str(&self.framework_id));
        let url = self.master.url("/api/v1/scheduler");
        let req = self
            .http
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Mesos-Stream-Id", &self.stream_id)
            .body(json::to_string(&c));
        send(&url, req).await.map(drop)
    }

    /// Acknowledges an update if it carries a uuid (master-generated updates do not).
    pub async fn acknowledge(&self, status: &v1::TaskStatus) -> Result<(), ClientError> {
        let (Some(uuid), Some(agent)) = (&status.uuid, &status.agent_id) else { return Ok(()) };
        let c = Call {
            r#type: Some(call::Type::Acknowledge as i32),
            acknowledge: Some(call::Acknowledge {
                agent_id: agent.clone(),
                task_id: status.task_id.clone(),
                uuid: uuid.clone(),
            }),
            ..Default::default()
        };
        self.call(c).await
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Scheduler {
    /// SUBSCRIBEs and waits for SUBSCRIBED (an ERROR event becomes [`ClientError::Refused`]).
    pub async fn subscribe(
        master: &MasterAddr,
        info: v1::FrameworkInfo,
    ) -> Result<Scheduler, ClientError> {
        let http = http();
        let url = master.url("/api/v1/scheduler");
        let framework_id = info.id.clone();
        let body = json::to_string(&Call {
            framework_id,
            r#type: Some(call::Type::Subscribe as i32),
            subscribe: Some(call::Subscribe { framework_info: info, ..Default::default() }),
            ..Default::default()
        });
        let req = http
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(body);
        let resp = send(&url, req).await?;
        let stream_id = resp
            .headers()
            .get("Mesos-Stream-Id")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .ok_or_else(|| ClientError::Stream("no Mesos-Stream-Id header".into()))?;
        let (tx, mut events) = mpsc::channel(1024);
        let reader = tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut decoder = recordio::Decoder::new(64 << 20);
            while let Some(chunk) = body.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(ClientError::Stream(e.to_string()))).await;
                        return;
                    }
                };
                decoder.push(&chunk);
                loop {
                    match decoder.next_record() {
                        Ok(Some(record)) => {
                            let ev = json::from_slice::<Event>(&record)
                                .map_err(|e| ClientError::Stream(format!("bad event: {e}")));
                            if tx.send(ev).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = tx.send(Err(ClientError::Stream(e.to_string()))).await;
                            return;
                        }
                    }
                }
            }
            let _ = tx
                .send(Err(ClientError::Stream("the master closed the event stream".into())))
                .await;
        });
        let first = events
            .recv()
            .await
            .ok_or_else(|| ClientError::Stream("stream ended before SUBSCRIBED".into()))??;
        match first.r#type() {
            event::Type::Subscribed => {
                let s = first.subscribed.unwrap_or_default();
                Ok(Scheduler {
                    caller: Caller {
                        http,
                        master: master.clone(),
                        framework_id: s.framework_id.value,
                        stream_id,
                    },
                    events,
                    reader,
                    master_info: s.master_info,
                })
            }
            event::Type::Error => {
                Err(ClientError::Refused(first.error.map(|e| e.message).unwrap_or_default()))
            }
            other => Err(ClientError::Stream(format!("expected SUBSCRIBED first, got {other:?}"))),
        }
    }

    pub fn framework_id(&self) -> &str {
        &self.caller.framework_id
    }

    pub fn stream_id(&self) -> &str {
        &self.caller.stream_id
    }

    pub fn master_info(&self) -> Option<&v1::MasterInfo> {
        self.master_info.as_ref()
    }

    /// The next event (heartbeats included); `None` once the stream ended and was reported.
    pub async fn next_event(&mut self) -> Option<Result<Event, ClientError>> {
        self.events.recv().await
    }

    /// Sends a call (framework id filled in) and checks for 200/202.
    pub async fn call(&self, c: Call) -> Result<(), ClientError> {
        self.caller.call(c).await
    }

    /// A handle that makes calls for this framework, independent of the event stream: to
    /// acknowledge (or call) concurrently with reading events.
    pub fn caller(&self) -> Caller {
        self.caller.clone()
    }

    fn typed(t: call::Type) -> Call {
        Call { r#type: Some(t as i32), ..Default::default() }
    }

    /// ACCEPT `offers` launching `tasks`; what the tasks do not use is declined for
    /// `refuse_seconds`.
    pub async fn launch(
        &self,
        offers: Vec<v1::OfferId>,
        tasks: Vec<v1::TaskInfo>,
        refuse_seconds: Option<f64>,
    ) -> Result<(), ClientError> {
        let mut c = Self::typed(call::Type::Accept);
        c.accept = Some(call::Accept {
            offer_ids: offers,
            operations: vec![v1::offer::Operation {
                r#type: Some(v1::offer::operation::Type::Launch as i32),
                launch: Some(v1::offer::operation::Launch { task_infos: tasks }),
                ..Default::default()
            }],
            filters: refuse_seconds.map(|s| v1::Filters { refuse_seconds: Some(s) }),
        });
        self.call(c).await
    }

    pub async fn decline(
        &self,
        offers: Vec<v1::OfferId>,
        refuse_seconds: Option<f64>,
    ) -> Result<(), ClientError> {
        let mut c = Self::typed(call::Type::Decline);
        c.decline = Some(call::Decline {
            offer_ids: offers,
            filters: refuse_seconds.map(|s| v1::Filters { refuse_seconds: Some(s) }),
        });
        self.call(c).await
    }

    /// Acknowledges an update if it carries a uuid (master-generated updates do not).
    pub async fn acknowledge(&self, status: &v1::TaskStatus) -> Result<(), ClientError> {
        self.caller.acknowledge(status).await
    }

    pub async fn kill(&self, task_id: &str, agent_id: Option<&str>) -> Result<(), ClientError> {
        let mut c = Self::typed(call::Type::Kill);
        c.kill = Some(call::Kill {
            task_id: v1::TaskId::from_str(task_id),
            agent_id: agent_id.map(v1::AgentId::from_str),
            kill_policy: None,
        });
        self.call(c).await
    }

    /// Implicit reconciliation when `tasks` is empty.
    pub async fn reconcile(&self, tasks: Vec<(String, Option<String>)>) -> Result<(), ClientError> {
        let mut c = Self::typed(call::Type::Reconcile);
        c.reconcile = Some(call::Reconcile {
            tasks: tasks
                .into_iter()
                .map(|(t, a)| call::reconcile::Task {
                    task_id: v1::TaskId::from_str(t),
                    agent_id: a.map(v1::AgentId::from_str),
                })
                .collect(),
        });
        self.call(c).await
    }

    pub async fn suppress(&self) -> Result<(), ClientError> {
        self.call(Self::typed(call::Type::Suppress)).await
    }

    pub async fn revive(&self) -> Result<(), ClientError> {
        self.call(Self::typed(call::Type::Revive)).await
    }

    pub async fn teardown(&self) -> Result<(), ClientError> {
        self.call(Self::typed(call::Type::Teardown)).await
    }
}

/// A command task: `argv` exec'd directly (no shell).
pub fn command_task(
    task_id: &str,
    name: &str,
    agent_id: &v1::AgentId,
    argv: &[String],
    resources: &corral_wire::resources::Resources,
) -> v1::TaskInfo {
    v1::TaskInfo {
        name: name.into(),
        task_id: v1::TaskId::from_str(task_id),
        agent_id: agent_id.clone(),
        resources: resources.to_mesos(None),
        command: Some(v1::CommandInfo {
            shell: Some(false),
            value: argv.first().cloned(),
            arguments: argv.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The exit code in a Corral/Mesos command executor message (`Command exited with status
/// N`).
pub fn exit_code_of(message: &str) -> Option<i32> {
    let rest = message.split("exited with status ").nth(1)?;
    rest.trim().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_addresses() {
        assert_eq!("127.0.0.1:5050".parse::<MasterAddr>().unwrap().base(), "http://127.0.0.1:5050");
        assert_eq!("http://h:1/".parse::<MasterAddr>().unwrap().host_port(), "h:1");
        assert!(matches!(
            "zk://h:2181/mesos".parse::<MasterAddr>(),
            Err(ClientError::ZooKeeper(_))
        ));
        assert!("h".parse::<MasterAddr>().is_err());
        assert!("h:99999".parse::<MasterAddr>().is_err());
        assert!("http://h:1/x".parse::<MasterAddr>().is_err());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code_of("Command exited with status 3"), Some(3));
        assert_eq!(exit_code_of("Command exited with status 0"), Some(0));
        assert_eq!(exit_code_of("Command terminated with signal Killed"), None);
    }
}
