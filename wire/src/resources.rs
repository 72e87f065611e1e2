//! The resource model: named scalars in fixed point (thousandths, as Mesos rounds them), named
//! ranges (ports) and named sets. All arithmetic is exact, so "no over-commit" holds without
//! floating-point slack.
//!
//! A resource is keyed by its name, its reservation (none, or a role it is reserved for,
//! statically by the agent's flags or dynamically by a RESERVE operation) and, for disk, the
//! persistent volume it holds ([`Key`]). Quantities with different keys never mix: reserved
//! cpus are offered only to their role, and a volume is used whole or not at all. Totals by
//! name ([`Resources::scalar`], [`Resources::scalars_only`]) add across keys.
//!
//! Offer operations that change what a resource is, not how much there is (RESERVE,
//! UNRESERVE, CREATE, DESTROY), are [`Conversion`]s, applied alike by the master (to offers,
//! the allocator and its view of the agent) and by the agent (to its checkpointed total).

use std::collections::BTreeSet;
use std::fmt;

use crate::mesos::v1 as pb;

/// A scalar quantity in thousandths (`1.5` cpus is `Scalar(1500)`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Scalar(pub i64);

impl Scalar {
    pub const ZERO: Scalar = Scalar(0);

    /// Rounds to the nearest thousandth, as Mesos does; non-finite and negative values are
    /// rejected by [`Resources::from_mesos`] before they get here.
    pub fn from_f64(v: f64) -> Scalar {
        Scalar((v * 1000.0).round() as i64)
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 1000;
        let frac = (self.0 % 1000).abs();
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let s = format!("{frac:03}");
            write!(f, "{whole}.{}", s.trim_end_matches('0'))
        }
    }
}

/// A set of disjoint, non-adjacent, inclusive `u64` ranges, kept sorted.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    pub fn new(ranges: impl IntoIterator<Item = (u64, u64)>) -> Ranges {
        let mut v: Vec<(u64, u64)> =
            ranges.into_iter().map(|(a, b)| if a <= b { (a, b) } else { (b, a) }).collect();
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (b, e) in v {
            match out.last_mut() {
                Some(last) if b <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => out.push((b, e)),
            }
        }
        Ranges(out)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of values covered.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|(b, e)| e - b + 1).sum()
    }

    pub fn contains(&self, other: &Ranges) -> bool {
        other.0.iter().all(|&(b, e)| self.0.iter().any(|&(sb, se)| sb <= b && e <= se))
    }

    pub fn add(&self, other: &Ranges) -> Ranges {
        Ranges::new(self.0.iter().chain(other.0.iter()).copied())
    }

    pub fn subtract(&self, other: &Ranges) -> Ranges {
        let mut out = Vec::new();
        for &(mut b, e) in &self.0 {
            let mut done = false;
            for &(ob, oe) in &other.0 {
                if oe < b || ob > e {
                    continue;
                }
                if ob > b {
                    out.push((b, ob - 1));
                }
                if oe >= e {
                    done = true;
                    break;
                }
                b = oe + 1;
            }
            if !done {
                out.push((b, e));
            }
        }
        Ranges::new(out)
    }
}

impl fmt::Display for Ranges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, (b, e)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{b}-{e}")?;
        }
        f.write_str("]")
    }
}

/// One resource's value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Value {
    Scalar(Scalar),
    Ranges(Ranges),
    Set(BTreeSet<String>),
}

/// Whom a resource is reserved for.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Reservation {
    pub role: String,
    /// Made by a RESERVE operation (else by the agent's `--resources` flag).
    pub dynamic: bool,
    pub principal: Option<String>,
}

/// A persistent volume: a reserved disk resource with an id, living on the agent's disk past
/// the tasks that use it.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Volume {
    pub id: String,
    pub principal: Option<String>,
    /// Where tasks see it: relative to the sandbox.
    pub container_path: String,
    pub read_only: bool,
}

/// What tells two quantities of the same resource apart.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Key {
    pub name: String,
    /// `None`: unreserved (`*`). Boxed, as `volume`: most keys have neither, and keys are
    /// copied on every allocation.
    pub reservation: Option<Box<Reservation>>,
    pub volume: Option<Box<Volume>>,
}

impl Key {
    pub fn unreserved(name: &str) -> Key {
        Key { name: name.to_string(), reservation: None, volume: None }
    }

    /// The role this is reserved for, if any.
    pub fn role(&self) -> Option<&str> {
        self.reservation.as_ref().map(|r| r.role.as_str())
    }
}

/// A bag of resources: one value per [`Key`], kept sorted, with exact arithmetic per key and
/// per kind (a name's kinds never mix).
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Resources(Vec<(Key, Value)>);

