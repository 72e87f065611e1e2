//! The Mesos JSON mapping (stout's `JSON::protobuf` / `protobuf::parse`), which is *not*
//! proto3 canonical JSON. Both directions reflect over the schema's descriptors, so every
//! message of the schema maps the same way:
//!
//! Output: proto field names verbatim; a singular field is written when set, or when unset but
//! declaring a non-deprecated explicit `[default = ...]`; repeated and map fields only when
//! non-empty; enums by value name; bytes as padded base64; 64-bit integers as plain numbers;
//! integral doubles with a fraction (`15.0`); one line, ASCII only (non-ASCII escaped as
//! `\uXXXX`), so RecordIO clients that split on newlines or slice by byte length work.
//!
//! Input: unknown keys ignored; `null` means unset; numbers accepted as numeric strings,
//! doubles also as `"Infinity"`/`"-Infinity"`; bools as `"true"`/`"false"`; enums only by
//! name (an unknown name leaves an optional field unset and fails a required one); a single
//! value is taken for a repeated field; then every proto2 `required` field, recursively, must
//! be present ("Missing required fields: a.b, c").

use std::fmt::Write as _;

use base64::Engine as _;
use prost_reflect::{
    Cardinality, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage,
    Value,
};

use super::descriptor_pool;

/// Why a JSON document could not become a message. The `Display` texts are Mesos'.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JsonError {
    /// The bytes are not JSON at all.
    #[error("{0}")]
    Syntax(String),
    /// JSON, but not a valid message of the wanted type.
    #[error("{0}")]
    Convert(String),
}

/// Parses `body` as JSON and converts it to `T` by the Mesos rules.
pub fn from_slice<T: prost::Message + prost::Name + Default>(body: &[u8]) -> Result<T, JsonError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| JsonError::Syntax(e.to_string()))?;
    from_value(&value).map_err(JsonError::Convert)
}

/// Converts an already-parsed JSON value to `T` by the Mesos rules.
pub fn from_value<T: prost::Message + prost::Name + Default>(
    value: &serde_json::Value,
) -> Result<T, String> {
    let desc = message_descriptor::<T>();
    let serde_json::Value::Object(object) = value else {
        return Err("Expecting a JSON object".to_string());
    };
    let mut msg = DynamicMessage::new(desc);
    parse_object(&mut msg, object)?;
    check_initialized(&msg)?;
    msg.transcode_to::<T>().map_err(|e| format!("Failed to convert message: {e}"))
}

/// Decodes a protobuf body into `T`, refusing it (like protobuf's `ParseFromString`) when a
/// required field is missing. Unknown fields are skipped.
pub fn from_protobuf<T: prost::Message + prost::Name + Default>(body: &[u8]) -> Result<T, String> {
    let msg = DynamicMessage::decode(message_descriptor::<T>(), body).map_err(|e| e.to_string())?;
    check_initialized(&msg)?;
    msg.transcode_to::<T>().map_err(|e| e.to_string())
}

/// Writes `msg` as one line of ASCII JSON by the Mesos rules.
pub fn to_string<T: prost::Message + prost::Name>(msg: &T) -> String {
    let mut out = String::with_capacity(256);
    write(&mut out, msg);
    out
}

/// Appends `msg` as one line of ASCII JSON to `out`.
pub fn write<T: prost::Message + prost::Name>(out: &mut String, msg: &T) {
    let desc = message_descriptor::<T>();
    let bytes = msg.encode_to_vec();
    let dynamic = DynamicMessage::decode(desc, bytes.as_slice())
        .expect("a message encoded by prost decodes with its own descriptor");
    write_message(out, &dynamic);
}

/// `msg` as a `serde_json::Value` (for embedding in hand-built legacy JSON documents).
pub fn to_value<T: prost::Message + prost::Name>(msg: &T) -> serde_json::Value {
    serde_json::from_str(&to_string(msg)).unwrap_or(serde_json::Value::Null)
}

fn message_descriptor<T: prost::Name>() -> MessageDescriptor {
    let name = T::full_name();
    descriptor_pool()
        .get_message_by_name(&name)
        .unwrap_or_else(|| panic!("{name} is generated from the same descriptor set"))
}

// ---------------------------------------------------------------------------------------------
// Input.

fn parse_object(
    msg: &mut DynamicMessage,
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), String> {
    let desc = msg.descriptor();
    for (name, value) in object {
        if let Some(field) = desc.get_field_by_name(name) {
            apply(msg, &field, value)?;
        }
    }
    Ok(())
}

