//! The resource model: named scalars in fixed point (thousandths, as Mesos rounds them), named
//! ranges (ports) and named sets. All arithmetic is exact, so "no over-commit" holds without
//! floating-point slack.
//!
//! Reservations and persistent volumes will key a [`Resources`] per reservation role; today
//! every resource is unreserved (`*`).

use std::collections::{BTreeMap, BTreeSet};
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

/// A bag of named resources. Names map to one value each; arithmetic is per name and per
/// kind, and a name's kinds never mix.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Resources(BTreeMap<String, Value>);

/// Why a resource description was refused.
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
}

impl Resources {
    pub fn new() -> Resources {
        Resources::default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(|v| match v {
            Value::Scalar(s) => s.0 <= 0,
            Value::Ranges(r) => r.is_empty(),
            Value::Set(s) => s.is_empty(),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    pub fn scalar(&self, name: &str) -> Scalar {
        match self.0.get(name) {
            Some(Value::Scalar(s)) => *s,
            _ => Scalar::ZERO,
        }
    }

    pub fn ranges(&self, name: &str) -> Option<&Ranges> {
        match self.0.get(name) {
            Some(Value::Ranges(r)) => Some(r),
            _ => None,
        }
    }

    pub fn with_scalar(mut self, name: &str, value: f64) -> Resources {
        self.0.insert(name.to_string(), Value::Scalar(Scalar::from_f64(value)));
        self
    }

    pub fn with_ranges(mut self, name: &str, ranges: &[(u64, u64)]) -> Resources {
        self.0.insert(name.to_string(), Value::Ranges(Ranges::new(ranges.iter().copied())));
        self
    }

    /// Whether every resource in `other` is within `self`.
    pub fn contains(&self, other: &Resources) -> bool {
        other.0.iter().all(|(name, want)| match (self.0.get(name), want) {
            (_, Value::Scalar(w)) if w.0 <= 0 => true,
            (Some(Value::Scalar(have)), Value::Scalar(w)) => have >= w,
            (_, Value::Ranges(w)) if w.is_empty() => true,
            (Some(Value::Ranges(have)), Value::Ranges(w)) => have.contains(w),
            (_, Value::Set(w)) if w.is_empty() => true,
            (Some(Value::Set(have)), Value::Set(w)) => w.is_subset(have),
            _ => false,
        })
    }

    /// `self + other`. Names whose kinds differ keep `self`'s value.
    pub fn add(&mut self, other: &Resources) {
        for (name, v) in &other.0 {
            match (self.0.get_mut(name), v) {
                (None, v) => {
                    self.0.insert(name.clone(), v.clone());
                }
                (Some(Value::Scalar(a)), Value::Scalar(b)) => a.0 += b.0,
                (Some(Value::Ranges(a)), Value::Ranges(b)) => *a = a.add(b),
                (Some(Value::Set(a)), Value::Set(b)) => a.extend(b.iter().cloned()),
                _ => {}
            }
        }
    }

    /// `self - other`, saturating at empty. Callers check [`Resources::contains`] first
    /// where exactness matters.
    pub fn subtract(&mut self, other: &Resources) {
        for (name, v) in &other.0 {
            let remove = match (self.0.get_mut(name), v) {
                (Some(Value::Scalar(a)), Value::Scalar(b)) => {
                    a.0 = (a.0 - b.0).max(0);
                    a.0 == 0
                }
                (Some(Value::Ranges(a)), Value::Ranges(b)) => {
                    *a = a.subtract(b);
                    a.is_empty()
                }
                (Some(Value::Set(a)), Value::Set(b)) => {
                    a.retain(|x| !b.contains(x));
                    a.is_empty()
                }
                _ => false,
            };
            if remove {
                self.0.remove(name);
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

    /// Only the scalar resources. Aggregates across agents (a framework's or role's total)
    /// keep just these: ranges such as ports are per agent and do not add up across agents.
    pub fn scalars_only(&self) -> Resources {
        Resources(
            self.0
                .iter()
                .filter(|(_, v)| matches!(v, Value::Scalar(_)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// The scalar part only (what DRF shares are computed over).
    pub fn scalars(&self) -> impl Iterator<Item = (&str, Scalar)> {
        self.0.iter().filter_map(|(k, v)| match v {
            Value::Scalar(s) => Some((k.as_str(), *s)),
            _ => None,
        })
    }

    /// Converts Mesos `Resource` messages. Reservation, disk and revocable details are not
    /// modelled yet: such resources are taken at their quantity, as unreserved.
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
            let mut single = Resources::new();
            single.0.insert(r.name.clone(), one);
            if let Some(existing) = out.0.get(&r.name)
                && std::mem::discriminant(existing) != std::mem::discriminant(&single.0[&r.name])
            {
                return Err(ResourceError::MixedTypes(r.name.clone()));
            }
            out.add(&single);
        }
        Ok(out)
    }

    /// Mesos `Resource` messages, each carrying `allocation_info` for `role` when given
    /// (offers and allocated task resources carry it; agent totals do not).
    pub fn to_mesos(&self, allocation_role: Option<&str>) -> Vec<pb::Resource> {
        self.0
            .iter()
            .filter(|(_, v)| match v {
                Value::Scalar(s) => s.0 > 0,
                Value::Ranges(r) => !r.is_empty(),
                Value::Set(s) => !s.is_empty(),
            })
            .map(|(name, v)| {
                // Mesos still writes the deprecated `role: "*"` on unreserved resources, and
                // clients without RESERVATION_REFINEMENT read it.
                #[allow(deprecated)]
                let mut r = pb::Resource {
                    name: name.clone(),
                    role: Some("*".to_string()),
                    allocation_info: allocation_role
                        .map(|role| pb::resource::AllocationInfo { role: Some(role.to_string()) }),
                    ..Default::default()
                };
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
    /// always present, scalars as numbers, ranges as `"[a-b, c-d]"`, sets as `"{a, b}"`.
    pub fn to_summary_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for k in ["cpus", "gpus", "mem", "disk"] {
            m.insert(k.to_string(), serde_json::json!(self.scalar(k).as_f64()));
        }
        for (name, v) in &self.0 {
            let j = match v {
                Value::Scalar(s) => serde_json::json!(s.as_f64()),
                Value::Ranges(r) => serde_json::json!(r.to_string()),
                Value::Set(s) => {
                    serde_json::json!(format!(
                        "{{{}}}",
                        s.iter().cloned().collect::<Vec<_>>().join(", ")
                    ))
                }
            };
            m.insert(name.clone(), j);
        }
        serde_json::Value::Object(m)
    }

    /// Parses the Mesos flag syntax: `cpus:2;mem:1024;ports:[31000-32000];zones:{a,b}`.
    pub fn parse(text: &str) -> Result<Resources, ResourceError> {
        let err = |why: &str| ResourceError::Parse { text: text.to_string(), why: why.into() };
        let mut out = Resources::new();
        for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item.split_once(':').ok_or_else(|| err("expected NAME:VALUE"))?;
            let (name, value) = (name.trim(), value.trim());
            // A `name(role)` reservation suffix is accepted for `*` only, for now.
            let name = match name.split_once('(') {
                Some((n, "*)")) => n,
                Some(_) => return Err(err("reserved resources are not supported yet")),
                None => name,
            };
            if name.is_empty() {
                return Err(err("empty resource name"));
            }
            let v = match parse_value(value).map_err(|why| err(&why))? {
                Some(Value::Scalar(s)) if s.0 < 0 => {
                    return Err(err("scalars must be finite and non-negative"));
                }
                Some(v) => v,
                None => return Err(err("bad scalar")),
            };
            out.0.insert(name.to_string(), v);
        }
        Ok(out)
    }
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
        for (i, (name, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            match v {
                Value::Scalar(s) => write!(f, "{name}:{s}")?,
                Value::Ranges(r) => write!(f, "{name}:{r}")?,
                Value::Set(s) => {
                    write!(f, "{name}:{{{}}}", s.iter().cloned().collect::<Vec<_>>().join(","))?
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
}