/// Why a resource description or operation was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResourceError {
    #[error("resource '{name}' has no value of its declared type {kind}")]
    MissingValue { name: String, kind: &'static str },
    #[error("scalar resource '{name}' has an invalid value {value}")]
    BadScalar { name: String, value: f64 },
    #[error("resource '{0}' appears with two different types")]
    MixedTypes(String),
    #[error("TEXT resource '{0}' is not supported")]
    Text(String),
    #[error("cannot parse resources '{text}': {why}")]
    Parse { text: String, why: String },
    #[error("{0}")]
    Invalid(String),
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Scalar(s) => s.0 <= 0,
        Value::Ranges(r) => r.is_empty(),
        Value::Set(s) => s.is_empty(),
    }
}

fn value_contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Scalar(h), Value::Scalar(w)) => h >= w,
        (Value::Ranges(h), Value::Ranges(w)) => h.contains(w),
        (Value::Set(h), Value::Set(w)) => w.is_subset(h),
        _ => false,
    }
}

impl Resources {
    pub fn new() -> Resources {
        Resources::default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|(_, v)| is_empty_value(v))
    }

    /// Every (key, value), sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    fn find(&self, key: &Key) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(key))
    }

    /// The value of exactly `key`.
    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// The entries named `name` (adjacent: keys sort by name first).
    fn named(&self, name: &str) -> &[(Key, Value)] {
        let start = self.0.partition_point(|(k, _)| k.name.as_str() < name);
        let len = self.0[start..].iter().take_while(|(k, _)| k.name == name).count();
        &self.0[start..start + len]
    }

    /// A scalar's total by name, across reservations and volumes.
    pub fn scalar(&self, name: &str) -> Scalar {
        Scalar(
            self.named(name)
                .iter()
                .map(|(_, v)| if let Value::Scalar(s) = v { s.0 } else { 0 })
                .sum(),
        )
    }

    /// A ranges resource's values by name, across reservations.
    pub fn ranges(&self, name: &str) -> Option<Ranges> {
        let mut out: Option<Ranges> = None;
        for (k, v) in &self.0 {
            if let (true, Value::Ranges(r)) = (k.name == name, v) {
                out = Some(out.map(|o| o.add(r)).unwrap_or_else(|| r.clone()));
            }
        }
        out
    }

    /// Adds `value` under `key` (merging with what is there).
    pub fn insert(&mut self, key: Key, value: Value) {
        self.add_one(&key, &value);
    }

    pub fn with_scalar(mut self, name: &str, value: f64) -> Resources {
        self.insert(Key::unreserved(name), Value::Scalar(Scalar::from_f64(value)));
        self
    }

    pub fn with_ranges(mut self, name: &str, ranges: &[(u64, u64)]) -> Resources {
        self.insert(Key::unreserved(name), Value::Ranges(Ranges::new(ranges.iter().copied())));
        self
    }

    /// With `value` of scalar `name` dynamically reserved for `role` (by `principal`).
    pub fn with_reserved(
        mut self,
        name: &str,
        role: &str,
        principal: Option<&str>,
        value: f64,
    ) -> Resources {
        let reservation = Reservation {
            role: role.into(),
            dynamic: true,
            principal: principal.map(String::from),
        };
        let key = Key { name: name.into(), reservation: Some(Box::new(reservation)), volume: None };
        self.insert(key, Value::Scalar(Scalar::from_f64(value)));
        self
    }

    /// With a read-write persistent volume `id` of `mb` of disk dynamically reserved for
    /// `role` (by `principal`), seen by tasks at `container_path`.
    pub fn with_volume(
        mut self,
        role: &str,
        principal: Option<&str>,
        id: &str,
        container_path: &str,
        mb: f64,
    ) -> Resources {
        let reservation = Reservation {
            role: role.into(),
            dynamic: true,
            principal: principal.map(String::from),
        };
        let volume = Volume {
            id: id.into(),
            principal: None,
            container_path: container_path.into(),
            read_only: false,
        };
        let key = Key {
            name: "disk".into(),
            reservation: Some(Box::new(reservation)),
            volume: Some(Box::new(volume)),
        };
        self.insert(key, Value::Scalar(Scalar::from_f64(mb)));
        self
    }

    /// Whether every resource in `other` is within `self`, key by key.
    pub fn contains(&self, other: &Resources) -> bool {
        other.0.iter().all(|(key, want)| {
            is_empty_value(want) || self.get(key).is_some_and(|have| value_contains(have, want))
        })
    }

    fn add_one(&mut self, key: &Key, v: &Value) {
        match self.find(key) {
            Err(i) => {
                if !is_empty_value(v) {
                    self.0.insert(i, (key.clone(), v.clone()));
                }
            }
            Ok(i) => match (&mut self.0[i].1, v) {
                (Value::Scalar(a), Value::Scalar(b)) => a.0 += b.0,
                (Value::Ranges(a), Value::Ranges(b)) => *a = a.add(b),
                (Value::Set(a), Value::Set(b)) => a.extend(b.iter().cloned()),
                _ => {}
            },
        }
    }

    /// `self + other`. Keys whose kinds differ keep `self`'s value.
    pub fn add(&mut self, other: &Resources) {
        for (key, v) in &other.0 {
            self.add_one(key, v);
        }
    }

    /// `self - other`, saturating at empty. Callers check [`Resources::contains`] first
    /// where exactness matters.
    pub fn subtract(&mut self, other: &Resources) {
        for (key, v) in &other.0 {
            let Ok(i) = self.find(key) else { continue };
            let remove = match (&mut self.0[i].1, v) {
                (Value::Scalar(a), Value::Scalar(b)) => {
                    a.0 = (a.0 - b.0).max(0);
                    a.0 == 0
                }
                (Value::Ranges(a), Value::Ranges(b)) => {
                    *a = a.subtract(b);
                    a.is_empty()
                }
                (Value::Set(a), Value::Set(b)) => {
                    a.retain(|x| !b.contains(x));
                    a.is_empty()
                }
                _ => false,
            };
            if remove {
                self.0.remove(i);
            }
        }
    }

    pub fn plus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        r.add(other);
        r
    }

    pub fn minus(&self, other: &Resources) -> Resources {
        let mut r = self.clone();
        r.subtract(other);
        r
    }

    /// The scalar quantities by name (reservations and volumes folded in, as unreserved).
    /// Aggregates across agents (a framework's or role's total, the cluster's) keep just
    /// these: ranges such as ports are per agent and do not add up across agents.
    pub fn scalars_only(&self) -> Resources {
        // Unreserved keys of distinct names, pushed in name order: already sorted.
        Resources(
            self.scalars()
                .map(|(n, v)| (Key::unreserved(n), Value::Scalar(v)))
                .filter(|(_, v)| !is_empty_value(v))
                .collect(),
        )
    }

    /// The scalar totals by name (what DRF shares are computed over), without allocating.
    pub fn scalars(&self) -> impl Iterator<Item = (&str, Scalar)> {
        let mut i = 0;
        std::iter::from_fn(move || {
            while i < self.0.len() {
                let name = self.0[i].0.name.as_str();
                let mut sum = 0;
                let mut scalar = false;
                while i < self.0.len() && self.0[i].0.name == name {
                    if let Value::Scalar(s) = &self.0[i].1 {
                        sum += s.0;
                        scalar = true;
                    }
                    i += 1;
                }
                if scalar {
                    return Some((name, Scalar(sum)));
                }
            }
            None
        })
    }

    /// What `keep` selects.
    pub fn filter(&self, keep: impl Fn(&Key) -> bool) -> Resources {
        Resources(self.0.iter().filter(|(k, _)| keep(k)).cloned().collect())
    }

    /// The unreserved part.
    pub fn unreserved(&self) -> Resources {
        self.filter(|k| k.reservation.is_none())
    }

    /// What is reserved for `role` (volumes included).
    pub fn reserved_for(&self, role: &str) -> Resources {
        self.filter(|k| k.role() == Some(role))
    }

    /// What a framework in `role` may be offered: unreserved and reserved for `role`.
    pub fn offerable_to(&self, role: &str) -> Resources {
        self.filter(|k| k.role().is_none_or(|r| r == role))
    }

    /// The roles something is reserved for.
    pub fn reservation_roles(&self) -> BTreeSet<&str> {
        self.0.iter().filter_map(|(k, _)| k.role()).collect()
    }

    /// The persistent volumes, each with its size.
    pub fn volumes(&self) -> impl Iterator<Item = (&Key, &Volume)> {
        self.0.iter().filter_map(|(k, _)| k.volume.as_deref().map(|v| (k, v)))
    }

    /// Converts Mesos `Resource` messages: reservations (the refined `reservations` stack,
    /// whose last entry is the current role, or the pre-refinement `role` and `reservation`)
    /// and persistent volumes (`disk.persistence` and `disk.volume`). Revocable, shared and
    /// provider resources and disk sources are not modelled: they are refused.
    pub fn from_mesos(resources: &[pb::Resource]) -> Result<Resources, ResourceError> {
        let mut out = Resources::new();
        for r in resources {
            let one = match pb::value::Type::try_from(r.r#type) {
                Ok(pb::value::Type::Scalar) => {
                    let v = r.scalar.as_ref().map(|s| s.value).ok_or_else(|| {
                        ResourceError::MissingValue { name: r.name.clone(), kind: "SCALAR" }
                    })?;
                    if !v.is_finite() || v < 0.0 {
                        return Err(ResourceError::BadScalar { name: r.name.clone(), value: v });
                    }
                    Value::Scalar(Scalar::from_f64(v))
                }
                Ok(pb::value::Type::Ranges) => {
                    let rs = r.ranges.as_ref().ok_or_else(|| ResourceError::MissingValue {
                        name: r.name.clone(),
                        kind: "RANGES",
                    })?;
                    Value::Ranges(Ranges::new(rs.range.iter().map(|x| (x.begin, x.end))))
                }
                Ok(pb::value::Type::Set) => {
                    let s = r.set.as_ref().ok_or_else(|| ResourceError::MissingValue {
                        name: r.name.clone(),
                        kind: "SET",
                    })?;
                    Value::Set(s.item.iter().cloned().collect())
                }
                _ => return Err(ResourceError::Text(r.name.clone())),
            };
            let key = key_from_mesos(r)?;
            if out.0.iter().any(|(k, v)| {
                k.name == key.name && std::mem::discriminant(v) != std::mem::discriminant(&one)
            }) {
                return Err(ResourceError::MixedTypes(r.name.clone()));
            }
            if key.volume.is_some() && out.get(&key).is_some() {
                return Err(ResourceError::Invalid(format!(
                    "Persistent volume '{}' appears twice",
                    key.volume.as_ref().map(|v| v.id.as_str()).unwrap_or_default()
                )));
            }
            out.add_one(&key, &one);
        }
        Ok(out)
    }

    /// Mesos `Resource` messages, each carrying `allocation_info` for `role` when given
    /// (offers and allocated task resources carry it; agent totals do not). Reserved
    /// resources carry both forms: `reservations` (for RESERVATION_REFINEMENT frameworks)
    /// and the pre-refinement `role` and `reservation` (for the others).
    pub fn to_mesos(&self, allocation_role: Option<&str>) -> Vec<pb::Resource> {
        self.0
            .iter()
            .filter(|(_, v)| !is_empty_value(v))
            .map(|(key, v)| {
                #[allow(deprecated)]
                let mut r = pb::Resource {
                    name: key.name.clone(),
                    // Mesos still writes the deprecated `role` ("*" when unreserved), and
                    // clients without RESERVATION_REFINEMENT read it.
                    role: Some(key.role().unwrap_or("*").to_string()),
                    allocation_info: allocation_role
                        .map(|role| pb::resource::AllocationInfo { role: Some(role.to_string()) }),
                    ..Default::default()
                };
                if let Some(res) = &key.reservation {
                    let kind = if res.dynamic {
                        pb::resource::reservation_info::Type::Dynamic
                    } else {
                        pb::resource::reservation_info::Type::Static
                    };
                    let info = pb::resource::ReservationInfo {
                        r#type: Some(kind as i32),
                        role: Some(res.role.clone()),
                        principal: res.principal.clone(),
                        labels: None,
                    };
                    if res.dynamic {
                        r.reservation = Some(pb::resource::ReservationInfo {
                            r#type: None,
                            role: None,
                            ..info.clone()
                        });
                    }
                    r.reservations = vec![info];
                }
                if let Some(vol) = &key.volume {
                    r.disk = Some(pb::resource::DiskInfo {
                        persistence: Some(pb::resource::disk_info::Persistence {
                            id: vol.id.clone(),
                            principal: vol.principal.clone(),
                        }),
                        volume: Some(pb::Volume {
                            mode: if vol.read_only {
                                pb::volume::Mode::Ro
                            } else {
                                pb::volume::Mode::Rw
                            } as i32,
                            container_path: vol.container_path.clone(),
                            ..Default::default()
                        }),
                        source: None,
                    });
                }
                match v {
                    Value::Scalar(s) => {
                        r.set_type(pb::value::Type::Scalar);
                        r.scalar = Some(pb::value::Scalar { value: s.as_f64() });
                    }
                    Value::Ranges(rs) => {
                        r.set_type(pb::value::Type::Ranges);
                        r.ranges = Some(pb::value::Ranges {
                            range: rs
                                .iter()
                                .map(|(begin, end)| pb::value::Range { begin, end })
                                .collect(),
                        });
                    }
                    Value::Set(s) => {
                        r.set_type(pb::value::Type::Set);
                        r.set = Some(pb::value::Set { item: s.iter().cloned().collect() });
                    }
                }
                r
            })
            .collect()
    }

    /// The legacy "resources object" of Mesos' JSON endpoints: `cpus`, `gpus`, `mem`, `disk`
    /// always present, scalars as numbers (totals across reservations), ranges as
    /// `"[a-b, c-d]"`, sets as `"{a, b}"`.
    pub fn to_summary_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for k in ["cpus", "gpus", "mem", "disk"] {
            m.insert(k.to_string(), serde_json::json!(self.scalar(k).as_f64()));
        }
        let mut names: Vec<&str> = self.0.iter().map(|(k, _)| k.name.as_str()).collect();
        names.dedup();
        for name in names {
            let v = self.0.iter().find(|(k, _)| k.name == name).map(|(_, v)| v);
            let j = match v {
                Some(Value::Scalar(_)) => serde_json::json!(self.scalar(name).as_f64()),
                Some(Value::Ranges(_)) => {
                    serde_json::json!(self.ranges(name).unwrap_or_default().to_string())
                }
                Some(Value::Set(_)) => {
                    let mut all = BTreeSet::new();
                    for (k, v) in &self.0 {
                        if let (true, Value::Set(s)) = (k.name == name, v) {
                            all.extend(s.iter().cloned());
                        }
                    }
                    serde_json::json!(format!(
                        "{{{}}}",
                        all.into_iter().collect::<Vec<_>>().join(", ")
                    ))
                }
                None => continue,
            };
            m.insert(name.to_string(), j);
        }
        serde_json::Value::Object(m)
    }

    /// Parses the Mesos flag syntax: `cpus:2;mem:1024;ports:[31000-32000];zones:{a,b}`, with
    /// `name(role):value` for resources statically reserved for `role`.
    pub fn parse(text: &str) -> Result<Resources, ResourceError> {
        let err = |why: &str| ResourceError::Parse { text: text.to_string(), why: why.into() };
        let mut out = Resources::new();
        for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item.split_once(':').ok_or_else(|| err("expected NAME:VALUE"))?;
            let (name, value) = (name.trim(), value.trim());
            let (name, role) = match name.split_once('(') {
                Some((n, rest)) => {
                    let role = rest.strip_suffix(')').ok_or_else(|| err("expected NAME(ROLE)"))?;
                    (n.trim(), Some(role.trim()))
                }
                None => (name, None),
            };
            if name.is_empty() {
                return Err(err("empty resource name"));
            }
            let reservation = match role {
                None | Some("*") => None,
                Some(role) => {
                    crate::mesos::validate_role(role).map_err(|e| err(&e))?;
                    Some(Box::new(Reservation {
                        role: role.to_string(),
                        dynamic: false,
                        principal: None,
                    }))
                }
            };
            let v = match parse_value(value).map_err(|why| err(&why))? {
                Some(Value::Scalar(s)) if s.0 < 0 => {
                    return Err(err("scalars must be finite and non-negative"));
                }
                Some(v) => v,
                None => return Err(err("bad scalar")),
            };
            out.add_one(&Key { name: name.to_string(), reservation, volume: None }, &v);
        }
        Ok(out)
    }

    /// `self` with `conv` applied: what a RESERVE, UNRESERVE, CREATE or DESTROY does to the
    /// resources it is applied to (an offer, an agent's total). Fails, changing nothing, when
    /// `self` lacks what the conversion consumes. The texts follow Mesos' validation.
    pub fn apply(&self, conv: &Conversion) -> Result<Resources, ResourceError> {
        let (consumed, converted) = conv.consumed_and_converted()?;
        if !self.contains(&consumed) {
            return Err(ResourceError::Invalid(format!(
                "Invalid {} Operation: {} does not contain {}",
                conv.name(),
                self,
                consumed
            )));
        }
        if let Conversion::Create(volumes) = conv {
            for (key, v) in volumes.volumes() {
                if self.volumes().any(|(k, other)| other.id == v.id && k.role() == key.role()) {
                    return Err(ResourceError::Invalid(format!(
                        "Invalid CREATE Operation: persistent volume '{}' already exists",
                        v.id
                    )));
                }
            }
        }
        let mut out = self.minus(&consumed);
        out.add(&converted);
        Ok(out)
    }
}