fn apply(
    msg: &mut DynamicMessage,
    field: &FieldDescriptor,
    json: &serde_json::Value,
) -> Result<(), String> {
    use serde_json::Value as J;
    match json {
        J::Null => Ok(()),
        J::Array(items) => {
            if !field.is_list() {
                return Err(format!("Not expecting a JSON array for field '{}'", field.name()));
            }
            for item in items {
                apply(msg, field, item)?;
            }
            Ok(())
        }
        J::Object(object) => {
            if field.is_map() {
                let Kind::Message(entry) = field.kind() else { unreachable!("maps are messages") };
                let key_field = entry.map_entry_key_field();
                let value_field = entry.map_entry_value_field();
                for (k, v) in object {
                    let key = map_key(&key_field, k)?;
                    let Some(value) = scalar_or_message(&value_field, v)? else { continue };
                    if let Value::Map(map) = msg.get_field_mut(field) {
                        map.insert(key, value);
                    }
                }
                return Ok(());
            }
            let Kind::Message(desc) = field.kind() else {
                return Err(format!("Not expecting a JSON object for field '{}'", field.name()));
            };
            if field.is_list() {
                let mut sub = DynamicMessage::new(desc);
                parse_object(&mut sub, object)?;
                push(msg, field, Value::Message(sub));
            } else if let Value::Message(sub) = msg.get_field_mut(field) {
                parse_object(sub, object)?;
            }
            Ok(())
        }
        _ => {
            if let Some(v) = scalar_or_message(field, json)? {
                if field.is_list() {
                    push(msg, field, v);
                } else {
                    msg.set_field(field, v);
                }
            }
            Ok(())
        }
    }
}

fn push(msg: &mut DynamicMessage, field: &FieldDescriptor, v: Value) {
    if let Value::List(list) = msg.get_field_mut(field) {
        list.push(v);
    }
}

fn map_key(key_field: &FieldDescriptor, k: &str) -> Result<MapKey, String> {
    let v = scalar_or_message(key_field, &serde_json::Value::String(k.to_string()))?;
    Ok(match v {
        Some(Value::Bool(b)) => MapKey::Bool(b),
        Some(Value::I32(i)) => MapKey::I32(i),
        Some(Value::I64(i)) => MapKey::I64(i),
        Some(Value::U32(i)) => MapKey::U32(i),
        Some(Value::U64(i)) => MapKey::U64(i),
        _ => MapKey::String(k.to_string()),
    })
}

/// Converts one non-array JSON value for `field`'s element type. `Ok(None)` means "leave the
/// field unset" (null, or an unknown name for an optional enum).
fn scalar_or_message(
    field: &FieldDescriptor,
    json: &serde_json::Value,
) -> Result<Option<Value>, String> {
    use serde_json::Value as J;
    let name = field.name();
    let kind = field.kind();
    // `TaskInfo.limits` values are `Value.Scalar` messages, but Mesos' own docs show them as
    // bare numbers or "Infinity": accept both forms.
    if let Kind::Message(desc) = &kind
        && desc.full_name() == "mesos.v1.Value.Scalar"
        && (json.is_number() || json.is_string())
    {
        let mut sub = DynamicMessage::new(desc.clone());
        let value_field = desc.get_field_by_name("value").expect("Value.Scalar has `value`");
        if let Some(v) = scalar_or_message(&value_field, json)? {
            sub.set_field(&value_field, v);
        }
        return Ok(Some(Value::Message(sub)));
    }
    match json {
        J::Null => Ok(None),
        J::Object(object) => match kind {
            Kind::Message(desc) => {
                let mut sub = DynamicMessage::new(desc);
                parse_object(&mut sub, object)?;
                Ok(Some(Value::Message(sub)))
            }
            _ => Err(format!("Not expecting a JSON object for field '{name}'")),
        },
        J::Array(_) => Err(format!("Not expecting a JSON array for field '{name}'")),
        J::String(s) => match kind {
            Kind::String => Ok(Some(Value::String(s.clone()))),
            Kind::Bytes => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(|b| Some(Value::Bytes(b.into())))
                .map_err(|e| format!("Failed to base64 decode bytes field '{name}': {e}")),
            Kind::Enum(e) => match e.get_value_by_name(s) {
                Some(v) => Ok(Some(Value::EnumNumber(v.number()))),
                None if field.cardinality() == Cardinality::Required => {
                    Err(format!("Failed to find enum for '{s}'"))
                }
                None => Ok(None),
            },
            Kind::Double | Kind::Float if s == "Infinity" => number(field, f64::INFINITY.into()),
            Kind::Double | Kind::Float if s == "-Infinity" => {
                number(field, f64::NEG_INFINITY.into())
            }
            Kind::Bool => match s.as_str() {
                "true" => Ok(Some(Value::Bool(true))),
                "false" => Ok(Some(Value::Bool(false))),
                _ => Err(format!(
                    "Failed to parse '{s}' as a JSON boolean for field '{name}': syntax error"
                )),
            },
            Kind::Message(_) => Err(format!("Not expecting a JSON string for field '{name}'")),
            _ => match serde_json::from_str::<serde_json::Number>(s) {
                Ok(n) => number(field, Num::from(&n)),
                Err(e) => {
                    Err(format!("Failed to parse '{s}' as a JSON number for field '{name}': {e}"))
                }
            },
        },
        J::Number(n) => number(field, Num::from(n)),
        J::Bool(b) => match kind {
            Kind::Bool => Ok(Some(Value::Bool(*b))),
            _ => Err(format!("Not expecting a JSON boolean for field '{name}'")),
        },
    }
}

