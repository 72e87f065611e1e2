//! The master's HTTP surface (axum): the v1 scheduler API and the read-only endpoints.
//!
//! Every route answers under both `/<name>` and `/master/<name>`, with or without a trailing
//! slash, as Mesos does. Request bodies are capped before they are read. The scheduler API
//! follows Mesos' handler step by step (method, Content-Type, body parse, call validation,
//! Accept negotiation for SUBSCRIBE, stream id checks) with its status codes and texts.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use corral_wire::mesos::json::{self, JsonError};
use corral_wire::mesos::v1::scheduler::{Call, call};
use corral_wire::mesos::v1::{self, master as op};
use corral_wire::mesos::{APPLICATION_JSON, APPLICATION_PROTOBUF};
use futures_util::Stream;
use tokio::sync::oneshot;
use tower::Layer as _;
use tower_http::normalize_path::NormalizePathLayer;

use super::{Encoding, Handle, Input, logging, state};
use crate::core::{
    CallError, CallResponse, OperatorResponse, heartbeat_event, operator_heartbeat, validate_call,
    validate_operator_call,
};

/// Largest request body accepted (Mesos has no limit; a cap keeps a hostile client from
/// making the master allocate without bound).
pub const MAX_BODY: usize = 8 << 20;

/// Serves HTTP on `listener` until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: Handle,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = NormalizePathLayer::trim_trailing_slash().layer(router(handle));
    // Events are small writes on long-lived streams: without TCP_NODELAY, Nagle holds each
    // one back until the previous segment is acknowledged (up to the peer's delayed-ACK
    // timer, ~40 ms), which would sit in every offer and status update's latency.
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(app))
        .with_graceful_shutdown(stop)
        .await
}