/// An offer operation that changes what resources are, not how many: RESERVE, UNRESERVE,
/// CREATE (persistent volumes), DESTROY. Each holds the resources in their target form, as
/// the operation names them.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum Conversion {
    /// Unreserved -> dynamically reserved (`resources` as reserved).
    Reserve(Resources),
    /// Dynamically reserved (`resources` as reserved) -> unreserved.
    Unreserve(Resources),
    /// Reserved disk -> persistent volumes (`resources` are the volumes).
    Create(Resources),
    /// Persistent volumes -> reserved disk.
    Destroy(Resources),
}

impl Conversion {
    pub fn name(&self) -> &'static str {
        match self {
            Conversion::Reserve(_) => "RESERVE",
            Conversion::Unreserve(_) => "UNRESERVE",
            Conversion::Create(_) => "CREATE",
            Conversion::Destroy(_) => "DESTROY",
        }
    }

    /// The resources as the operation names them.
    pub fn resources(&self) -> &Resources {
        match self {
            Conversion::Reserve(r)
            | Conversion::Unreserve(r)
            | Conversion::Create(r)
            | Conversion::Destroy(r) => r,
        }
    }

    /// (what the operation takes away, what it puts in its place), after checking that the
    /// named resources have the shape the operation needs.
    pub fn consumed_and_converted(&self) -> Result<(Resources, Resources), ResourceError> {
        let bad = |why: String| {
            Err(ResourceError::Invalid(format!("Invalid {} Operation: {why}", self.name())))
        };
        let named = self.resources();
        if named.is_empty() {
            return bad("no resources".into());
        }
        let mut from = Resources::new();
        for (key, v) in named.iter() {
            let base = match self {
                Conversion::Reserve(_) | Conversion::Unreserve(_) => {
                    match &key.reservation {
                        Some(r) if r.dynamic => {}
                        _ => return bad(format!("'{}' is not dynamically reserved", key.name)),
                    }
                    if key.volume.is_some() {
                        return bad("persistent volumes cannot be reserved or unreserved".into());
                    }
                    Key::unreserved(&key.name)
                }
                Conversion::Create(_) | Conversion::Destroy(_) => {
                    if key.volume.is_none() {
                        return bad(format!("'{}' is not a persistent volume", key.name));
                    }
                    if key.name != "disk" {
                        return bad("persistent volumes must be disk resources".into());
                    }
                    if key.reservation.is_none() {
                        return bad(
                            "persistent volumes cannot be created from unreserved resources".into(),
                        );
                    }
                    Key { volume: None, ..key.clone() }
                }
            };
            from.add_one(&base, v);
        }
        Ok(match self {
            Conversion::Reserve(_) | Conversion::Create(_) => (from, named.clone()),
            Conversion::Unreserve(_) | Conversion::Destroy(_) => (named.clone(), from),
        })
    }
}