/// A JSON number as stout keeps it: exact integers where they fit, else a double.
#[derive(Clone, Copy)]
enum Num {
    I(i64),
    U(u64),
    F(f64),
}

impl From<&serde_json::Number> for Num {
    fn from(n: &serde_json::Number) -> Num {
        if let Some(i) = n.as_i64() {
            Num::I(i)
        } else if let Some(u) = n.as_u64() {
            Num::U(u)
        } else {
            Num::F(n.as_f64().unwrap_or(f64::NAN))
        }
    }
}

impl From<f64> for Num {
    fn from(f: f64) -> Num {
        Num::F(f)
    }
}

impl Num {
    fn f64(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::U(u) => u as f64,
            Num::F(f) => f,
        }
    }
    fn i64(self) -> i64 {
        match self {
            Num::I(i) => i,
            Num::U(u) => u as i64,
            Num::F(f) => f as i64,
        }
    }
    fn u64(self) -> u64 {
        match self {
            Num::I(i) => i as u64,
            Num::U(u) => u,
            Num::F(f) => f as u64,
        }
    }
}

fn number(field: &FieldDescriptor, n: Num) -> Result<Option<Value>, String> {
    Ok(Some(match field.kind() {
        Kind::Double => Value::F64(n.f64()),
        Kind::Float => Value::F32(n.f64() as f32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(n.i64()),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(n.u64()),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(n.i64() as i32),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(n.u64() as u32),
        _ => return Err(format!("Not expecting a JSON number for field '{}'", field.name())),
    }))
}

/// Fails with protobuf's initialization error text when a required field is missing
/// anywhere in the message tree.
fn check_initialized(msg: &DynamicMessage) -> Result<(), String> {
    let mut missing = Vec::new();
    missing_fields(msg, "", &mut missing);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("Missing required fields: {}", missing.join(", ")))
    }
}