/// The routes, each under `/x` and `/master/x`.
pub fn router(handle: Handle) -> Router {
    let mut r = Router::new();
    for prefix in ["", "/master"] {
        r = r
            .route(&format!("{prefix}/api/v1/scheduler"), any(scheduler))
            .route(&format!("{prefix}/api/v1"), any(operator))
            .route(&format!("{prefix}/api/v1/{{*rest}}"), any(operator))
            .route(&format!("{prefix}/health"), get(health))
            .route(&format!("{prefix}/state"), get(state_handler))
            .route(&format!("{prefix}/state.json"), get(state_handler))
            .route(&format!("{prefix}/redirect"), get(redirect))
            .route(&format!("{prefix}/slaves"), get(slaves))
            .route(&format!("{prefix}/frameworks"), get(frameworks))
            .route(&format!("{prefix}/tasks"), get(tasks))
            .route(&format!("{prefix}/tasks.json"), get(tasks))
            .route(&format!("{prefix}/flags"), get(flags))
            .route(&format!("{prefix}/state-summary"), get(state_summary))
            .route(&format!("{prefix}/roles"), get(roles))
            .route(&format!("{prefix}/roles.json"), get(roles))
            .route(&format!("{prefix}/metrics/snapshot"), get(metrics_snapshot))
            .route(&format!("{prefix}/metrics"), get(prometheus_metrics));
    }
    r.route("/", get(status_page))
        .route("/version", get(version))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(handle)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

fn bad_request(body: impl Into<String>) -> Response {
    text(StatusCode::BAD_REQUEST, body)
}

/// The media type of a Content-Type header, lower-cased, without parameters.
fn media_type(v: &HeaderValue) -> String {
    v.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Whether the request's Accept headers allow `wanted` (absent header: anything).
pub fn accepts(headers: &HeaderMap, wanted: &str) -> bool {
    let mut any_header = false;
    let (wtype, _) = wanted.split_once('/').unwrap_or((wanted, ""));
    for v in headers.get_all(header::ACCEPT) {
        any_header = true;
        for item in v.to_str().unwrap_or("").split(',') {
            let mut parts = item.split(';');
            let range = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .filter_map(|q| q.parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            if q <= 0.0 {
                continue;
            }
            if range == wanted || range == "*/*" || range == format!("{wtype}/*") {
                return true;
            }
        }
    }
    !any_header
}

/// The steps every v1 call shares, with Mesos' statuses and texts: POST only, a
/// Content-Type of JSON or protobuf, and a body that parses into `T` with every required field.
fn parse_call<T: prost::Message + prost::Name + Default>(
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Box<Response>> {
    if method != Method::POST {
        return Err(Box::new(
            (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")], "").into_response(),
        ));
    }
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Err(Box::new(bad_request("Expecting 'Content-Type' to be present")));
    };
    match media_type(ct).as_str() {
        APPLICATION_JSON => json::from_slice::<T>(body).map_err(|e| {
            Box::new(match e {
                JsonError::Syntax(e) => bad_request(format!("Failed to parse body into JSON: {e}")),
                JsonError::Convert(e) => {
                    bad_request(format!("Failed to convert JSON into Call protobuf: {e}"))
                }
            })
        }),
        APPLICATION_PROTOBUF => json::from_protobuf::<T>(body)
            .map_err(|_| Box::new(bad_request("Failed to parse body into Call protobuf"))),
        _ => Err(Box::new(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Expecting 'Content-Type' of {APPLICATION_JSON} or {APPLICATION_PROTOBUF}"),
        ))),
    }
}

/// The response encoding the Accept headers ask for (JSON first, as Mesos prefers it).
fn negotiate(headers: &HeaderMap) -> Option<Encoding> {
    if accepts(headers, APPLICATION_JSON) {
        Some(Encoding::Json)
    } else if accepts(headers, APPLICATION_PROTOBUF) {
        Some(Encoding::Protobuf)
    } else {
        None
    }
}

fn not_acceptable() -> Response {
    text(
        StatusCode::NOT_ACCEPTABLE,
        format!("Expecting 'Accept' to allow '{APPLICATION_PROTOBUF}' or '{APPLICATION_JSON}'"),
    )
}

async fn scheduler(
    State(handle): State<Handle>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call: Call = match parse_call(&method, &headers, &body) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if let Err(e) = validate_call(&call) {
        return bad_request(format!("Failed to validate scheduler::Call: {e}"));
    }
    let stream_id = headers.get("Mesos-Stream-Id").map(|v| v.to_str().unwrap_or("").to_string());
    if call.r#type() == call::Type::Subscribe {
        let encoding = match negotiate(&headers) {
            Some(e) => e,
            None => return not_acceptable(),
        };
        if stream_id.is_some() {
            return bad_request("Subscribe calls should not include the 'Mesos-Stream-Id' header");
        }
        return subscribe(handle, call.subscribe.unwrap_or_default(), encoding).await;
    }
    let (reply, rx) = oneshot::channel();
    if !handle.send(Input::Call { stream_id, call: Box::new(call), reply }).await {
        return text(StatusCode::SERVICE_UNAVAILABLE, "Master is shutting down");
    }
    match rx.await {
        Ok(Ok(CallResponse::Accepted)) => StatusCode::ACCEPTED.into_response(),
        Ok(Ok(CallResponse::Ok)) => StatusCode::OK.into_response(),
        Ok(Err(e)) => call_error(e),
        Err(_) => shutting_down(),
    }
}

async fn subscribe(handle: Handle, sub: call::Subscribe, encoding: Encoding) -> Response {
    let stream = handle.next_id();
    let uuid = uuid::Uuid::new_v4().to_string();
    let (tx, rx) = super::event_queue();
    if !handle
        .send(Input::Subscribe {
            stream,
            uuid: uuid.clone(),
            subscribe: Box::new(sub),
            encoding,
            tx,
        })
        .await
    {
        return text(StatusCode::SERVICE_UNAVAILABLE, "Master is shutting down");
    }
    let heartbeat = encoding.record(&heartbeat_event());
    let body = EventBody::new(handle, stream, rx, heartbeat);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, encoding.media_type())
        .header("Mesos-Stream-Id", uuid)
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The v1 operator API: `POST /api/v1` (and any `/api/v1/<x>` but `scheduler`).
async fn operator(
    State(handle): State<Handle>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    use op::call::Type as T;
    use op::response::Type as R;
    let call: op::Call = match parse_call(&method, &headers, &body) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let t = match validate_operator_call(&call) {
        Ok(t) => t,
        Err(e) => return bad_request(format!("Failed to validate master::Call: {e}")),
    };
    let encoding = match negotiate(&headers) {
        Some(e) => e,
        None => return not_acceptable(),
    };
    let answer = |t: R, fill: &dyn Fn(&mut op::Response)| {
        let mut r = op::Response { r#type: Some(t as i32), ..Default::default() };
        fill(&mut r);
        encoded(encoding, &r)
    };
    match t {
        T::GetHealth => answer(R::GetHealth, &|r| {
            r.get_health = Some(op::response::GetHealth { healthy: true })
        }),
        T::GetFlags => {
            let flags: Vec<v1::Flag> = handle
                .flags
                .iter()
                .map(|(name, value)| v1::Flag { name: name.clone(), value: Some(value.clone()) })
                .collect();
            answer(R::GetFlags, &|r| {
                r.get_flags = Some(op::response::GetFlags { flags: flags.clone() })
            })
        }
        T::GetVersion => answer(R::GetVersion, &|r| {
            r.get_version = Some(op::response::GetVersion { version_info: state::version_info() })
        }),
        T::GetMetrics => {
            let Some(snapshot) = handle.query(state::metrics_snapshot).await else {
                return shutting_down();
            };
            let metrics: Vec<v1::Metric> = snapshot
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| v1::Metric { name: k.clone(), value: v.as_f64() })
                .collect();
            answer(R::GetMetrics, &|r| {
                r.get_metrics = Some(op::response::GetMetrics { metrics: metrics.clone() })
            })
        }
        T::GetLoggingLevel => answer(R::GetLoggingLevel, &|r| {
            r.get_logging_level = Some(op::response::GetLoggingLevel { level: logging::level() })
        }),
        T::SetLoggingLevel => {
            let s = call.set_logging_level.unwrap_or_default();
            let ns = s.duration.nanoseconds;
            if ns <= 0 {
                return bad_request("'duration' must be positive");
            }
            match logging::set(s.level, std::time::Duration::from_nanos(ns as u64)) {
                Ok(()) => StatusCode::OK.into_response(),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        T::ListFiles | T::ReadFile => {
            // The master keeps no files of its own (logs go to stderr); Mesos answers an
            // unknown path the same way.
            let path = call
                .list_files
                .map(|l| l.path)
                .or(call.read_file.map(|r| r.path))
                .unwrap_or_default();
            text(StatusCode::NOT_FOUND, format!("No file or directory found at path '{path}'"))
        }
        T::Subscribe => operator_subscribe(handle, encoding).await,
        _ => {
            let (reply, rx) = oneshot::channel();
            if !handle.send(Input::OperatorCall { call: Box::new(call), reply }).await {
                return shutting_down();
            }
            match rx.await {
                Ok(Ok(OperatorResponse::Body(r))) => encoded(encoding, &*r),
                Ok(Ok(OperatorResponse::Ok)) => StatusCode::OK.into_response(),
                Ok(Ok(OperatorResponse::Accepted)) => StatusCode::ACCEPTED.into_response(),
                Ok(Err(e)) => call_error(e),
                Err(_) => shutting_down(),
            }
        }
    }
}

fn shutting_down() -> Response {
    text(StatusCode::SERVICE_UNAVAILABLE, "Master is shutting down")
}

fn call_error(e: CallError) -> Response {
    match e {
        CallError::BadRequest(m) => bad_request(m),
        CallError::Forbidden(m) => text(StatusCode::FORBIDDEN, m),
        CallError::Conflict(m) => text(StatusCode::CONFLICT, m),
        CallError::NotImplemented => StatusCode::NOT_IMPLEMENTED.into_response(),
    }
}

/// A 200 whose body is `msg` in `encoding`.
fn encoded<M: prost::Message + prost::Name>(encoding: Encoding, msg: &M) -> Response {
    ([(header::CONTENT_TYPE, encoding.media_type())], encoding.encode(msg)).into_response()
}

async fn operator_subscribe(handle: Handle, encoding: Encoding) -> Response {
    let stream = handle.next_id();
    let (tx, rx) = super::event_queue();
    if !handle.send(Input::OperatorSubscribe { stream, encoding, tx }).await {
        return shutting_down();
    }
    let heartbeat = encoding.record(&operator_heartbeat());
    let body = EventBody::new(handle, stream, rx, heartbeat);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, encoding.media_type())
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Tells the core when a subscriber's stream ends, however it ends (client gone, server
/// closed it, master stopping).
struct StreamGuard {
    handle: Handle,
    stream: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.handle.send_control(Input::StreamClosed { stream: self.stream });
    }
}

/// A subscriber's chunked body: one RecordIO record per chunk, a HEARTBEAT record whenever
/// the interval elapses, ending when the core closes the stream.
struct EventBody {
    rx: super::EventRx,
    heartbeat: tokio::time::Interval,
    heartbeat_record: Bytes,
    #[allow(dead_code)]
    guard: StreamGuard,
}

impl EventBody {
    fn new(handle: Handle, stream: u64, rx: super::EventRx, heartbeat: Bytes) -> EventBody {
        let interval = handle.heartbeat_interval;
        EventBody {
            rx,
            heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + interval, interval),
            heartbeat_record: heartbeat,
            guard: StreamGuard { handle, stream },
        }
    }
}

impl Stream for EventBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => return Poll::Ready(Some(Ok(b))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if self.heartbeat.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Ok(self.heartbeat_record.clone())));
        }
        Poll::Pending
    }
}