/// The [`Key`] of one Mesos `Resource`.
fn key_from_mesos(r: &pb::Resource) -> Result<Key, ResourceError> {
    let invalid = |why: &str| Err(ResourceError::Invalid(format!("resource '{}': {why}", r.name)));
    if r.revocable.is_some() || r.shared.is_some() || r.provider_id.is_some() {
        return invalid("revocable, shared and resource provider resources are not supported");
    }
    #[allow(deprecated)]
    let reservation = if let Some(last) = r.reservations.last() {
        let Some(role) = last.role.clone() else {
            return invalid("a reservation must name its role");
        };
        let dynamic = match last
            .r#type
            .and_then(|t| pb::resource::reservation_info::Type::try_from(t).ok())
        {
            Some(pb::resource::reservation_info::Type::Static) => false,
            Some(pb::resource::reservation_info::Type::Dynamic) => true,
            _ => return invalid("a reservation's type must be STATIC or DYNAMIC"),
        };
        Some(Box::new(Reservation { role, dynamic, principal: last.principal.clone() }))
    } else {
        match r.role.as_deref() {
            None | Some("*") => {
                if r.reservation.is_some() {
                    return invalid("a reservation needs a role other than '*'");
                }
                None
            }
            Some(role) => Some(Box::new(Reservation {
                role: role.to_string(),
                dynamic: r.reservation.is_some(),
                principal: r.reservation.as_ref().and_then(|i| i.principal.clone()),
            })),
        }
    };
    if let Some(res) = &reservation {
        crate::mesos::validate_role(&res.role)
            .map_err(|e| ResourceError::Invalid(format!("resource '{}': {e}", r.name)))?;
        if res.role == "*" {
            return invalid("cannot be reserved for role '*'");
        }
    }
    let volume = match &r.disk {
        None => None,
        Some(disk) => {
            if disk.source.is_some() {
                return invalid("disk sources are not supported");
            }
            match (&disk.persistence, &disk.volume) {
                (None, None) => None,
                (Some(p), Some(v)) => {
                    crate::mesos::validate_id(&p.id).map_err(|e| {
                        ResourceError::Invalid(format!("persistent volume id '{}': {e}", p.id))
                    })?;
                    let path = &v.container_path;
                    if path.is_empty()
                        || path.starts_with('/')
                        || path.split('/').any(|c| c == ".." || c == ".")
                    {
                        return invalid(
                            "a volume's container_path must be a relative path without '.' or '..'",
                        );
                    }
                    Some(Box::new(Volume {
                        id: p.id.clone(),
                        principal: p.principal.clone(),
                        container_path: path.clone(),
                        read_only: v.mode == pb::volume::Mode::Ro as i32,
                    }))
                }
                (Some(_), None) => return invalid("a persistent volume needs 'disk.volume'"),
                (None, Some(_)) => return invalid("'disk.volume' needs 'disk.persistence'"),
            }
        }
    };
    Ok(Key { name: r.name.clone(), reservation, volume })
}

