//! `corral agents | frameworks | tasks`: tables (or JSON) from the master's `/state`.

use std::process::ExitCode;

use corral_tools::client::{self, MasterAddr};
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct TableArgs {
    /// The master: HOST:PORT or http://HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:5050", value_parser = crate::parse_master)]
    master: MasterAddr,
    /// Print JSON (the objects of the master's /state) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Left-aligned columns, two spaces apart.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{f:.0}"),
        Some(f) => format!("{f:.2}"),
        None => "-".into(),
    }
}

fn s(v: &Value) -> String {
    v.as_str().map(String::from).unwrap_or_else(|| v.to_string())
}

fn emit_json(v: Vec<Value>) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string_pretty(&Value::Array(v))?);
    Ok(ExitCode::SUCCESS)
}

pub async fn agents(args: TableArgs) -> anyhow::Result<ExitCode> {
    let st = client::state(&args.master).await?;
    let agents: Vec<Value> = st["slaves"].as_array().cloned().unwrap_or_default();
    if args.json {
        return emit_json(agents);
    }
    let rows = agents
        .iter()
        .map(|a| {
            vec![
                s(&a["id"]),
                s(&a["hostname"]),
                if a["active"].as_bool() == Some(true) {
                    "active".into()
                } else {
                    "disconnected".into()
                },
                format!("{}/{}", num(&a["used_resources"]["cpus"]), num(&a["resources"]["cpus"])),
                format!("{}/{}", num(&a["used_resources"]["mem"]), num(&a["resources"]["mem"])),
                format!("{}/{}", num(&a["used_resources"]["disk"]), num(&a["resources"]["disk"])),
                a["isolation"]["not_enforced"]
                    .as_array()
                    .map(|v| v.iter().map(s).collect::<Vec<_>>().join("; "))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["ID", "HOSTNAME", "STATE", "CPUS", "MEM(MB)", "DISK(MB)", "NOT ENFORCED"], rows);
    Ok(ExitCode::SUCCESS)
}

pub async fn frameworks(args: TableArgs) -> anyhow::Result<ExitCode> {
    let st = client::state(&args.master).await?;
    let fws: Vec<Value> = st["frameworks"]
        .as_array()
        .into_iter()
        .chain(st["completed_frameworks"].as_array())
        .flatten()
        .cloned()
        .collect();
    if args.json {
        return emit_json(fws);
    }
    let active: Vec<String> =
        st["frameworks"].as_array().into_iter().flatten().map(|f| s(&f["id"])).collect();
    let rows = fws
        .iter()
        .map(|f| {
            let state = if !active.contains(&s(&f["id"])) {
                "completed"
            } else if f["connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "disconnected"
            };
            vec![
                s(&f["id"]),
                s(&f["name"]),
                s(&f["user"]),
                state.into(),
                f["roles"]
                    .as_array()
                    .map(|r| r.iter().map(s).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                f["tasks"].as_array().map(|t| t.len()).unwrap_or(0).to_string(),
                num(&f["used_resources"]["cpus"]),
                num(&f["used_resources"]["mem"]),
            ]
        })
        .collect();
    print_table(&["ID", "NAME", "USER", "STATE", "ROLES", "TASKS", "CPUS", "MEM(MB)"], rows);
    Ok(ExitCode::SUCCESS)
}

pub async fn tasks(args: TableArgs) -> anyhow::Result<ExitCode> {
    let st = client::state(&args.master).await?;
    let mut all = Vec::new();
    for f in st["frameworks"]
        .as_array()
        .into_iter()
        .chain(st["completed_frameworks"].as_array())
        .flatten()
    {
        for key in ["tasks", "unreachable_tasks", "completed_tasks"] {
            all.extend(f[key].as_array().into_iter().flatten().cloned());
        }
    }
    if args.json {
        return emit_json(all);
    }
    let rows = all
        .iter()
        .map(|t| {
            vec![
                s(&t["id"]),
                s(&t["name"]),
                s(&t["framework_id"]),
                s(&t["slave_id"]),
                s(&t["state"]),
                num(&t["resources"]["cpus"]),
                num(&t["resources"]["mem"]),
            ]
        })
        .collect();
    print_table(&["ID", "NAME", "FRAMEWORK", "AGENT", "STATE", "CPUS", "MEM(MB)"], rows);
    Ok(ExitCode::SUCCESS)
}