/// A small live status page (agents, frameworks, tasks) rendered from `/state` in the
/// browser; everything is inserted as text, never as markup.
async fn status_page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("status.html"))
        .into_response()
}

async fn health() -> StatusCode {
    StatusCode::OK
}

#[derive(Debug, serde::Deserialize)]
pub struct JsonpQuery {
    jsonp: Option<String>,
}

/// JSON, or JSONP when `?jsonp=callback` is given.
pub fn json_response(value: &serde_json::Value, jsonp: Option<&str>) -> Response {
    let body = value.to_string();
    match jsonp.filter(|cb| {
        !cb.is_empty() && cb.chars().all(|c| c.is_ascii_alphanumeric() || "_.$[]".contains(c))
    }) {
        Some(cb) => {
            ([(header::CONTENT_TYPE, "text/javascript")], format!("{cb}({body});")).into_response()
        }
        None => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
    }
}

async fn state_handler(State(handle): State<Handle>, Query(q): Query<JsonpQuery>) -> Response {
    let flags = handle.flags.clone();
    view(&handle, q.jsonp.as_deref(), move |m| state::state(m, &flags)).await
}

/// Runs `view` against the core and answers it as JSON (or JSONP).
async fn view(
    handle: &Handle,
    jsonp: Option<&str>,
    view: impl FnOnce(&crate::core::Master) -> serde_json::Value + Send + 'static,
) -> Response {
    match handle.query(view).await {
        Some(v) => json_response(&v, jsonp),
        None => text(StatusCode::SERVICE_UNAVAILABLE, "Master is shutting down"),
    }
}

