//! The Rust mirrors of `bpf/telemetry.h` agree with what clang compiled: every struct's size and
//! every field's offset is read from the object's own BTF (the type information the kernel and
//! the loader use) and compared with `size_of`/`offset_of!` on the Rust side.

use std::collections::HashMap;

use corral_agent_ebpf::{CpuSlot, OBJECT, TaskStats};
use object::{Object as _, ObjectSection as _};

/// A struct as BTF describes it: size and (member name, byte offset).
#[derive(Debug)]
struct BtfStruct {
    size: usize,
    members: Vec<(String, usize)>,
}

/// Reads every named struct from a `.BTF` section (the format is in the kernel's
/// Documentation/bpf/btf.rst: a header, a type section and a string section).
fn btf_structs(btf: &[u8]) -> HashMap<String, BtfStruct> {
    let u32_at = |off: usize| u32::from_le_bytes(btf[off..off + 4].try_into().expect("4 bytes"));
    assert_eq!(u16::from_le_bytes([btf[0], btf[1]]), 0xeb9f, "BTF magic");
    let hdr_len = u32_at(4) as usize;
    let (type_off, type_len) = (u32_at(8) as usize, u32_at(12) as usize);
    let str_off = u32_at(16) as usize;
    let strings = &btf[hdr_len + str_off..];
    let name = |off: u32| {
        let s = &strings[off as usize..];
        String::from_utf8_lossy(&s[..s.iter().position(|&b| b == 0).expect("NUL")]).into_owned()
    };
    let mut out = HashMap::new();
    let (mut p, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
    while p < end {
        let (name_off, info, size) = (u32_at(p), u32_at(p + 4), u32_at(p + 8));
        let (kind, vlen, kflag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31);
        p += 12;
        let extra = match kind {
            1 | 14 | 17 => 4,          // INT, VAR, DECL_TAG
            3 => 12,                   // ARRAY
            4 | 5 => 12 * vlen,        // STRUCT, UNION
            6 | 13 => 8 * vlen,        // ENUM, FUNC_PROTO
            15 | 19 => 12 * vlen,      // DATASEC, ENUM64
            2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
            k => panic!("unknown BTF kind {k}"),
        };
        if kind == 4 && name_off != 0 {
            let members = (0..vlen)
                .map(|i| {
                    let m = p + 12 * i;
                    let bits = u32_at(m + 8);
                    let bits = if kflag == 1 { bits & 0x00ff_ffff } else { bits };
                    assert_eq!(bits % 8, 0, "no bitfields in shared structs");
                    (name(u32_at(m)), (bits / 8) as usize)
                })
                .collect();
            out.insert(name(name_off), BtfStruct { size: size as usize, members });
        }
        p += extra;
    }
    out
}

fn check(
    structs: &HashMap<String, BtfStruct>,
    c_name: &str,
    size: usize,
    fields: &[(&str, usize)],
) {
    let s =
        structs.get(c_name).unwrap_or_else(|| panic!("struct {c_name} is not in the object's BTF"));
    assert_eq!(s.size, size, "sizeof(struct {c_name})");
    let c: Vec<(&str, usize)> = s.members.iter().map(|(n, o)| (n.as_str(), *o)).collect();
    assert_eq!(c, fields, "struct {c_name}: fields and offsets, C (left) and Rust (right)");
}

#[test]
fn shared_structs_have_the_same_layout_in_c_and_rust() {
    let file = object::File::parse(OBJECT).expect("an ELF object");
    let btf = file.section_by_name(".BTF").expect("a .BTF section (clang -g)");
    let structs = btf_structs(btf.data().expect("section data"));
    check(&structs, "task_stats", size_of::<TaskStats>(), TaskStats::FIELDS);
    check(&structs, "cpu_slot", size_of::<CpuSlot>(), CpuSlot::FIELDS);
}
