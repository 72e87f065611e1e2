//! What the agent keeps of its resources across restarts: its total after RESERVE,
//! UNRESERVE, CREATE and DESTROY (`<work-dir>/resources.json`, the Mesos JSON of its
//! `Resource`s, replaced crash-atomically: temp file, fsync, rename, fsync of the directory),
//! and the persistent volumes' directories (`<work-dir>/volumes/roles/<role>/<id>`), which
//! outlive every task that uses them.
#![forbid(unsafe_code)]

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use corral_wire::mesos::{json, v1};
use corral_wire::resources::{Conversion, Resources};

/// The checkpoint of the agent's total resources.
pub fn checkpoint_path(work_dir: &Path) -> PathBuf {
    work_dir.join("resources.json")
}

/// A persistent volume's directory. Roles may hold `/` (hierarchical roles): it is escaped,
/// so every role is one directory.
pub fn volume_dir(work_dir: &Path, role: &str, id: &str) -> PathBuf {
    work_dir
        .join("volumes")
        .join("roles")
        .join(role.replace('%', "%25").replace('/', "%2F"))
        .join(id)
}

/// Why the checkpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid resources checkpoint: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error(
        "{path} holds {checkpointed} but this agent now has {configured} (from --resources and the machine); \
         the amounts of each resource must match (remove the file to start over: its reservations \
         and persistent volumes are then forgotten)"
    )]
    Mismatch { path: PathBuf, checkpointed: String, configured: String },
}

/// The agent's total: the checkpoint's if there is one (it carries reservations and
/// volumes), checked against what the flags and the machine give now.
pub fn recover(work_dir: &Path, configured: &Resources) -> Result<Resources, CheckpointError> {
    let path = checkpoint_path(work_dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(configured.clone()),
        Err(source) => return Err(CheckpointError::Read { path, source }),
    };
    let corrupt = |why: String| CheckpointError::Corrupt { path: path.clone(), why };
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut pbs = Vec::with_capacity(list.len());
    for v in &list {
        pbs.push(json::from_value::<v1::Resource>(v).map_err(corrupt)?);
    }
    let checkpointed = Resources::from_mesos(&pbs).map_err(|e| corrupt(e.to_string()))?;
    let amounts = |r: &Resources| {
        let mut out = Resources::new();
        for (k, v) in r.iter() {
            out.insert(corral_wire::resources::Key::unreserved(&k.name), v.clone());
        }
        out
    };
    if amounts(&checkpointed) != amounts(configured) {
        return Err(CheckpointError::Mismatch {
            path,
            checkpointed: amounts(&checkpointed).to_string(),
            configured: amounts(configured).to_string(),
        });
    }
    Ok(checkpointed)
}

/// Replaces the checkpoint with `total`, crash-atomically.
pub fn checkpoint(work_dir: &Path, total: &Resources) -> std::io::Result<()> {
    let path = checkpoint_path(work_dir);
    let list: Vec<serde_json::Value> = total.to_mesos(None).iter().map(json::to_value).collect();
    let body = serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    fs::File::open(work_dir)?.sync_all()
}

/// Creates (CREATE) or deletes (DESTROY) the directories of the volumes `conv` names.
pub fn apply(work_dir: &Path, conv: &Conversion) -> std::io::Result<()> {
    for (key, vol) in conv.resources().volumes() {
        let Some(role) = key.role() else { continue };
        let dir = volume_dir(work_dir, role, &vol.id);
        match conv {
            Conversion::Create(_) => fs::create_dir_all(&dir)?,
            Conversion::Destroy(_) => match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(id: &str) -> Resources {
        Resources::new().with_volume("eng", None, id, "data", 64.0)
    }

    #[test]
    fn checkpoint_round_trips_and_is_checked_against_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let configured = Resources::parse("cpus:2;mem:1024;disk:100").unwrap();
        assert_eq!(recover(dir.path(), &configured).unwrap(), configured, "no checkpoint yet");
        let reserved =
            Resources::parse("cpus:1;cpus(eng):1;mem:1024;disk:36").unwrap().plus(&volume("v1"));
        checkpoint(dir.path(), &reserved).unwrap();
        assert_eq!(recover(dir.path(), &configured).unwrap(), reserved);
        let other = Resources::parse("cpus:4;mem:1024;disk:100").unwrap();
        let e = recover(dir.path(), &other).unwrap_err().to_string();
        assert!(e.contains("resources.json") && e.contains("cpus:4"), "{e}");
        fs::write(checkpoint_path(dir.path()), b"[{\"name\":").unwrap();
        let e = recover(dir.path(), &configured).unwrap_err().to_string();
        assert!(e.contains("is not a valid resources checkpoint"), "{e}");
    }

    #[test]
    fn volumes_get_a_directory_per_role_and_id() {
        let dir = tempfile::tempdir().unwrap();
        apply(dir.path(), &Conversion::Create(volume("v1"))).unwrap();
        let d = volume_dir(dir.path(), "eng", "v1");
        assert!(d.is_dir());
        fs::write(d.join("f"), b"x").unwrap();
        apply(dir.path(), &Conversion::Destroy(volume("v1"))).unwrap();
        assert!(!d.exists());
        assert_eq!(
            volume_dir(dir.path(), "a/b", "x").parent().unwrap().file_name().unwrap(),
            "a%2Fb"
        );
    }
}