#[derive(Debug, serde::Deserialize)]
struct SlavesQuery {
    slave_id: Option<String>,
    jsonp: Option<String>,
}

async fn slaves(State(handle): State<Handle>, Query(q): Query<SlavesQuery>) -> Response {
    let id = q.slave_id;
    view(&handle, q.jsonp.as_deref(), move |m| state::slaves(m, id.as_deref())).await
}

#[derive(Debug, serde::Deserialize)]
struct FrameworksQuery {
    framework_id: Option<String>,
    jsonp: Option<String>,
}

async fn frameworks(State(handle): State<Handle>, Query(q): Query<FrameworksQuery>) -> Response {
    let id = q.framework_id;
    view(&handle, q.jsonp.as_deref(), move |m| state::frameworks(m, id.as_deref())).await
}

#[derive(Debug, serde::Deserialize)]
struct TasksParams {
    limit: Option<String>,
    offset: Option<String>,
    order: Option<String>,
    framework_id: Option<String>,
    task_id: Option<String>,
    jsonp: Option<String>,
}

async fn tasks(State(handle): State<Handle>, Query(q): Query<TasksParams>) -> Response {
    let number = |name: &str, v: &Option<String>| -> Result<Option<i64>, String> {
        v.as_deref()
            .map(|s| s.parse::<i64>().map_err(|_| format!("Failed to parse '{name}': '{s}'")))
            .transpose()
    };
    let (limit, offset) = match (number("limit", &q.limit), number("offset", &q.offset)) {
        (Ok(l), Ok(o)) => (l, o),
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    let Ok(offset) = offset.map(usize::try_from).transpose() else {
        return bad_request("Failed to parse 'offset': negative");
    };
    let query = state::TasksQuery {
        limit,
        offset,
        order: q.order,
        framework_id: q.framework_id,
        task_id: q.task_id,
    };
    match handle.query(move |m| state::tasks(m, &query)).await {
        Some(Ok(v)) => json_response(&v, q.jsonp.as_deref()),
        Some(Err(e)) => bad_request(e),
        None => text(StatusCode::SERVICE_UNAVAILABLE, "Master is shutting down"),
    }
}

async fn flags(State(handle): State<Handle>, Query(q): Query<JsonpQuery>) -> Response {
    json_response(&state::flags(&handle.flags), q.jsonp.as_deref())
}

async fn state_summary(State(handle): State<Handle>, Query(q): Query<JsonpQuery>) -> Response {
    view(&handle, q.jsonp.as_deref(), state::state_summary).await
}

async fn roles(State(handle): State<Handle>, Query(q): Query<JsonpQuery>) -> Response {
    view(&handle, q.jsonp.as_deref(), state::roles).await
}

async fn metrics_snapshot(State(handle): State<Handle>, Query(q): Query<JsonpQuery>) -> Response {
    view(&handle, q.jsonp.as_deref(), state::metrics_snapshot).await
}

/// `/metrics`: Prometheus text (OpenMetrics), the offer path included.
async fn prometheus_metrics(State(handle): State<Handle>) -> Response {
    match handle.query(super::prometheus::Snapshot::take).await {
        Some(snapshot) => (
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            snapshot.encode(),
        )
            .into_response(),
        None => text(StatusCode::SERVICE_UNAVAILABLE, "Master is shutting down"),
    }
}

async fn version(Query(q): Query<JsonpQuery>) -> Response {
    json_response(&state::version(), q.jsonp.as_deref())
}

/// This master is always the leader until HA lands: redirect to itself.
async fn redirect(State(handle): State<Handle>) -> Response {
    let loc = format!("//{}:{}", handle.identity.hostname, handle.identity.port);
    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, loc)]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let mut h = HeaderMap::new();
        assert!(accepts(&h, APPLICATION_JSON), "no header accepts anything");
        h.append(header::ACCEPT, HeaderValue::from_static("application/x-protobuf"));
        assert!(!accepts(&h, APPLICATION_JSON));
        assert!(accepts(&h, APPLICATION_PROTOBUF));
        h.append(header::ACCEPT, HeaderValue::from_static("text/html, application/*;q=0.5"));
        assert!(accepts(&h, APPLICATION_JSON), "second header, wildcard subtype");
        let mut h = HeaderMap::new();
        h.append(header::ACCEPT, HeaderValue::from_static("application/json;q=0"));
        assert!(!accepts(&h, APPLICATION_JSON));
    }
}