fn missing_fields(msg: &DynamicMessage, prefix: &str, out: &mut Vec<String>) {
    for field in msg.descriptor().fields() {
        if field.cardinality() == Cardinality::Required && !msg.has_field(&field) {
            out.push(format!("{prefix}{}", field.name()));
            continue;
        }
        if !matches!(field.kind(), Kind::Message(_)) || !msg.has_field(&field) {
            continue;
        }
        match &*msg.get_field(&field) {
            Value::Message(sub) => missing_fields(sub, &format!("{prefix}{}.", field.name()), out),
            Value::List(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Message(sub) = item {
                        missing_fields(sub, &format!("{prefix}{}[{i}].", field.name()), out);
                    }
                }
            }
            Value::Map(map) => {
                for (k, item) in map {
                    if let Value::Message(sub) = item {
                        let key = match k {
                            MapKey::String(s) => s.clone(),
                            other => format!("{other:?}"),
                        };
                        missing_fields(sub, &format!("{prefix}{}[{key}].", field.name()), out);
                    }
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Output.

fn explicit_default(field: &FieldDescriptor) -> bool {
    let proto = field.field_descriptor_proto();
    proto.default_value.is_some()
        && !proto.options.as_ref().and_then(|o| o.deprecated).unwrap_or(false)
}

fn write_message(out: &mut String, msg: &DynamicMessage) {
    out.push('{');
    let mut first = true;
    for field in msg.descriptor().fields() {
        let value = msg.get_field(&field);
        let write_it = match &*value {
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
            _ => msg.has_field(&field) || explicit_default(&field),
        };
        if !write_it {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        write_str(out, field.name());
        out.push(':');
        match &*value {
            Value::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_value(out, &field.kind(), item);
                }
                out.push(']');
            }
            Value::Map(map) => {
                let Kind::Message(entry) = field.kind() else { unreachable!("maps are messages") };
                let value_kind = entry.map_entry_value_field().kind();
                // Sorted, so output is deterministic.
                let mut entries: Vec<(String, &Value)> =
                    map.iter().map(|(k, v)| (map_key_string(k), v)).collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, k);
                    out.push(':');
                    write_value(out, &value_kind, v);
                }
                out.push('}');
            }
            single => write_value(out, &field.kind(), single),
        }
    }
    out.push('}');
}

fn map_key_string(k: &MapKey) -> String {
    match k {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(i) => i.to_string(),
        MapKey::I64(i) => i.to_string(),
        MapKey::U32(i) => i.to_string(),
        MapKey::U64(i) => i.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

fn write_value(out: &mut String, kind: &Kind, v: &Value) {
    match v {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::I32(i) => {
            let _ = write!(out, "{i}");
        }
        Value::I64(i) => {
            let _ = write!(out, "{i}");
        }
        Value::U32(i) => {
            let _ = write!(out, "{i}");
        }
        Value::U64(i) => {
            let _ = write!(out, "{i}");
        }
        Value::F32(f) => write_float(out, f64::from(*f), ryu::Buffer::new().format_finite(*f)),
        Value::F64(f) => write_float(out, *f, ryu::Buffer::new().format_finite(*f)),
        Value::String(s) => write_str(out, s),
        Value::Bytes(b) => write_str(out, &base64::engine::general_purpose::STANDARD.encode(b)),
        Value::EnumNumber(n) => match kind {
            Kind::Enum(e) => match e.get_value(*n) {
                Some(v) => write_str(out, v.name()),
                None => {
                    let _ = write!(out, "{n}");
                }
            },
            _ => {
                let _ = write!(out, "{n}");
            }
        },
        Value::Message(m) => write_message(out, m),
        Value::List(_) | Value::Map(_) => out.push_str("null"),
    }
}

/// Finite doubles in shortest round-trip form (`15.0`, `0.1`, `1e-7`); infinities as the bare
/// tokens Mesos writes (`Infinity`), NaN as `null`.
fn write_float(out: &mut String, f: f64, finite: &str) {
    if f.is_finite() {
        out.push_str(finite);
    } else if f.is_nan() {
        out.push_str("null");
    } else if f > 0.0 {
        out.push_str("Infinity");
    } else {
        out.push_str("-Infinity");
    }
}

/// A JSON string literal, ASCII only.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) >= 0x7f => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesos::v1;
    use crate::mesos::v1::scheduler::{Call, Event, call, event};

    #[test]
    fn subscribe_call_parses_with_defaults_and_unknown_keys() {
        let body =
            br#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{"user":"root","name":"fw",
            "roles":"web","capabilities":[{"type":"MULTI_ROLE"},{"type":"NO_SUCH_CAP"}],
            "failover_timeout":"30","checkpoint":"true","unknownKey":1}},"extra":null}"#;
        let call: Call = from_slice(body).unwrap();
        assert_eq!(call.r#type(), call::Type::Subscribe);
        let fi = call.subscribe.unwrap().framework_info;
        assert_eq!(fi.user, "root");
        assert_eq!(fi.roles, vec!["web".to_string()]);
        assert_eq!(fi.failover_timeout, Some(30.0));
        assert_eq!(fi.checkpoint, Some(true));
        // The unknown capability name leaves that element's optional `type` unset.
        assert_eq!(fi.capabilities.len(), 2);
        assert_eq!(fi.capabilities[1].r#type, None);
    }

    #[test]
    fn missing_required_fields_are_named_with_paths() {
        let err = from_slice::<Call>(br#"{"type":"SUBSCRIBE","subscribe":{"framework_info":{}}}"#)
            .unwrap_err();
        assert_eq!(
            err,
            JsonError::Convert(
                "Missing required fields: subscribe.framework_info.user, subscribe.framework_info.name"
                    .into()
            )
        );
        let err =
            from_slice::<Call>(br#"{"type":"ACCEPT","accept":{"offer_ids":[{"value":"o"},{}]}}"#)
                .unwrap_err();
        assert_eq!(
            err,
            JsonError::Convert("Missing required fields: accept.offer_ids[1].value".into())
        );
    }

    #[test]
    fn type_errors_use_mesos_texts() {
        let e = |b: &[u8]| from_slice::<Call>(b).unwrap_err().to_string();
        assert_eq!(e(br#"{"type":["SUBSCRIBE"]}"#), "Not expecting a JSON array for field 'type'");
        assert_eq!(e(br#"{"type":1}"#), "Not expecting a JSON number for field 'type'");
        assert_eq!(
            e(br#"{"framework_id":"x"}"#),
            "Not expecting a JSON string for field 'framework_id'"
        );
        assert_eq!(e(br#"[]"#), "Expecting a JSON object");
        assert!(
            e(br#"{"acknowledge":{"uuid":"***"}}"#)
                .starts_with("Failed to base64 decode bytes field 'uuid'")
        );
        assert!(matches!(from_slice::<Call>(b"{nope"), Err(JsonError::Syntax(_))));
        // An unknown name in the optional `type` leaves it unset.
        let c: Call = from_slice(br#"{"type":"NO_SUCH_CALL"}"#).unwrap();
        assert_eq!(c.r#type, None);
    }

    #[test]
    fn output_follows_mesos_rules() {
        let ev = Event {
            r#type: Some(event::Type::Subscribed as i32),
            subscribed: Some(event::Subscribed {
                framework_id: v1::FrameworkId { value: "m-0000".into() },
                heartbeat_interval_seconds: Some(15.0),
                master_info: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            to_string(&ev),
            r#"{"type":"SUBSCRIBED","subscribed":{"framework_id":{"value":"m-0000"},"heartbeat_interval_seconds":15.0}}"#
        );
        // Explicit defaults are written even when unset; deprecated ones are not.
        let cmd = v1::CommandInfo { value: Some("echo".into()), ..Default::default() };
        assert_eq!(to_string(&cmd), r#"{"value":"echo","shell":true}"#);
        let fi = v1::FrameworkInfo { user: "u".into(), name: "n".into(), ..Default::default() };
        assert_eq!(
            to_string(&fi),
            r#"{"user":"u","name":"n","failover_timeout":0.0,"checkpoint":false}"#
        );
        let st = v1::TaskStatus {
            task_id: v1::TaskId { value: "t\u{e9}\n".into() },
            state: v1::TaskState::TaskRunning as i32,
            uuid: Some(vec![0xff; 16]),
            timestamp: Some(1700000000.5),
            ..Default::default()
        };
        let s = to_string(&st);
        assert!(s.is_ascii() && !s.contains('\n'), "{s}");
        assert!(s.contains(r#""value":"t\u00e9\n""#), "{s}");
        assert!(s.contains(r#""state":"TASK_RUNNING""#), "{s}");
        assert!(s.contains(r#""uuid":"/////////////////////w==""#), "{s}");
        // And it parses back to the same message.
        let back: v1::TaskStatus = from_slice(s.as_bytes()).unwrap();
        assert_eq!(back, st);
    }

    #[test]
    fn maps_and_infinity() {
        let t: v1::TaskInfo = from_slice(
            br#"{"name":"t","task_id":{"value":"t"},"agent_id":{"value":"a"},
                "limits":{"cpus":{"value":"Infinity"},"mem":{"value":512}}}"#,
        )
        .unwrap();
        assert_eq!(t.limits["cpus"].value, f64::INFINITY);
        let docs_form: v1::TaskInfo = from_slice(
            br#"{"name":"t","task_id":{"value":"t"},"agent_id":{"value":"a"},
                "limits":{"cpus":"Infinity","mem":512.0}}"#,
        )
        .unwrap();
        assert_eq!(docs_form.limits, t.limits);
        let s = to_string(&t);
        assert!(s.contains(r#""limits":{"cpus":{"value":Infinity},"mem":{"value":512.0}}"#), "{s}");
    }

    #[test]
    fn protobuf_requires_required_fields() {
        use prost::Message as _;
        let ok = v1::FrameworkId { value: "x".into() }.encode_to_vec();
        assert_eq!(from_protobuf::<v1::FrameworkId>(&ok).unwrap().value, "x");
        assert!(
            from_protobuf::<v1::FrameworkId>(&[])
                .unwrap_err()
                .contains("Missing required fields: value")
        );
    }
}
