//! The v1 scheduler API on the wire, checked with raw HTTP/1.1 over TCP (what `curl -N`
//! shows): status codes, headers and texts of Mesos, and the SUBSCRIBE stream's chunked
//! RecordIO framing byte for byte. These need only a master, so they run on any host.

// Tests drive real processes and measure real time; the no-clock rule is for the cores.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use corral_tests::rawhttp::request;
use corral_tests::{Cluster, ClusterOptions};

/// A master alone (no agents): the scheduler API needs nothing else.
struct Master {
    _cluster: Cluster,
    port: u16,
}

fn master() -> Master {
    let cluster = Cluster::start(ClusterOptions { agents: 0, ..Default::default() });
    Master { port: cluster.master_port, _cluster: cluster }
}

const SUBSCRIBE: &str =
    r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"root","name":"raw-test"}}}"#;

#[test]
fn subscribe_is_a_chunked_recordio_stream() {
    let m = master();
    let mut r = request(
        m.port,
        "POST",
        "/api/v1/scheduler",
        &[
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
            ("Connection", "close"),
        ],
        SUBSCRIBE,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.header("content-length").is_none());
    let stream_id = r.header("mesos-stream-id").expect("Mesos-Stream-Id").to_string();
    assert!(uuid::Uuid::parse_str(&stream_id).is_ok(), "{stream_id}");
    let (records, bytes) = r.records(2);
    let first = String::from_utf8(records[0].clone()).unwrap();
    assert!(
        first.starts_with(r#"{"type":"SUBSCRIBED","subscribed":{"framework_id":{"value":""#),
        "{first}"
    );
    assert!(first.is_ascii() && !first.contains('\n'), "single-line ASCII JSON");
    assert!(first.contains(r#""heartbeat_interval_seconds":15.0"#), "{first}");
    assert!(first.contains(r#""master_info":{"#) && first.contains(r#""address":{"#), "{first}");
    // The second record follows the first with no separator: `<len>\n{...}20\n{"type":"HEARTBEAT"}`.
    let expected_tail = br#"20
{"type":"HEARTBEAT"}"#;
    assert!(bytes.ends_with(expected_tail), "{:?}", String::from_utf8_lossy(&bytes));
    assert_eq!(
        bytes.len(),
        format!("{}\n", records[0].len()).len() + records[0].len() + expected_tail.len()
    );
}

#[test]
fn scheduler_api_statuses_and_texts() {
    let m = master();
    let post = |headers: &[(&str, &str)], body: &str| {
        let r = request(m.port, "POST", "/api/v1/scheduler", headers, body);
        (r.status, r.header("allow").map(String::from), r.body())
    };
    let json = [("Content-Type", "application/json")];
    let r = request(m.port, "GET", "/api/v1/scheduler", &[], "");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    assert_eq!(post(&[], "{}").2, "Expecting 'Content-Type' to be present");
    let (status, _, body) = post(&[("Content-Type", "text/plain")], "{}");
    assert_eq!(status, 415);
    assert_eq!(body, "Expecting 'Content-Type' of application/json or application/x-protobuf");
    let (status, _, body) = post(&json, "{not json");
    assert_eq!(status, 400);
    assert!(body.starts_with("Failed to parse body into JSON: "), "{body}");
    let (status, _, body) =
        post(&json, r#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"name":"x"}}}"#);
    assert_eq!(status, 400);
    assert_eq!(
        body,
        "Failed to convert JSON into Call protobuf: Missing required fields: subscribe.framework_info.user"
    );
    let (status, _, body) = post(&json, r#"{"type":"SUBSCRIBE"}"#);
    assert_eq!(
        (status, body.as_str()),
        (400, "Failed to validate scheduler::Call: Expecting 'subscribe' to be present")
    );
    let (status, _, body) = post(&json, r#"{"type":"REVIVE","framework_id":{"value":"nope"}}"#);
    assert_eq!((status, body.as_str()), (400, "Framework cannot be found"));
    let (status, _, body) =
        post(&[("Content-Type", "application/json"), ("Mesos-Stream-Id", "x")], SUBSCRIBE);
    assert_eq!(
        (status, body.as_str()),
        (400, "Subscribe calls should not include the 'Mesos-Stream-Id' header")
    );
    let (status, _, body) =
        post(&[("Content-Type", "application/json"), ("Accept", "text/html")], SUBSCRIBE);
    assert_eq!(status, 406, "{body}");
    // The same API under /master/..., with a trailing slash.
    let r =
        request(m.port, "POST", "/master/api/v1/scheduler/", &json, r#"{"type":"UNKNOWN_CALL"}"#);
    assert_eq!(r.status, 400);
    assert_eq!(r.body(), "Failed to validate scheduler::Call: Expecting 'type' to be present");
    // Oversized bodies are refused before they are read.
    let huge = "x".repeat(9 << 20);
    let r = request(m.port, "POST", "/api/v1/scheduler", &json, &huge);
    assert_eq!(r.status, 413);
}

#[test]
fn calls_need_the_stream_id_and_get_202() {
    let m = master();
    let mut sub = request(
        m.port,
        "POST",
        "/api/v1/scheduler",
        &[("Content-Type", "application/json")],
        SUBSCRIBE,
    );
    let stream_id = sub.header("mesos-stream-id").unwrap().to_string();
    let first = String::from_utf8(sub.chunk()).unwrap();
    let fid = first
        .split(r#""framework_id":{"value":""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let revive = format!(r#"{{"type":"REVIVE","framework_id":{{"value":"{fid}"}}}}"#);
    let r = request(
        m.port,
        "POST",
        "/api/v1/scheduler",
        &[("Content-Type", "application/json")],
        &revive,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.body(), "All non-subscribe calls should include the 'Mesos-Stream-Id' header");
    let r = request(
        m.port,
        "POST",
        "/api/v1/scheduler",
        &[("Content-Type", "application/json"), ("Mesos-Stream-Id", &stream_id)],
        &revive,
    );
    assert_eq!(r.status, 202);
    assert_eq!(r.body(), "");
    // An ACKNOWLEDGE with a uuid that is not 16 bytes is refused by validation.
    let ack = format!(
        r#"{{"type":"ACKNOWLEDGE","framework_id":{{"value":"{fid}"}},"acknowledge":{{"agent_id":{{"value":"a"}},"task_id":{{"value":"t"}},"uuid":"AAAA"}}}}"#
    );
    let r = request(
        m.port,
        "POST",
        "/api/v1/scheduler",
        &[("Content-Type", "application/json"), ("Mesos-Stream-Id", &stream_id)],
        &ack,
    );
    assert_eq!(
        (r.status, r.body().as_str()),
        (400, "Failed to validate scheduler::Call: Not a valid UUID")
    );
}

#[test]
fn read_only_endpoints() {
    let m = master();
    let r = request(m.port, "GET", "/health", &[], "");
    assert_eq!(r.status, 200);
    let r = request(m.port, "GET", "/version", &[], "");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
    assert_eq!(v["version"], "1.11.0");
    for path in ["/state", "/master/state", "/master/state/", "/state.json"] {
        let r = request(m.port, "GET", path, &[], "");
        assert_eq!(r.status, 200, "{path}");
        let v: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(v["version"], "1.11.0");
        assert!(v["leader_info"]["address"]["port"].as_u64() == Some(u64::from(m.port)), "{v}");
        for key in
            ["slaves", "frameworks", "completed_frameworks", "flags", "id", "pid", "hostname"]
        {
            assert!(!v[key].is_null(), "{path}: {key} missing");
        }
    }
    let r = request(m.port, "GET", "/state?jsonp=cb", &[], "");
    assert_eq!(r.header("content-type"), Some("text/javascript"));
    assert!(r.body().starts_with("cb({"));
    let r = request(m.port, "GET", "/", &[], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r.body().contains("<title>Corral</title>"));
    let r = request(m.port, "GET", "/redirect", &[], "");
    assert_eq!(r.status, 307);
    assert_eq!(r.header("location"), Some(format!("//127.0.0.1:{}", m.port).as_str()));
}

/// The same SUBSCRIBE in protobuf: a protobuf stream (Content-Type as asked), SUBSCRIBED and
/// HEARTBEAT as RecordIO records of `mesos.v1.scheduler.Event`, the SUBSCRIBED equal to the
/// JSON one but for the framework id; calls in protobuf get 202.
#[test]
fn subscribe_and_calls_in_protobuf() {
    use corral_tests::rawhttp::request_bytes;
    use corral_wire::mesos::json;
    use corral_wire::mesos::v1::scheduler::{Call, Event, call, event};
    use prost::Message as _;
    let m = master();
    let sub: Call = json::from_slice(SUBSCRIBE.as_bytes()).unwrap();
    let pb = [("Content-Type", "application/x-protobuf"), ("Accept", "application/x-protobuf")];
    let mut r = request_bytes(m.port, "POST", "/api/v1/scheduler", &pb, &sub.encode_to_vec());
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    let stream_id = r.header("mesos-stream-id").unwrap().to_string();
    let (records, _) = r.records(2);
    let first = Event::decode(&records[0][..]).unwrap();
    assert_eq!(first.r#type(), event::Type::Subscribed);
    assert_eq!(Event::decode(&records[1][..]).unwrap().r#type(), event::Type::Heartbeat);
    let fid = first.subscribed.as_ref().unwrap().framework_id.value.clone();
    // The JSON stream's SUBSCRIBED says the same.
    let mut j = request(
        m.port,
        "POST",
        "/api/v1/scheduler",
        &[("Content-Type", "application/json")],
        SUBSCRIBE,
    );
    let (jrec, _) = j.records(1);
    let jfirst: Event = json::from_slice(&jrec[0]).unwrap();
    let mut a = first.clone();
    let mut b = jfirst;
    a.subscribed.as_mut().unwrap().framework_id.value.clear();
    b.subscribed.as_mut().unwrap().framework_id.value.clear();
    assert_eq!(a, b);
    // A protobuf REVIVE: 202, empty.
    let revive = Call {
        framework_id: Some(corral_wire::mesos::v1::FrameworkId { value: fid }),
        r#type: Some(call::Type::Revive as i32),
        ..Default::default()
    };
    let headers =
        [("Content-Type", "application/x-protobuf"), ("Mesos-Stream-Id", stream_id.as_str())];
    let r = request_bytes(m.port, "POST", "/api/v1/scheduler", &headers, &revive.encode_to_vec());
    assert_eq!(r.status, 202);
    // Garbage protobuf: Mesos' text.
    let r = request_bytes(m.port, "POST", "/api/v1/scheduler", &headers, &[0xff, 0xff, 0xff]);
    assert_eq!((r.status, r.body().as_str()), (400, "Failed to parse body into Call protobuf"));
}