/// Parses one value in the Mesos flag syntax: `[a-b, c-d]` ranges, `{a, b}` a set, or a finite
/// number. `Ok(None)` when the text is none of these (plain text, which attributes allow);
/// `Err` when it looks like ranges but is malformed.
pub fn parse_value(text: &str) -> Result<Option<Value>, String> {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        let mut ranges = Vec::new();
        for part in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || format!("bad range '{part}': expected BEGIN-END");
            let (b, e) = part.split_once('-').ok_or_else(bad)?;
            let b: u64 = b.trim().parse().map_err(|_| bad())?;
            let e: u64 = e.trim().parse().map_err(|_| bad())?;
            if b > e {
                return Err(format!("range '{part}' begins after it ends"));
            }
            ranges.push((b, e));
        }
        return Ok(Some(Value::Ranges(Ranges::new(ranges))));
    }
    if let Some(inner) = text.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
        let items = inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from);
        return Ok(Some(Value::Set(items.collect())));
    }
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(Some(Value::Scalar(Scalar::from_f64(v)))),
        _ => Ok(None),
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            f.write_str(&key.name)?;
            if let Some(r) = &key.reservation {
                write!(f, "({})", r.role)?;
            }
            if let Some(vol) = &key.volume {
                write!(f, "[{}:{}]", vol.id, vol.container_path)?;
            }
            match v {
                Value::Scalar(s) => write!(f, ":{s}")?,
                Value::Ranges(r) => write!(f, ":{r}")?,
                Value::Set(s) => {
                    write!(f, ":{{{}}}", s.iter().cloned().collect::<Vec<_>>().join(","))?
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_subtract_contain() {
        let r = Ranges::new([(31000, 31010), (31011, 31020), (5, 1)]);
        assert_eq!(r.iter().collect::<Vec<_>>(), vec![(1, 5), (31000, 31020)]);
        let s = r.subtract(&Ranges::new([(31005, 31006), (3, 3)]));
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![(1, 2), (4, 5), (31000, 31004), (31007, 31020)]
        );
        assert!(r.contains(&s));
        assert!(!s.contains(&r));
        assert_eq!(s.add(&Ranges::new([(3, 3), (31005, 31006)])), r);
        assert_eq!(r.count(), 26);
    }

    #[test]
    fn scalar_arithmetic_is_exact() {
        let mut total = Resources::new().with_scalar("cpus", 1.0);
        for _ in 0..10 {
            total.subtract(&Resources::new().with_scalar("cpus", 0.1));
        }
        assert!(total.is_empty(), "ten tenths make one: {total}");
        assert_eq!(Scalar::from_f64(0.1 + 0.2).to_string(), "0.3");
    }

    #[test]
    fn parse_and_display_round_trip() {
        let r = Resources::parse(
            "cpus:2.5; mem:1024;disk:100;ports:[31000-32000, 40000-40010];z:{b,a}",
        )
        .unwrap();
        assert_eq!(r.scalar("cpus"), Scalar(2500));
        assert_eq!(
            r.to_string(),
            "cpus:2.5;disk:100;mem:1024;ports:[31000-32000, 40000-40010];z:{a,b}"
        );
        assert_eq!(Resources::parse(&r.to_string()).unwrap(), r);
        assert!(Resources::parse("cpus:-1").is_err());
        assert!(Resources::parse("ports:[5-1]").is_err());
        assert!(Resources::parse("cpus").is_err());
    }

    #[test]
    fn mesos_round_trip() {
        let r = Resources::parse("cpus:2;mem:512;ports:[31000-31005]").unwrap();
        let pbs = r.to_mesos(Some("*"));
        assert_eq!(pbs.len(), 3);
        assert!(pbs.iter().all(|p| p.allocation_info.is_some()));
        assert_eq!(Resources::from_mesos(&pbs).unwrap(), r);
    }

    #[test]
    fn contains_respects_kinds() {
        let total = Resources::parse("cpus:1;mem:100;ports:[1-10]").unwrap();
        assert!(total.contains(&Resources::parse("cpus:1;ports:[2-3]").unwrap()));
        assert!(!total.contains(&Resources::parse("cpus:1.001").unwrap()));
        assert!(!total.contains(&Resources::parse("ports:[10-11]").unwrap()));
        assert!(!total.contains(&Resources::parse("gpus:1").unwrap()));
        assert!(total.contains(&Resources::parse("gpus:0").unwrap()));
    }
    fn reserved(name: &str, role: &str, v: f64) -> Resources {
        Resources::new().with_reserved(name, role, Some("p"), v)
    }

    fn volume(role: &str, id: &str, mb: f64) -> Resources {
        Resources::new().with_volume(role, Some("p"), id, "data", mb)
    }

    #[test]
    fn reservations_are_kept_apart_and_totals_add_up() {
        let total = Resources::parse("cpus:2;cpus(eng):1;mem:100").unwrap();
        assert_eq!(total.scalar("cpus"), Scalar(3000));
        assert_eq!(total.unreserved(), Resources::parse("cpus:2;mem:100").unwrap());
        assert_eq!(total.reserved_for("eng"), Resources::parse("cpus(eng):1").unwrap());
        assert_eq!(total.offerable_to("ops"), total.unreserved());
        assert_eq!(total.offerable_to("eng"), total);
        assert!(
            !total.contains(&Resources::parse("cpus:3").unwrap()),
            "reserved cpus are not unreserved"
        );
        assert_eq!(total.scalars_only(), Resources::parse("cpus:3;mem:100").unwrap());
        assert_eq!(total.to_string(), "cpus:2;cpus(eng):1;mem:100");
        assert_eq!(total.to_summary_json()["cpus"], 3.0);
        assert!(Resources::parse("cpus(*):1").unwrap() == Resources::parse("cpus:1").unwrap());
        assert!(Resources::parse("cpus(bad role):1").is_err());
    }

    #[test]
    fn mesos_forms_of_reservations_and_volumes_round_trip() {
        let r = reserved("cpus", "eng", 1.0)
            .plus(&volume("eng", "v1", 64.0))
            .plus(&Resources::parse("mem:32").unwrap());
        let pbs = r.to_mesos(Some("eng"));
        let cpus = pbs.iter().find(|p| p.name == "cpus").unwrap();
        #[allow(deprecated)]
        {
            assert_eq!(cpus.role.as_deref(), Some("eng"), "pre-refinement form");
            assert_eq!(cpus.reservation.as_ref().unwrap().principal.as_deref(), Some("p"));
        }
        assert_eq!(cpus.reservations[0].role.as_deref(), Some("eng"), "refined form");
        let disk = pbs.iter().find(|p| p.name == "disk").unwrap();
        assert_eq!(disk.disk.as_ref().unwrap().persistence.as_ref().unwrap().id, "v1");
        assert_eq!(Resources::from_mesos(&pbs).unwrap(), r);
        // The pre-refinement form alone (what frameworks without RESERVATION_REFINEMENT send).
        #[allow(deprecated)]
        let legacy = pb::Resource {
            name: "cpus".into(),
            r#type: pb::value::Type::Scalar as i32,
            scalar: Some(pb::value::Scalar { value: 1.0 }),
            role: Some("eng".into()),
            reservation: Some(pb::resource::ReservationInfo {
                principal: Some("p".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(Resources::from_mesos(&[legacy]).unwrap(), reserved("cpus", "eng", 1.0));
        // A volume escaping the sandbox, or on unreserved disk, is refused.
        let mut bad = disk.clone();
        bad.disk.as_mut().unwrap().volume.as_mut().unwrap().container_path = "../x".into();
        assert!(Resources::from_mesos(&[bad]).is_err());
    }

    #[test]
    fn conversions_reserve_create_destroy_unreserve() {
        let agent = Resources::parse("cpus:4;mem:1024;disk:1000").unwrap();
        let reserve =
            Conversion::Reserve(reserved("cpus", "eng", 1.0).plus(&reserved("disk", "eng", 100.0)));
        let r = agent.apply(&reserve).unwrap();
        assert_eq!(r.unreserved(), Resources::parse("cpus:3;mem:1024;disk:900").unwrap());
        assert_eq!(r.scalar("cpus"), Scalar(4000), "quantities do not change");
        let create = Conversion::Create(volume("eng", "v1", 64.0));
        let r = r.apply(&create).unwrap();
        assert_eq!(r.reserved_for("eng").scalar("disk"), Scalar(100_000));
        assert_eq!(r.volumes().count(), 1);
        let e = r.apply(&create).unwrap_err().to_string();
        assert!(e.contains("does not contain") || e.contains("already exists"), "{e}");
        let too_big = Conversion::Create(volume("eng", "v2", 64.0));
        assert!(r.apply(&too_big).is_err(), "only 36 MB of reserved disk is left");
        let r = r.apply(&Conversion::Destroy(volume("eng", "v1", 64.0))).unwrap();
        let back = Conversion::Unreserve(
            reserved("cpus", "eng", 1.0).plus(&reserved("disk", "eng", 100.0)),
        );
        assert_eq!(r.apply(&back).unwrap(), agent);
        // Shapes: RESERVE needs dynamic reservations; CREATE needs reserved disk volumes.
        assert!(
            Conversion::Reserve(Resources::parse("cpus:1").unwrap())
                .consumed_and_converted()
                .is_err()
        );
        assert!(Conversion::Create(reserved("disk", "eng", 1.0)).consumed_and_converted().is_err());
        assert!(agent.apply(&Conversion::Unreserve(reserved("cpus", "eng", 1.0))).is_err());
    }
}
